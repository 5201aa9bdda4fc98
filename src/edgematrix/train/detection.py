"""Training and distillation fine-tuning of detectors (:mod:`edgematrix.models.detector`), seeded.

Training: AdamW, linear warm-up then cosine decay (:func:`edgematrix.train.lane.warmup_cosine`), horizontal
flips, bf16 autocast on CPUs with native bf16 (or CUDA), the loss of
:func:`edgematrix.models.detection_task.detection_loss`. The last fifth of the epochs (:func:`frozen_bn_epochs`)
run with BatchNorm in eval mode (running statistics fixed, scale and shift still learned): with batches of 16
heterogeneous scenes, normalising by batch statistics and by the running ones differ enough that a model
trained only with the former lost up to a third of its mAP in eval mode (measured: eval-mode loss 0.59 vs
train-mode 0.36 on the same images; one epoch with frozen statistics took val mAP from 37.8 to 59.0). Checkpoints and their JSON facts are those of
:mod:`edgematrix.train.lane` (the caller keys the file by content; an existing one is loaded).

Fine-tuning (after pruning, and QAT): ``alpha * KD + (1 - alpha) * task`` with
:class:`edgematrix.train.distill.DistillConfig`. KD is :func:`detection_kd_loss`: the temperature-scaled KL
divergence between the teacher's and student's per-class Bernoulli (sigmoid) scores, summed over cells and
classes and normalised like the task loss, plus an L1 term on the box outputs weighted by the teacher's
foreground confidence.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgematrix.data.coco import DetectionSplit
from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.models.detection_task import AssignConfig, assign_targets, detection_loss
from edgematrix.models.detector import DetectorGeometry
from edgematrix.train.lane import TrainResult, cpu_has_bf16, reuse_checkpoint, save_checkpoint, warmup_cosine
from edgematrix.train.loop import optimizer_step

MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def normalise(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW → float32, ImageNet mean/std (as :func:`edgematrix.tasks.base.imagenet_preprocess`)."""
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1).to(x.device)
    std = torch.from_numpy(STD).view(1, 3, 1, 1).to(x.device)
    return (x.float() - mean) / std


def build_targets(
    split: DetectionSplit, geometry: DetectorGeometry, flip: bool, assign: AssignConfig | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image cell targets of the whole split (class ``[N, A]``, box ``[N, A, 4]``), mirrored if ``flip``."""
    width = float(geometry.input_width)
    cls_all, box_all = [], []
    for boxes, labels in zip(split.boxes, split.labels, strict=True):
        b = boxes.copy()
        if flip and len(b):
            b[:, [0, 2]] = width - boxes[:, [2, 0]]
        c, t = assign_targets(b, labels, geometry, assign or AssignConfig())
        cls_all.append(c)
        box_all.append(t)
    return torch.from_numpy(np.stack(cls_all)), torch.from_numpy(np.stack(box_all))


def detection_kd_loss(
    student: tuple[torch.Tensor, torch.Tensor],
    teacher: tuple[torch.Tensor, torch.Tensor],
    temperature: float,
    normaliser: float,
) -> torch.Tensor:
    """``T² · Σ KL(Bernoulli(σ(t/T)) || Bernoulli(σ(s/T))) / normaliser`` over cells and classes, plus the
    L1 distance of the box outputs weighted by the teacher's best class probability (mean over that weight)."""
    (ss, sb), (ts, tb) = student, teacher
    if ss.shape != ts.shape or sb.shape != tb.shape:
        raise EdgeMatrixError(
            f"student outputs {tuple(ss.shape)}/{tuple(sb.shape)} and teacher outputs {tuple(ts.shape)}/"
            f"{tuple(tb.shape)} differ"
        )
    ss, sb, ts, tb = ss.float(), sb.float(), ts.float(), tb.float()
    p_t = torch.sigmoid(ts / temperature)
    # KL of Bernoullis = BCE(student, p_t) - entropy(p_t)
    kl = F.binary_cross_entropy_with_logits(
        ss / temperature, p_t, reduction="none"
    ) - F.binary_cross_entropy_with_logits(ts / temperature, p_t, reduction="none")
    cls_kd = temperature * temperature * kl.sum() / max(normaliser, 1.0)
    w = torch.sigmoid(ts).amax(-1)
    box_kd = (w * (sb - tb).abs().sum(-1)).sum() / w.sum().clamp(min=1.0)
    return cls_kd + box_kd


def frozen_bn_epochs(epochs: int) -> int:
    """How many final epochs train with BatchNorm statistics frozen: a fifth, rounded up (none for 1 epoch)."""
    return 0 if epochs < 2 else math.ceil(epochs / 5)


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def _loop(
    model: torch.nn.Module,
    split: DetectionSplit,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_fraction: float,
    seed: int,
    use_bf16: bool,
    device: str,
    flip: bool,
    channels_last: bool,
    step_loss: Callable[[torch.Tensor, tuple[torch.Tensor, ...], torch.Tensor, torch.Tensor], dict[str, torch.Tensor]],
    label: str,
    progress: bool,
) -> list[dict[str, float]]:
    g: DetectorGeometry = model.geometry  # type: ignore[assignment]
    if len(split) == 0:
        raise EdgeMatrixError("the training split has no images")
    T = build_targets(split, g, False)
    TF = build_targets(split, g, True) if flip else T
    X = torch.from_numpy(split.images)
    n = len(X)
    total = epochs * math.ceil(n / batch_size)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    model.train()
    model.to(device)
    model.to(memory_format=fmt)  # type: ignore[call-overload]  # missing from torch's stubs
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, warmup_fraction))
    gen = torch.Generator().manual_seed(seed)
    history: list[dict[str, float]] = []
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn(f"[bold]{label}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=total, info="")
        for epoch in range(epochs):
            if epoch == epochs - frozen_bn_epochs(epochs):
                for m in model.modules():
                    if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                        m.eval()
            perm = torch.randperm(n, generator=gen)
            sums: dict[str, float] = {}
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                flipped = torch.rand(len(idx), generator=gen) < 0.5 if flip else torch.zeros(len(idx), dtype=torch.bool)
                x = X[idx].clone()
                x[flipped] = x[flipped].flip(-1)
                cls_t = torch.where(flipped[:, None], TF[0][idx], T[0][idx]).to(device)
                box_t = torch.where(flipped[:, None, None], TF[1][idx], T[1][idx]).to(device)
                xn = normalise(x.to(device)).contiguous(memory_format=fmt)
                with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
                    out = model(xn)
                losses = step_loss(xn, tuple(o.float() for o in out), cls_t, box_t)
                loss = losses["loss"]
                optimizer_step(loss, opt, sched, diverged=f"{label} diverged at epoch {epoch}; lower its lr")
                for k, v in losses.items():
                    sums[k] = sums.get(k, 0.0) + float(v.item()) * len(idx)
                info = " ".join(f"{k} {v.item():.3f}" for k, v in losses.items())
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} {info}")
            history.append({"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}})
    model.eval()
    model.to("cpu")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    return history


def train_detector(
    model: torch.nn.Module, train: DetectionSplit, config: Any, checkpoint: Path, *, progress: bool = True
) -> TrainResult:
    """Train ``model`` in place with ``config`` (matrix TrainConfig: epochs, batch_size, lr, weight_decay,
    warmup_fraction, seed, amp, device, flip); reuse ``checkpoint`` when it exists (the caller keys it)."""
    history = reuse_checkpoint(model, checkpoint)
    if history is not None:
        model.eval()
        return TrainResult(checkpoint, True, 0.0, history)
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = _threads()
    torch.set_num_threads(threads)
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and (device == "cuda" or cpu_has_bf16()))
    geometry: DetectorGeometry = model.geometry  # type: ignore[assignment]
    pts, strides = (torch.from_numpy(a).to(device) for a in geometry.points())

    def step_loss(_x: torch.Tensor, out: tuple[torch.Tensor, ...], cls_t: torch.Tensor, box_t: torch.Tensor):
        return detection_loss(out[0], out[1], cls_t, box_t, pts, strides)

    start = time.perf_counter()
    history = _loop(
        model, train, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_fraction=config.warmup_fraction, seed=config.seed,
        use_bf16=use_bf16, device=device, flip=config.flip, channels_last=True, step_loss=step_loss,
        label="train", progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    facts = {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads, "device": device}
    save_checkpoint(model, checkpoint, facts)
    return TrainResult(checkpoint, False, seconds, history)


def distill_detector(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: DetectionSplit,
    config: Any,
    checkpoint: Path | None,
    *,
    progress: bool = True,
    label: str = "finetune",
) -> TrainResult:
    """Fine-tune ``student`` in place against ``teacher`` (frozen, eval mode) and the labels, with
    ``config`` a :class:`edgematrix.train.distill.DistillConfig`. Reuses ``checkpoint`` when it exists;
    ``None`` keeps nothing."""
    config.validate()
    if getattr(student, "geometry", None) != getattr(teacher, "geometry", None):
        raise EdgeMatrixError("student and teacher must be detectors of the same geometry (input size, classes)")
    if checkpoint is not None and reuse_checkpoint(student, checkpoint) is not None:
        student.eval()
        return TrainResult(checkpoint, True, 0.0, [])
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = _threads()
    torch.set_num_threads(threads)
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and cpu_has_bf16())
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    teacher.to(memory_format=fmt)  # type: ignore[call-overload]
    geometry: DetectorGeometry = student.geometry  # type: ignore[assignment]
    pts, strides = (torch.from_numpy(a) for a in geometry.points())

    def step_loss(x: torch.Tensor, out: tuple[torch.Tensor, ...], cls_t: torch.Tensor, box_t: torch.Tensor):
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
            t_out = teacher(x)
        task = detection_loss(out[0], out[1], cls_t, box_t, pts, strides)
        num_pos = float((cls_t >= 0).sum().item())
        kd = detection_kd_loss((out[0], out[1]), (t_out[0].float(), t_out[1].float()), config.temperature, num_pos)
        loss = config.alpha * kd + (1 - config.alpha) * task["loss"]
        return {"loss": loss, "kd": kd, "task": task["loss"]}

    start = time.perf_counter()
    history = _loop(
        student, train, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_fraction=config.warmup_fraction, seed=config.seed,
        use_bf16=use_bf16, device="cpu", flip=config.flip, channels_last=config.channels_last,
        step_loss=step_loss, label=label, progress=progress,
    )  # fmt: skip
    teacher.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        facts: dict[str, Any] = {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads}
        save_checkpoint(student, checkpoint, facts)
    return TrainResult(checkpoint or Path(), False, seconds, history)
