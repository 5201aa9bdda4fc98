"""Training and distillation fine-tuning of steering regressors (PilotNet), seeded.

The model takes uint8 frames as float pixels (0..255; PilotNet normalises in its first layer) and
predicts the normalised steering command. One loop serves both:

- training (:func:`train_steering_model`): MSE to the labels;
- fine-tuning after pruning and for QAT (:func:`distill_steering_model`): ``alpha · MSE(student,
  teacher) + (1 - alpha) · MSE(student, label)``, the teacher being the unpruned FP32 model (a
  regression output has no class distribution to soften, so the temperature does not apply).

Training starts from weights drawn under ``config.seed`` (:func:`init_weights`), so the checkpoint is a
function of what keys its cache (model, training config, data, code), not of what the process drew before. ``flip`` mirrors half of each batch horizontally and negates its steering (a mirrored road
needs the mirrored command; the teacher sees the mirrored frame too). AdamW, linear warm-up then cosine decay.
Checkpoints and their JSON facts are those of :mod:`edgematrix.train.lane` (the caller keys the file
by content; an existing one is loaded).
"""

from __future__ import annotations

import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.train.lane import TrainResult, reuse_checkpoint, save_checkpoint, warmup_cosine
from edgematrix.train.loop import optimizer_step


def _threads() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def train_steering(
    model: torch.nn.Module,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    seed: int = 0,
    flip: bool = True,
    teacher: torch.nn.Module | None = None,
    alpha: float = 0.0,
    device: str = "cpu",
    label: str = "train",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` in place on uint8 frames ``x`` (N, 3, H, W) and steering labels ``y`` (N,).

    With ``teacher``, the loss is ``alpha · MSE(model, teacher) + (1 - alpha) · MSE(model, y)``.
    Returns one record per epoch: ``loss`` and ``task`` (MSE to the labels), and ``kd`` with a teacher.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    if len(x) != len(y) or len(x) == 0:
        raise EdgeMatrixError(f"training needs as many labels as frames (>0); got {len(x)} frames, {len(y)} labels")
    if epochs < 1 or batch_size < 1 or not lr > 0:
        raise EdgeMatrixError(f"epochs and batch_size must be >= 1 and lr > 0; got {epochs}, {batch_size}, {lr}")
    if not 0 <= alpha <= 1:
        raise EdgeMatrixError(f"alpha (distillation weight) must be in [0, 1]; got {alpha}")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(np.ascontiguousarray(x))
    Y = torch.from_numpy(np.asarray(y, np.float32))
    n = len(X)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps), warmup_fraction))
    if teacher is not None:
        teacher.eval().to(device)
        for p in teacher.parameters():
            p.requires_grad_(False)
    model.to(device)
    model.train()
    history: list[dict[str, float]] = []
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task(label, total=steps, info="")
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            sums = {"loss": 0.0, "task": 0.0, "kd": 0.0}
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                xb, yb = X[idx].float(), Y[idx].clone()
                if flip:
                    mirror = torch.rand(len(idx), generator=gen) < 0.5
                    xb[mirror] = xb[mirror].flip(-1)
                    yb[mirror] = -yb[mirror]
                xb, yb = xb.to(device), yb.to(device)
                pred = model(xb).reshape(-1)
                task_loss = torch.nn.functional.mse_loss(pred, yb)
                loss = task_loss
                kd = torch.zeros((), device=device)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(xb).reshape(-1)
                    kd = torch.nn.functional.mse_loss(pred, target)
                    loss = alpha * kd + (1 - alpha) * task_loss
                optimizer_step(loss, opt, sched, diverged=f"{label} diverged at epoch {epoch + 1}; lower its lr")
                for k, v in (("loss", loss), ("task", task_loss), ("kd", kd)):
                    sums[k] += float(v.item()) * len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} mse {task_loss.item():.4f}")
            record: dict[str, float] = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}
            if teacher is None:
                del record["kd"]
            history.append(record)
    model.eval()
    model.to("cpu")
    if teacher is not None:
        teacher.to("cpu")
    return history


def init_weights(model: torch.nn.Module, seed: int) -> None:
    """Draw every layer's initial parameters again (each module's own ``reset_parameters``) under ``seed``.

    The source stage builds the model before training with whatever the process's generator holds; training
    from that draw made the checkpoint depend on the process, not only on what keys its cache. It also
    mattered: from an unseeded draw PilotNet predicted the mean steering for three epochs and reached a test
    MSE of 0.00084 after eight; seeded draws (seeds 0, 1, 2) reached 0.00047, 0.00023 and 0.00037 (He-normal
    weights: 0.00027, 0.00043, 0.00041, no better), on the synthetic frames."""
    torch.manual_seed(seed)
    for m in model.modules():
        reset = getattr(m, "reset_parameters", None)
        if callable(reset):
            reset()


def _device(requested: str) -> str:
    if requested == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    return "cuda" if requested == "cuda" or (requested == "auto" and torch.cuda.is_available()) else "cpu"


def train_steering_model(
    model: torch.nn.Module, train: Any, config: Any, checkpoint: Path, *, progress: bool = True
) -> TrainResult:
    """Train ``model`` in place on ``train`` (:class:`~edgematrix.data.synthetic_driving.DrivingSplit`) with
    ``config`` (matrix TrainConfig: epochs, batch_size, lr, weight_decay, warmup_fraction, seed, flip,
    device); reuse ``checkpoint`` when it exists (the caller keys it by content)."""
    history = reuse_checkpoint(model, checkpoint)
    if history is not None:
        model.eval()
        return TrainResult(checkpoint, True, 0.0, history)
    threads = _threads()
    torch.set_num_threads(threads)
    device = _device(config.device)
    init_weights(model, config.seed)
    start = time.perf_counter()
    history = train_steering(
        model, train.images, train.steering, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_fraction=config.warmup_fraction, seed=config.seed, flip=config.flip,
        device=device, label="train", progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    save_checkpoint(model, checkpoint, {"history": history, "seconds": seconds, "threads": threads, "device": device})
    return TrainResult(checkpoint, False, seconds, history)


def distill_steering_model(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: Any,
    config: Any,
    checkpoint: Path | None,
    *,
    progress: bool = True,
    label: str = "finetune",
) -> TrainResult:
    """Fine-tune ``student`` in place against ``teacher`` (frozen) and the labels of ``train``, with
    ``config`` (:class:`edgematrix.train.distill.DistillConfig`: epochs, batch_size, lr, weight_decay,
    warmup_fraction, alpha, seed, flip). The student may hold ModelOpt fake quantizers (QAT): it stays in
    contiguous memory format. Reuses ``checkpoint`` when it exists; ``None`` keeps nothing."""
    config.validate()
    if checkpoint is not None and reuse_checkpoint(student, checkpoint) is not None:
        student.eval()
        return TrainResult(checkpoint, True, 0.0, [])
    threads = _threads()
    torch.set_num_threads(threads)
    start = time.perf_counter()
    history = train_steering(
        student, train.images, train.steering, epochs=config.epochs, batch_size=config.batch_size, lr=config.lr,
        weight_decay=config.weight_decay, warmup_fraction=config.warmup_fraction, seed=config.seed, flip=config.flip,
        teacher=teacher, alpha=config.alpha, label=label, progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        save_checkpoint(student, checkpoint, {"history": history, "seconds": seconds, "threads": threads})
    return TrainResult(checkpoint or Path(), False, seconds, history)
