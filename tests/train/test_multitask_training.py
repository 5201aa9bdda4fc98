from __future__ import annotations

import copy
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from edgematrix.data.scenes import ClassInfo, ScenesSplit
from edgematrix.errors import DataError
from edgematrix.matrix.schema import TrainConfig
from edgematrix.models import create_model
from edgematrix.train.distill import DistillConfig
from edgematrix.train.multitask import (
    class_weights,
    distill_multitask_model,
    distill_terms,
    task_loss,
    train_multitask_model,
)

H, W = 32, 64
CLASSES = ClassInfo(("ground", "sky", "box"), ((100, 100, 100), (70, 130, 180), (200, 0, 0)))


def toy_split(n: int = 8, seed: int = 0) -> ScenesSplit:
    """Sky above a horizon row, ground below with depth 40/(y - horizon), a red box at 5 m."""
    rng = np.random.default_rng(seed)
    images = np.empty((n, 3, H, W), np.uint8)
    masks = np.empty((n, H, W), np.uint8)
    depth = np.zeros((n, H, W), np.float32)
    ys = np.arange(H)[:, None] * np.ones((1, W))
    for i in range(n):
        hz = int(rng.integers(10, 18))
        m = np.where(ys < hz, 1, 0).astype(np.uint8)
        d = np.where(ys < hz, 0.0, 40.0 / np.maximum(ys - hz + 1, 1)).astype(np.float32)
        x0 = int(rng.integers(0, W - 12))
        m[hz - 4 : hz + 6, x0 : x0 + 10] = 2
        d[hz - 4 : hz + 6, x0 : x0 + 10] = 5.0
        m[0, 0] = 255
        img = np.asarray(CLASSES.palette, np.float32)[np.minimum(m, 2)]
        img += rng.normal(0, 8, img.shape)
        images[i] = np.clip(img, 0, 255).astype(np.uint8).transpose(2, 0, 1)
        masks[i], depth[i] = m, d
    return ScenesSplit(Path("toy"), "train", [f"{i}" for i in range(n)], images, masks, depth, CLASSES, True)


def tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return create_model(
        "multitask_seg_depth", [1, 3, H, W], width=0.25, features=8, head_channels=8, num_classes=3, max_depth=50.0
    )


def test_task_loss_by_hand() -> None:
    seg = torch.zeros(1, 2, 1, 2)
    seg[0, 0] = 2.0  # class 0 everywhere, logit margin 2
    mask = torch.tensor([[[0, 255]]])
    depth = torch.tensor([[[[4.0, 1.0]]]])
    gt = torch.tensor([[[2.0, 0.0]]])  # second pixel: no measurement
    total, ce, dl = task_loss(seg, depth, mask, gt, depth_weight=0.5)
    assert ce.item() == pytest.approx(math.log(1 + math.exp(-2)), rel=1e-5)
    assert dl.item() == pytest.approx(math.log(2.0))  # |log 4 - log 2|
    assert total.item() == pytest.approx(ce.item() + 0.5 * math.log(2.0), rel=1e-5)


def test_class_weights_by_hand() -> None:
    w = class_weights(np.array([[0, 0, 0, 1, 255]], np.uint8), 3)
    # frequencies 3/4, 1/4, 0 -> 1/sqrt(f) = 1.1547, 2, (absent) 0; scaled so that sum(w * f) = 1
    raw = np.array([1 / math.sqrt(0.75), 2.0, 0.0])
    assert w.tolist() == pytest.approx((raw / (raw[0] * 0.75 + raw[1] * 0.25)).tolist())
    assert float((w * np.array([0.75, 0.25, 0.0])).sum()) == pytest.approx(1.0)
    with pytest.raises(DataError, match="every mask pixel is 255"):
        class_weights(np.full((2, 2), 255, np.uint8), 3)


def test_weighted_loss_favours_the_rare_class() -> None:
    seg = torch.zeros(1, 2, 1, 4)  # uniform prediction: CE = log 2 per pixel whatever the weights
    mask = torch.tensor([[[0, 0, 0, 1]]])
    depth, gt = torch.ones(1, 1, 1, 4), torch.zeros(1, 1, 4)
    _, ce, _ = task_loss(seg, depth, mask, gt, 1.0, torch.tensor([1.0, 3.0]))
    assert ce.item() == pytest.approx(math.log(2.0))
    seg[0, 0] = 1.0  # now right on the 3 frequent pixels, wrong on the rare one
    _, plain, _ = task_loss(seg, depth, mask, gt, 1.0)
    _, weighted, _ = task_loss(seg, depth, mask, gt, 1.0, torch.tensor([1.0, 3.0]))
    good, bad = math.log(1 + math.exp(-1)), math.log(1 + math.exp(1))
    assert plain.item() == pytest.approx((3 * good + bad) / 4, rel=1e-5)
    assert weighted.item() == pytest.approx((3 * good + 3 * bad) / 6, rel=1e-5)


def test_distill_terms_vanish_for_identical_outputs() -> None:
    seg = torch.randn(2, 3, 4, 5)
    depth = torch.rand(2, 1, 4, 5) + 1
    assert distill_terms(seg, depth, seg, depth, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    assert distill_terms(seg, depth * 2, seg, depth, 2.0).item() == pytest.approx(math.log(2.0), rel=1e-5)


def test_training_lowers_the_loss_and_caches(tmp_path: Path) -> None:
    split = toy_split()
    model = tiny_model()
    cfg = TrainConfig(epochs=8, batch_size=4, lr=1e-2, warmup_fraction=0.1, amp="off")
    ckpt = tmp_path / "mt.pt"
    r = train_multitask_model(model, split, cfg, ckpt, progress=False)
    assert not r.cache_hit and ckpt.is_file() and len(r.history) == 8
    first, last = r.history[0], r.history[-1]
    assert last["loss"] < 0.6 * first["loss"]
    assert last["seg"] < first["seg"] and last["depth"] < first["depth"]
    again = tiny_model()
    r2 = train_multitask_model(again, split, cfg, ckpt, progress=False)
    assert r2.cache_hit and r2.history == r.history
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_distillation_fine_tune_runs_and_learns(tmp_path: Path) -> None:
    split = toy_split()
    teacher = tiny_model()
    train_multitask_model(
        teacher, split, TrainConfig(epochs=6, batch_size=4, lr=1e-2, amp="off"), tmp_path / "t.pt", progress=False
    )
    student = copy.deepcopy(teacher)
    with torch.no_grad():
        for p in student.heads["depth"].parameters():
            p.mul_(0.5)  # a perturbed student: distillation should pull it back
    cfg = DistillConfig(epochs=4, batch_size=4, lr=5e-3, alpha=0.7, amp="off", flip=False)
    r = distill_multitask_model(student, teacher, split, cfg, tmp_path / "s.pt", progress=False)
    assert len(r.history) == 4 and r.history[-1]["kd"] < r.history[0]["kd"]
    assert all(not p.requires_grad for p in teacher.parameters())
    assert distill_multitask_model(tiny_model(), teacher, split, cfg, tmp_path / "s.pt", progress=False).cache_hit


def test_mismatched_classes_are_reported(tmp_path: Path) -> None:
    model = create_model("multitask_seg_depth", [1, 3, H, W], width=0.25, features=8, head_channels=8, num_classes=4)
    with pytest.raises(DataError, match=r"dataset has 3 classes .* set params\.num_classes = 3"):
        train_multitask_model(model, toy_split(2), TrainConfig(epochs=1, amp="off"), tmp_path / "x.pt", progress=False)
