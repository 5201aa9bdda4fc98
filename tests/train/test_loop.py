"""The optimizer step every training loop shares."""

from __future__ import annotations

import pytest
import torch

from edgematrix.errors import ModelError
from edgematrix.train.loop import optimizer_step


def test_step_updates_weights_and_refuses_a_non_finite_loss() -> None:
    w = torch.nn.Parameter(torch.tensor([1.0]))
    opt = torch.optim.SGD([w], lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda step: 1.0 / (step + 1))
    optimizer_step((w * 2).sum(), opt, sched, diverged="training diverged at epoch 0; lower train.lr")
    assert w.item() == pytest.approx(0.0)  # 1 - 0.5 * 2
    assert opt.param_groups[0]["lr"] == pytest.approx(0.25)  # the scheduler stepped too
    with pytest.raises(ModelError, match=r"^training diverged at epoch 3 \(loss nan\); lower train.lr$"):
        optimizer_step(w.sum() * float("nan"), opt, sched, diverged="training diverged at epoch 3; lower train.lr")
