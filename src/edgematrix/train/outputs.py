"""Fine-tuning a model toward a teacher's outputs, with no labels: the distillation of a user's module after
pruning or for QAT (the ``outputs`` task, and the tasks built on it).

Loss per batch: the mean over the model's outputs of ``MSE(student, teacher) / (Var(teacher) + 1e-8)`` —
each output normalised by its own spread, so a box regression in pixels and a score in 0..1 weigh alike.
The teacher is the unpruned FP32 model (frozen, eval mode). AdamW, linear warm-up then cosine decay,
seeded; checkpoints as :mod:`edgematrix.train.lane` writes them.
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

from edgematrix.errors import EdgeMatrixError
from edgematrix.train.lane import TrainResult, reuse_checkpoint, save_checkpoint, warmup_cosine
from edgematrix.train.loop import optimizer_step


def _as_list(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, dict):
        return [v for v in out.values() if isinstance(v, torch.Tensor)]
    return [o for o in out if isinstance(o, torch.Tensor)]


def output_distillation_loss(student: Any, teacher: Any) -> torch.Tensor:
    """Mean over outputs of ``MSE / (Var(teacher) + 1e-8)``."""
    s_out, t_out = _as_list(student), _as_list(teacher)
    if len(s_out) != len(t_out) or not t_out:
        raise EdgeMatrixError(f"the student returns {len(s_out)} tensor output(s), the teacher {len(t_out)}")
    terms = []
    for s, t in zip(s_out, t_out, strict=True):
        if s.shape != t.shape:
            raise EdgeMatrixError(f"student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ")
        t = t.float()
        terms.append(torch.mean((s.float() - t) ** 2) / (t.var(unbiased=False) + 1e-8))
    return torch.stack(terms).mean()


def distill_outputs(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    images: np.ndarray,
    to_input: Callable[[np.ndarray], np.ndarray],
    config: Any,
    checkpoint: Path | None,
    *,
    progress: bool = True,
    label: str = "finetune",
) -> TrainResult:
    """Fine-tune ``student`` in place toward ``teacher``'s outputs on ``images`` (uint8, one sample per row;
    ``to_input`` makes a batch of them the model's float input). ``config``:
    :class:`edgematrix.train.distill.DistillConfig` (epochs, batch_size, lr, weight_decay, warmup_fraction,
    seed; alpha and temperature do not apply without labels). Reuses ``checkpoint`` when it exists."""
    config.validate()
    if checkpoint is not None and reuse_checkpoint(student, checkpoint) is not None:
        student.eval()
        return TrainResult(checkpoint, True, 0.0, [])
    n = len(images)
    if n == 0:
        raise EdgeMatrixError(f"{label}: no images to fine-tune on")
    torch.manual_seed(config.seed)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    total = config.epochs * math.ceil(n / config.batch_size)
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config.warmup_fraction))
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeRemainingColumn(), disable=not progress, transient=False) as bar:
        task = bar.add_task(label, total=total, info="")
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen).numpy()
            total_loss = 0.0
            for i in range(0, n, config.batch_size):
                idx = np.sort(perm[i : i + config.batch_size])
                x = torch.from_numpy(np.ascontiguousarray(to_input(np.asarray(images[idx]))))
                with torch.no_grad():
                    t_out = teacher(x)
                loss = output_distillation_loss(student(x), t_out)
                optimizer_step(loss, opt, sched, diverged=f"{label} diverged at epoch {epoch}; lower its lr")
                total_loss += float(loss.item()) * len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{config.epochs} kd {loss.item():.4f}")
            history.append({"epoch": epoch + 1, "kd": total_loss / n, "task": 0.0, "loss": total_loss / n})
    student.eval()
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        save_checkpoint(student, checkpoint, {"history": history, "seconds": seconds, "threads": threads})
    return TrainResult(checkpoint or Path(), False, seconds, history)
