"""Training loop for lane models (UFLD-v2 family), seeded and cached by content hash."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgematrix.data.lanes import MEAN, STD, LaneSplit
from edgematrix.errors import ModelError
from edgematrix.matrix.schema import TrainConfig
from edgematrix.models.lane_task import encode_segmentation, encode_targets, lane_loss
from edgematrix.models.ufld import LaneGeometry, UFLDv2
from edgematrix.train.lane_params import LaneTrainParams
from edgematrix.train.loop import optimizer_step


@dataclass
class TrainResult:
    checkpoint: Path
    cache_hit: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


def cpu_has_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(f in flags for f in (" avx512_bf16", " amx_bf16"))


def _targets(
    split: LaneSplit, g: LaneGeometry, flip: bool, seg_size: tuple[int, int] | None
) -> dict[str, torch.Tensor]:
    width = g.image_width - 1
    out: dict[str, list[np.ndarray]] = {}
    for s in split.samples:
        lanes = [[(width - x) if x >= 0 else x for x in lane] for lane in s.lanes] if flip else s.lanes
        for k, v in encode_targets(lanes, s.h_samples, g).items():
            out.setdefault(k, []).append(v)
        if seg_size is not None:
            out.setdefault("seg", []).append(encode_segmentation(lanes, s.h_samples, g, seg_size))
    return {k: torch.from_numpy(np.stack(v)) for k, v in out.items()}


def _normalise(x: torch.Tensor) -> torch.Tensor:
    mean = torch.from_numpy(MEAN).view(1, 3, 1, 1).to(x.device)
    std = torch.from_numpy(STD).view(1, 3, 1, 1).to(x.device)
    return ((x.float() - mean) / std).contiguous(memory_format=torch.channels_last)


def train_lane_model(
    model: UFLDv2,
    train: LaneSplit,
    config: TrainConfig,
    checkpoint: Path,
    *,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` in place on ``train``; reuse ``checkpoint`` when it exists (the caller keys it)."""
    history = reuse_checkpoint(model, checkpoint)
    if history is not None:
        return TrainResult(checkpoint, True, 0.0, history)
    g: LaneGeometry = model.geometry
    own = LaneTrainParams.of(config)  # the lane task's own keys of [models.NAME.train]
    torch.manual_seed(config.seed)
    np.random.seed(config.seed)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    device = "cuda" if config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available()) else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ModelError("train.device = 'cuda' but torch sees no CUDA device; use 'auto' or 'cpu'")
    use_bf16 = config.amp == "bf16" or (config.amp == "auto" and (device == "cuda" or cpu_has_bf16()))
    seg_size = model.aux_size if model.use_aux else None
    T = _targets(train, g, False, seg_size)
    TF = _targets(train, g, True, seg_size) if config.flip else T
    X = torch.from_numpy(train.images)
    n = len(X)
    steps_per_epoch = math.ceil(n / config.batch_size)
    total = config.epochs * steps_per_epoch
    model.train()
    model.to(device)
    model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # missing from torch's stubs
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(total, config.warmup_fraction))
    gen = torch.Generator().manual_seed(config.seed)
    history = []
    start = time.perf_counter()
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns = (
        TextColumn("[bold]train"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("train", total=total, info="")
        for epoch in range(config.epochs):
            perm = torch.randperm(n, generator=gen)
            running = 0.0
            for i in range(0, n, config.batch_size):
                idx = perm[i : i + config.batch_size]
                flip = (
                    torch.rand(len(idx), generator=gen) < 0.5
                    if config.flip
                    else torch.zeros(len(idx), dtype=torch.bool)
                )
                x = X[idx].clone()
                x[flip] = x[flip].flip(-1)
                tgt = {
                    k: torch.where(flip.view(-1, *[1] * (T[k].dim() - 1)), TF[k][idx], T[k][idx]).to(device) for k in T
                }
                with torch.autocast(device, dtype=torch.bfloat16, enabled=use_bf16):
                    out = model(_normalise(x.to(device)))
                loss = lane_loss(
                    [o.float() for o in out],
                    tgt,
                    expectation_weight=own.expectation_weight,
                    label_sigma=own.label_sigma,
                )
                optimizer_step(loss, opt, sched, diverged=f"training diverged at epoch {epoch}; lower train.lr")
                running += loss.item() * len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{config.epochs} loss {loss.item():.3f}")
            history.append({"epoch": epoch + 1, "loss": running / n})
    model.eval()
    model.to("cpu")
    model.to(memory_format=torch.contiguous_format)  # type: ignore[call-overload]
    seconds = time.perf_counter() - start
    facts = {"history": history, "seconds": seconds, "bf16": use_bf16, "threads": threads, "device": device}
    save_checkpoint(model, checkpoint, facts)
    return TrainResult(checkpoint, False, seconds, history)


def warmup_cosine(total_steps: int, warmup_fraction: float):
    """LR factor per step: linear warm-up, then cosine decay to 0 (any number of steps, even 1)."""
    warmup = max(1, round(total_steps * warmup_fraction))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total_steps - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return factor


def save_checkpoint(model: torch.nn.Module, path: Path, meta: dict[str, Any]) -> None:
    """Write ``model``'s state dict as a sealed cache entry (atomically), with ``meta`` beside it."""
    from edgematrix.core.cache import seal
    from edgematrix.fileio import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save({k: v.contiguous() for k, v in model.state_dict().items()}, tmp)
    os.replace(tmp, path)
    atomic_write_text(path.with_suffix(".json"), json.dumps(meta, indent=2))
    seal(path)


def reuse_checkpoint(model: torch.nn.Module, path: Path | None) -> list[dict[str, float]] | None:
    """Load the cached checkpoint ``path`` into ``model`` and return its training history; None when
    there is none or it fails verification against its seal (it is then deleted: train again)."""
    from edgematrix.core.cache import reuse

    if path is None or not reuse(path, "checkpoint"):
        return None
    load_checkpoint(model, path)
    try:
        history: list[dict[str, float]] = json.loads(path.with_suffix(".json").read_text()).get("history", [])
    except (OSError, ValueError, AttributeError):
        history = []
    return history


def load_checkpoint(model: torch.nn.Module, path: Path) -> None:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state)
    except Exception as e:
        raise ModelError(
            f"checkpoint {path} cannot be loaded ({type(e).__name__}: {e}); delete it to retrain"
        ) from None
