"""Detector training and distillation: falling loss, checkpoint reuse, the KD loss's values."""

from __future__ import annotations

import copy
import math
from pathlib import Path

import pytest
import torch

from edgematrix.data.coco import load_split
from edgematrix.data.synthetic_detection import SyntheticDetectionConfig, generate
from edgematrix.errors import EdgeMatrixError
from edgematrix.matrix.schema import TrainConfig
from edgematrix.models.detector import Detector
from edgematrix.train.detection import (
    build_targets,
    detection_kd_loss,
    distill_detector,
    frozen_bn_epochs,
    normalise,
    train_detector,
)
from edgematrix.train.distill import DistillConfig

SIZE = (64, 96)


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory):
    root = generate(tmp_path_factory.mktemp("syn") / "d", SyntheticDetectionConfig(train=8, test=2, seed=3), workers=1)
    return load_split(root, "train", SIZE)


def _tiny(seed: int = 0) -> Detector:
    torch.manual_seed(seed)
    return Detector(SIZE, num_classes=4, width=0.25, neck_channels=16, head_depth=1)


@pytest.fixture(scope="module")
def trained(split, tmp_path_factory: pytest.TempPathFactory):
    model = _tiny()
    cfg = TrainConfig(epochs=15, batch_size=2, lr=5e-3, warmup_fraction=0.1, amp="off")
    ckpt = tmp_path_factory.mktemp("ckpt") / "m.pt"
    return model, cfg, ckpt, train_detector(model, split, cfg, ckpt, progress=False)


def test_training_lowers_the_loss_and_reuses_its_checkpoint(split, trained) -> None:
    model, cfg, ckpt, r = trained
    losses = [h["loss"] for h in r.history]
    assert len(losses) == 15 and not r.cache_hit
    assert losses[-1] < 0.85 * losses[0]
    assert ckpt.is_file() and ckpt.with_suffix(".json").is_file()
    again = _tiny(seed=5)
    r2 = train_detector(again, split, cfg, ckpt, progress=False)
    assert r2.cache_hit and r2.history == r.history
    for a, b in zip(model.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_the_last_fifth_of_the_epochs_freezes_batchnorm_statistics() -> None:
    assert [frozen_bn_epochs(e) for e in (1, 2, 5, 6, 10, 11)] == [0, 1, 1, 2, 2, 3]


def test_flipped_targets_mirror_the_boxes(split) -> None:
    g = _tiny().geometry
    cls, box = build_targets(split, g, False)
    cls_f, box_f = build_targets(split, g, True)
    assert cls.shape == (len(split), g.num_anchors) and box.shape == (len(split), g.num_anchors, 4)
    assert (cls >= 0).any() and (cls_f >= 0).any()
    # each mirrored positive box is (W - x2, y1, W - x1, y2) of some ground-truth box
    i = int((cls_f >= 0).any(1).nonzero()[0])
    pos = box_f[i][cls_f[i] >= 0]
    b = torch.from_numpy(split.boxes[i])
    mirrored = torch.stack([SIZE[1] - b[:, 2], b[:, 1], SIZE[1] - b[:, 0], b[:, 3]], 1)
    assert all(any(torch.allclose(p, m) for m in mirrored) for p in pos)


def test_kd_loss_values() -> None:
    s = torch.randn(2, 10, 3)
    b = torch.randn(2, 10, 4)
    assert detection_kd_loss((s, b), (s.clone(), b.clone()), 2.0, 4.0).item() == pytest.approx(0.0, abs=1e-5)
    # one cell, one class: teacher logit 0 (p = .5), student ln 3 (q = .75) at T = 1; boxes equal
    one_s, one_t = torch.tensor([[[math.log(3.0)]]]), torch.zeros(1, 1, 1)
    zb = torch.zeros(1, 1, 4)
    want = 0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25)
    assert detection_kd_loss((one_s, zb), (one_t, zb), 1.0, 1.0).item() == pytest.approx(want, rel=1e-5)
    # box term: |1| * 4 sides weighted by the teacher's probability .5, over the weight sum (clamped to 1)
    assert detection_kd_loss((one_t, zb + 1), (one_t, zb), 1.0, 1.0).item() == pytest.approx(0.5 * 4, rel=1e-5)
    with pytest.raises(EdgeMatrixError, match="differ"):
        detection_kd_loss((s, b), (s[:, :5], b), 1.0, 1.0)


def test_distillation_moves_the_student_towards_the_teacher(split, trained) -> None:
    teacher = copy.deepcopy(trained[0]).eval()
    student = copy.deepcopy(teacher)
    torch.manual_seed(2)
    with torch.no_grad():  # the student starts away from the teacher: perturbed output layers
        for conv in (student.cls_out, student.box_out):
            conv.weight.add_(0.2 * torch.randn_like(conv.weight))
    x = normalise(torch.from_numpy(split.images[:4]))

    def gap() -> float:
        with torch.no_grad():
            (ss, sb), (ts, tb) = student(x), teacher(x)
        return detection_kd_loss((ss, sb), (ts, tb), 1.0, 1.0).item()

    before = gap()
    start = copy.deepcopy(student.state_dict())
    cfg = DistillConfig(epochs=4, batch_size=4, lr=3e-3, alpha=1.0, temperature=1.0, amp="off")
    r = distill_detector(student, teacher, split, cfg, None, progress=False, label="kd")
    assert len(r.history) == 4 and r.history[-1]["kd"] < r.history[0]["kd"]
    assert gap() < 0.7 * before
    assert any(not torch.equal(a, b) for a, b in zip(start.values(), student.state_dict().values(), strict=True))
    with pytest.raises(EdgeMatrixError, match="same geometry"):
        distill_detector(Detector((96, 96), width=0.25, neck_channels=8), teacher, split, cfg, None, progress=False)


@pytest.mark.slow
def test_qat_of_a_detector_exports_qdq_that_onnxruntime_runs(split, trained, tmp_path: Path) -> None:
    from edgematrix.optimize.qat import export_qdq_onnx, fold_batchnorm, quantize_for_qat

    teacher = trained[0]
    student = copy.deepcopy(teacher).eval()
    assert fold_batchnorm(student) == 9 + 3 + 3 + 4  # backbone, laterals, smoothing, 2 per separable block (x2)
    x = normalise(torch.from_numpy(split.images[:4]))
    quantize_for_qat(student, [x[i : i + 1] for i in range(4)])
    cfg = DistillConfig(epochs=1, batch_size=4, lr=1e-4, amp="off", channels_last=False)
    r = distill_detector(student, teacher, split, cfg, None, progress=False, label="qat")
    assert len(r.history) == 1 and math.isfinite(r.history[0]["loss"])
    pairs, diff = export_qdq_onnx(student, (1, 3, *SIZE), tmp_path / "qat.onnx", ("scores", "boxes"), x[:1].numpy())
    assert pairs > 20 and diff < 0.1
