"""Fine-tuning with knowledge distillation: a student (pruned, or fake-quantized for QAT) learns from
the unpruned FP32 teacher's outputs plus the task loss.

Loss per batch: ``alpha * KD + (1 - alpha) * task``, where KD is Hinton's temperature-scaled KL
divergence ``T² · KL(softmax(teacher / T) || softmax(student / T))`` over each head's class axis
(axis 1: the cells of ``loc_row`` / ``loc_col``, present/absent of ``exist_row`` / ``exist_col``),
summed over the four heads, and the task loss is :func:`edgematrix.models.lane_task.lane_loss`
(with the auxiliary segmentation term when the student has that branch). The loop, data targets,
LR schedule and checkpoint format are those of :mod:`edgematrix.train.lane`.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from edgematrix.data.lanes import LaneSplit
from edgematrix.errors import EdgeMatrixError
from edgematrix.models.lane_task import lane_loss
from edgematrix.train.lane import (
    TrainResult,
    _normalise,
    _targets,
    cpu_has_bf16,
    reuse_checkpoint,
    save_checkpoint,
    warmup_cosine,
)
from edgematrix.train.loop import optimizer_step


@dataclass(frozen=True)
class DistillConfig:
    epochs: int = 2
    batch_size: int = 8
    lr: float = 5e-4
    weight_decay: float = 1e-4
    warmup_fraction: float = 0.1
    alpha: float = 0.5  # weight of the distillation term; 1 - alpha weighs the task loss
    temperature: float = 2.0
    seed: int = 0
    amp: str = "auto"  # auto | bf16 | off
    flip: bool = True
    label_sigma: float = 1.0
    expectation_weight: float = 0.1
    channels_last: bool = True  # oneDNN's CPU convolutions are ~2x faster; QAT turns it off (ModelOpt's
    # CPU fake quantization crashes in backward on channels-last tensors, torch 2.13 / ModelOpt 0.47)

    def validate(self) -> None:
        if self.epochs < 1 or self.batch_size < 1:
            raise EdgeMatrixError(f"finetune epochs and batch_size must be >= 1; got {self.epochs}, {self.batch_size}")
        if not self.lr > 0:
            raise EdgeMatrixError(f"finetune lr must be > 0; got {self.lr}")
        if not 0 <= self.alpha <= 1:
            raise EdgeMatrixError(f"finetune alpha (distillation weight) must be in [0, 1]; got {self.alpha}")
        if not self.temperature > 0:
            raise EdgeMatrixError(f"finetune temperature must be > 0; got {self.temperature}")
        if self.amp not in ("auto", "bf16", "off"):
            raise EdgeMatrixError(f"finetune amp must be auto, bf16 or off; got {self.amp!r}")


def kd_loss(student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor], temperature: float) -> torch.Tensor:
    """Sum over heads of ``T² · KL(softmax(t/T) || softmax(s/T))`` on axis 1, batch-mean per position."""
    if len(student) < len(teacher):
        raise EdgeMatrixError(f"student returns {len(student)} outputs, teacher {len(teacher)}; need as many")
    total = student[0].new_zeros((), dtype=torch.float32)
    t2 = temperature * temperature
    for s, t in zip(student[: len(teacher)], teacher, strict=True):
        if s.shape != t.shape:
            raise EdgeMatrixError(f"student output {tuple(s.shape)} and teacher output {tuple(t.shape)} differ")
        log_p_s = F.log_softmax(s.float() / temperature, dim=1)
        log_p_t = F.log_softmax(t.float() / temperature, dim=1)
        # KL per position (sum over the class axis), averaged over batch and positions
        kl = (log_p_t.exp() * (log_p_t - log_p_s)).sum(1).mean()
        total = total + t2 * kl
    return total


def distill_lane_model(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: LaneSplit,
    config: DistillConfig,
    checkpoint: Path | None,
    *,
    progress: bool = True,
    label: str = "finetune",
) -> TrainResult:
    """Fine-tune ``student`` in place against ``teacher`` (frozen, eval mode) and the labels.

    Reuses ``checkpoint`` when it exists (the caller keys it by content); ``None`` keeps nothing.
    """
    config.validate()
    if checkpoint is not None and reuse_checkpoint(student, checkpoint) is not None:
        student.eval()
        return TrainResult(checkpoint, True, 0.0, [])
    return _distill_impl(student, teacher, train, config, checkpoint, progress=progress, label=label)


def _distill_impl(
    student: torch.nn.Module,
    teacher: torch.nn.Module,
    train: LaneSplit,
    config: DistillConfig,
    checkpoint: Path | None,
    *,
    progress: bool,
    label: str,
) -> TrainResult:
    g: Any = student.geometry
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and cpu_has_bf16())
    seg_size: Any = student.aux_size if getattr(student, "use_aux", False) else None
    T = _targets(train, g, False, seg_size)
    TF = _targets(train, g, True, seg_size) if config.flip else T
    X = torch.from_numpy(train.images)
    n = len(X)
    total = config.epochs * math.ceil(n / config.batch_size)
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    student.train()
    fmt = torch.channels_last if config.channels_last else torch.contiguous_format
    for m in (student, teacher):
        m.to(memory_format=fmt)  # type: ignore[call-overload]  # missing from torch's stubs
    opt = torch.optim.AdamW(
        [p for p in student.parameters() if p.requires_grad], lr=config.lr, weight_decay=config.weight_decay
    )
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config.warmup_fraction))
    gen = torch.Generator().manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start = time.perf_counter()
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
                x = X[idx].clone()
                x[flip] = x[flip].flip(-1)
                tgt = {k: torch.where(flip.view(-1, *[1] * (T[k].dim() - 1)), TF[k][idx], T[k][idx]) for k in T}
                xn = _normalise(x).contiguous(memory_format=fmt)
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=use_bf16):
                    with torch.no_grad():
                        t_out = teacher(xn)
                    s_out = student(xn)
                s_out = [o.float() for o in s_out]
                task_l = lane_loss(
                    s_out, tgt, expectation_weight=config.expectation_weight, label_sigma=config.label_sigma
                )
                kd = kd_loss(s_out, [o.float() for o in t_out], config.temperature)
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
    for m in (student, teacher):
        m.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    seconds = time.perf_counter() - start
    if checkpoint is not None:
        facts: dict[str, Any] = {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads}
        save_checkpoint(student, checkpoint, facts)
    return TrainResult(checkpoint or Path(), False, seconds, history)
