"""Training and distillation fine-tuning of the segmentation + depth multi-task model.

Task loss per batch: cross-entropy of the ``seg`` logits (pixels labelled 255 ignored; with the model's
``class_balance``, classes weighted by 1/sqrt(pixel frequency in the training split) so thin, rare
classes such as poles and lane markings are learned) plus
``model.depth_weight`` × the mean |log d - log d*| over the pixels with a valid depth (d* > 0): an L1
on log depth, scale-aware, so it drives AbsRel directly. Distillation (:func:`distill_multitask_model`):
``alpha · (KD_seg + KD_depth) + (1 - alpha) · task``, with KD_seg Hinton's temperature-scaled KL over the
class axis of every pixel (:func:`edgematrix.train.distill.kd_loss`) and KD_depth the L1 between the
student's and the teacher's log depth over all pixels. Horizontal flips (``flip``) mirror image, mask
and depth together. The loop, LR schedule, bf16 autocast and checkpoint format are those of
:mod:`edgematrix.train.lane`.
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgematrix.data.lanes import MEAN, STD
from edgematrix.data.scenes import IGNORE_INDEX, ScenesSplit
from edgematrix.errors import DataError, ModelError
from edgematrix.train.distill import DistillConfig, kd_loss
from edgematrix.train.lane import TrainResult, cpu_has_bf16, reuse_checkpoint, save_checkpoint, warmup_cosine
from edgematrix.train.loop import optimizer_step

_MIN_DEPTH = 1e-3


def class_weights(masks: np.ndarray, num_classes: int) -> np.ndarray:
    """Per-class cross-entropy weights 1/sqrt(frequency) of the labelled pixels of ``masks``, scaled so
    the average pixel weighs 1; a class absent from ``masks`` gets 0."""
    labels = np.asarray(masks).ravel()
    counts = np.bincount(labels[labels != IGNORE_INDEX], minlength=num_classes)[:num_classes].astype(np.float64)
    if counts.sum() == 0:
        raise DataError("every mask pixel is 255 (ignore); there is nothing to learn segmentation from")
    freq = counts / counts.sum()
    w = np.where(counts > 0, 1 / np.sqrt(np.maximum(freq, 1e-12)), 0.0)
    return (w / (w * freq).sum()).astype(np.float32)


def task_loss(
    seg: torch.Tensor,
    depth: torch.Tensor,
    mask: torch.Tensor,
    depth_gt: torch.Tensor,
    depth_weight: float,
    weight: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, seg CE, depth log-L1) of one batch; ``mask`` int64 [N, H, W], ``depth_gt`` [N, H, W] metres,
    ``weight`` optional per-class CE weights (the CE is then the weighted mean over labelled pixels)."""
    ce = F.cross_entropy(seg.float(), mask, weight=weight, ignore_index=IGNORE_INDEX)
    valid = depth_gt > 0
    if valid.any():
        pred = depth.float()[:, 0][valid].clamp_min(_MIN_DEPTH)
        dl = (pred.log() - depth_gt[valid].log()).abs().mean()
    else:
        dl = seg.new_zeros((), dtype=torch.float32)
    if not torch.isfinite(ce):  # every pixel of the batch ignored
        ce = seg.new_zeros((), dtype=torch.float32)
    return ce + depth_weight * dl, ce, dl


def distill_terms(
    s_seg: torch.Tensor, s_depth: torch.Tensor, t_seg: torch.Tensor, t_depth: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KD of the segmentation logits (per-pixel KL at ``temperature``) + L1 between log depths."""
    kd_seg = kd_loss([s_seg.float()], [t_seg.float()], temperature)
    kd_depth = (s_depth.float().clamp_min(_MIN_DEPTH).log() - t_depth.float().clamp_min(_MIN_DEPTH).log()).abs().mean()
    return kd_seg + kd_depth


def _normalise(x: torch.Tensor, fmt: torch.memory_format) -> torch.Tensor:
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1)
    std = torch.from_numpy(STD).view(1, 3, 1, 1)
    return ((x.float() - mean) / std).contiguous(memory_format=fmt)


def _batch(
    split: ScenesSplit, idx: torch.Tensor, flip: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    ix = idx.numpy()
    x = torch.from_numpy(split.images[ix])
    m = torch.from_numpy(split.masks[ix].astype(np.int64))
    d = torch.from_numpy(split.depth[ix])
    if flip.any():
        x[flip] = x[flip].flip(-1)
        m[flip] = m[flip].flip(-1)
        d[flip] = d[flip].flip(-1)
    return x, m, d


def _weights(model: torch.nn.Module, split: ScenesSplit) -> torch.Tensor | None:
    if not getattr(model, "class_balance", False):
        return None
    return torch.from_numpy(class_weights(split.masks, split.classes.num_classes))


def _threads() -> int:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    return threads


def _check_split(model: torch.nn.Module, split: ScenesSplit) -> None:
    if len(split) == 0:
        raise DataError(f"the {split.split} split of {split.root} is empty; nothing to train on")
    want = tuple(getattr(model, "input_size", split.images.shape[2:]))
    if tuple(split.images.shape[2:]) != want:
        raise DataError(f"split images are {tuple(split.images.shape[2:])}, the model takes {want}; reload at its size")
    classes = getattr(model, "num_classes", split.classes.num_classes)
    if classes != split.classes.num_classes:
        raise DataError(
            f"the dataset has {split.classes.num_classes} classes ({', '.join(split.classes.names)}), the model "
            f"{classes}; set params.num_classes = {split.classes.num_classes}"
        )


def _progress(label: str, total: int, enabled: bool) -> Any:
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    return Progress(*columns, disable=not enabled, transient=False)


def train_multitask_model(
    model: torch.nn.Module, train: ScenesSplit, config: Any, checkpoint: Path, *, progress: bool = True
) -> TrainResult:
    """Train ``model`` in place (``config``: matrix TrainConfig); reuse ``checkpoint`` when it exists."""
    history = reuse_checkpoint(model, checkpoint)
    if history is not None:
        model.eval()
        return TrainResult(checkpoint, True, 0.0, history)
    _check_split(model, train)
    return _train_impl(model, train, config, checkpoint, progress=progress)


def _train_impl(
    model: torch.nn.Module, train: ScenesSplit, config: Any, checkpoint: Path, *, progress: bool
) -> TrainResult:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = _threads()
    if config.device == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and (device == "cuda" or cpu_has_bf16()))
    depth_weight = float(getattr(model, "depth_weight", 1.0))
    weight = _weights(model, train)
    n = len(train)
    total = config.epochs * math.ceil(n / config.batch_size)
    model.train()
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config.warmup_fraction))
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    with _progress("train", total, progress) as bar:
        task = bar.add_task("train", total=total, info="")
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "seg": 0.0, "depth": 0.0}
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                flip = (
                    torch.rand(len(idx), generator=gen) < 0.5
                    if config.flip
                    else torch.zeros(len(idx), dtype=torch.bool)
                )
                x, m, d = _batch(train, idx, flip)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
                    seg, depth = model(_normalise(x, torch.channels_last).to(device))
                loss, ce, dl = task_loss(
                    seg, depth, m.to(device), d.to(device), depth_weight, None if weight is None else weight.to(device)
                )
                optimizer_step(loss, opt, sched, diverged=f"training diverged at epoch {epoch}; lower train.lr")
                for k, v in (("loss", loss), ("seg", ce), ("depth", dl)):
                    sums[k] += float(v.item()) * len(idx)
                bar.update(
                    task, advance=1, info=f"epoch {epoch + 1}/{config.epochs} seg {ce.item():.3f} depth {dl.item():.3f}"
                )
            history.append({"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}})
    model.eval()
    model.to("cpu")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    seconds = time.perf_counter() - start
    facts = {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads, "device": device}
    save_checkpoint(model, checkpoint, facts)
    return TrainResult(checkpoint, False, seconds, history)


def distill_multitask_model(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: ScenesSplit,
    config: DistillConfig,
    checkpoint: Path | None,
    *,
    progress: bool = True,
    label: str = "finetune",
) -> TrainResult:
    """Fine-tune ``student`` in place against ``teacher`` (frozen, eval mode) and the labels; reuses
    ``checkpoint`` when it exists (``None`` keeps nothing). ``config.channels_last`` = False for ModelOpt QAT."""
    config.validate()
    if checkpoint is not None and reuse_checkpoint(student, checkpoint) is not None:
        student.eval()
        return TrainResult(checkpoint, True, 0.0, [])
    _check_split(student, train)
    return _distill_impl(student, teacher, train, config, checkpoint, progress=progress, label=label)


def _distill_impl(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: ScenesSplit,
    config: DistillConfig,
    checkpoint: Path | None,
    *,
    progress: bool,
    label: str,
) -> TrainResult:
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = _threads()
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and cpu_has_bf16())
    depth_weight = float(getattr(student, "depth_weight", 1.0))
    weight = _weights(student, train)
    n = len(train)
    total = config.epochs * math.ceil(n / config.batch_size)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    for mod in (student, teacher):
        mod.to(memory_format=fmt)  # type: ignore[call-overload]
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config.warmup_fraction))
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    with _progress(label, total, progress) as bar:
        task = bar.add_task(label, total=total, info="")
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "kd": 0.0, "task": 0.0}
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                flip = (
                    torch.rand(len(idx), generator=gen) < 0.5
                    if config.flip
                    else torch.zeros(len(idx), dtype=torch.bool)
                )
                x, m, d = _batch(train, idx, flip)
                xn = _normalise(x, fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    with torch.no_grad():
                        t_seg, t_depth = teacher(xn)
                    s_seg, s_depth = student(xn)
                task_l, _, _ = task_loss(s_seg, s_depth, m, d, depth_weight, weight)
                kd = distill_terms(s_seg, s_depth, t_seg, t_depth, config.temperature)
                loss = config.alpha * kd + (1 - config.alpha) * task_l
                optimizer_step(loss, opt, sched, diverged=f"{label} diverged at epoch {epoch}; lower its lr")
                for k, v in (("loss", loss), ("kd", kd), ("task", task_l)):
                    sums[k] += float(v.item()) * len(idx)
                bar.update(
                    task,
                    advance=1,
                    info=f"epoch {epoch + 1}/{config.epochs} kd {kd.item():.3f} task {task_l.item():.3f}",
                )
            history.append({"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}})
    student.eval()
    for mod in (student, teacher):
        mod.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        save_checkpoint(
            student, checkpoint, {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads}
        )
    return TrainResult(checkpoint or Path(), False, seconds, history)
