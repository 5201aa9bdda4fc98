"""Knowledge distillation: the KD loss's values, and a fine-tune that moves the student to the teacher."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgematrix.data.lanes import load_split
from edgematrix.data.synthetic_lanes import SyntheticConfig, generate
from edgematrix.errors import EdgeMatrixError
from edgematrix.models.ufld import UFLDv2
from edgematrix.optimize.prune import prune_model
from edgematrix.train.distill import DistillConfig, distill_lane_model, kd_loss


def test_kd_loss_is_zero_for_identical_outputs_and_matches_a_hand_computation() -> None:
    t = torch.randn(2, 5, 3, 4)
    assert kd_loss([t], [t.clone()], temperature=2.0).item() == pytest.approx(0.0, abs=1e-6)
    # two classes at one position: teacher logits (0, 0) -> p = (.5, .5); student (ln 3, 0) at T=1 -> q = (.75, .25)
    s = torch.tensor([math.log(3.0), 0.0]).view(1, 2, 1, 1)
    z = torch.zeros(1, 2, 1, 1)
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert kd_loss([s], [z], temperature=1.0).item() == pytest.approx(want, rel=1e-6)
    # temperature T: softmax of logits / T, scaled by T^2 (Hinton)
    s2 = torch.tensor([2 * math.log(3.0), 0.0]).view(1, 2, 1, 1)
    assert kd_loss([s2], [z], temperature=2.0).item() == pytest.approx(4 * want, rel=1e-6)
    # heads add up; a student's extra (auxiliary) output is ignored
    assert kd_loss([s, s, torch.ones(3)], [z, z], temperature=1.0).item() == pytest.approx(2 * want, rel=1e-6)


def test_kd_loss_rejects_mismatched_heads() -> None:
    with pytest.raises(EdgeMatrixError, match="differ"):
        kd_loss([torch.zeros(1, 2, 3)], [torch.zeros(1, 3, 3)], 1.0)
    with pytest.raises(EdgeMatrixError, match="alpha"):
        DistillConfig(alpha=1.5).validate()


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    root = generate(tmp_path_factory.mktemp("syn") / "d", SyntheticConfig(train=8, test=2, seed=5))
    return load_split(root, "train", (64, 160))


def test_distillation_moves_the_pruned_student_towards_the_teacher(split, tmp_path: Path) -> None:
    torch.manual_seed(0)
    teacher = UFLDv2((64, 160), width=8, mlp_mid_dim=32, use_aux=True).eval()
    with torch.no_grad():
        teacher.cls[2].weight.mul_(30)  # peaked teacher distributions: a strong distillation signal
    torch.manual_seed(1)
    other = UFLDv2((64, 160), width=8, mlp_mid_dim=32, use_aux=True).eval()  # the student starts elsewhere
    student = prune_model(
        copy.deepcopy(other), torch.randn(1, 3, 64, 160), 0.5, round_to=4, ignored_layers=("pool", "cls")
    )
    x = torch.from_numpy(((split.images[:4].astype(np.float32) / 255) - 0.45) / 0.25)

    def gap() -> float:
        with torch.no_grad():
            return kd_loss(student.eval()(x), teacher(x), 1.0).item()

    before = gap()
    cfg = DistillConfig(epochs=6, batch_size=4, lr=3e-3, alpha=1.0, temperature=1.0, amp="off", flip=False)
    ckpt = tmp_path / "student.pt"
    res = distill_lane_model(student, teacher, split, cfg, ckpt, progress=False)
    assert not res.cache_hit and ckpt.is_file() and len(res.history) == 6
    assert {"loss", "kd", "task"} <= set(res.history[0])
    assert gap() < 0.9 * before  # seeded: 1.42 -> 1.16
    assert res.history[-1]["kd"] < res.history[0]["kd"]
    assert not any(p.requires_grad for p in teacher.parameters())  # the teacher stays frozen
    # the checkpoint is reused: a fresh pruned student loads the distilled weights
    again = prune_model(
        copy.deepcopy(other), torch.randn(1, 3, 64, 160), 0.5, round_to=4, ignored_layers=("pool", "cls")
    )
    res2 = distill_lane_model(again, teacher, split, cfg, ckpt, progress=False)
    assert res2.cache_hit
    assert all(
        torch.equal(a, b) for a, b in zip(again.state_dict().values(), student.state_dict().values(), strict=True)
    )
