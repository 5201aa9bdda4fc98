"""Pieces every training loop of the package shares."""

from __future__ import annotations

from typing import Any

import torch

from edgematrix.errors import ModelError


def optimizer_step(loss: torch.Tensor, opt: torch.optim.Optimizer, sched: Any, *, diverged: str) -> None:
    """Backward + optimizer + scheduler step; a non-finite loss raises ModelError("<diverged> (loss x)...")."""
    if not torch.isfinite(loss):
        head, _, hint = diverged.partition(";")
        raise ModelError(f"{head} (loss {loss.item()});{hint}")
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    sched.step()
