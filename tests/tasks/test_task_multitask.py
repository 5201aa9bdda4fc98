from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.data import synthetic_scenes as syn
from edgematrix.data.scenes import ClassInfo, ScenesSplit
from edgematrix.errors import EdgeMatrixError
from edgematrix.export.onnx_export import export_onnx
from edgematrix.metrics.segmentation import confusion_matrix, depth_scores, segmentation_scores
from edgematrix.models import create_model
from edgematrix.tasks.base import get_task, imagenet_preprocess
from edgematrix.tasks.multitask import MultiTaskTask, draw_overlay, score_multitask_outputs

H, W = 32, 64
CLASSES = ClassInfo(("a", "b", "c"), ((255, 0, 0), (0, 255, 0), (0, 0, 255)))


def split(n: int = 3) -> ScenesSplit:
    rng = np.random.default_rng(0)
    masks = rng.integers(0, 3, (n, H, W)).astype(np.uint8)
    masks[:, 0, :4] = 255
    depth = rng.uniform(1, 40, (n, H, W)).astype(np.float32)
    depth[:, :2] = 0
    images = rng.integers(0, 256, (n, 3, H, W), dtype=np.uint8)
    return ScenesSplit(
        Path("toy"), "val", [f"val/images/{i}.png" for i in range(n)], images, masks, depth, CLASSES, True
    )


def perfect(s: ScenesSplit) -> list[dict[str, np.ndarray]]:
    outs = []
    for i in range(len(s)):
        logits = np.eye(3, dtype=np.float32)[np.minimum(s.masks[i], 2)].transpose(2, 0, 1)[None]
        outs.append({"seg": logits, "depth": np.maximum(s.depth[i], 1.0)[None, None]})
    return outs


def test_registered_under_its_task_name() -> None:
    task = get_task("multitask")
    assert isinstance(task, MultiTaskTask)
    assert task.metric == "mIoU" and task.output_names == ("seg", "depth") and task.agreement_output == "seg"
    assert task.head_outputs() == {"seg": "seg", "depth": "depth"}
    assert task.encoder_outputs == ("features",)


def test_perfect_outputs_score_100(tmp_path: Path) -> None:
    s = split()
    score = score_multitask_outputs(perfect(s), s, tmp_path / "p.npz")
    assert score.accuracy == pytest.approx(100.0)
    assert score.extras["pixel_acc"] == pytest.approx(100.0)
    assert score.extras["abs_rel"] == pytest.approx(0.0) and score.extras["delta1"] == pytest.approx(1.0)
    assert set(score.extras) == {"pixel_acc", "abs_rel", "rmse", "delta1"}
    saved = np.load(tmp_path / "p.npz", allow_pickle=False)
    assert saved["classes"].tolist() == ["a", "b", "c"] and saved["class_iou"].tolist() == [100.0, 100.0, 100.0]
    assert saved["masks"].shape == (3, H, W) and saved["depth"].dtype == np.float16
    assert saved["files"].tolist() == s.files


def test_partial_outputs_score_the_first_samples() -> None:
    s = split()
    outs = perfect(s)[:2]
    outs[1]["seg"] = np.roll(outs[1]["seg"], 1, axis=1)  # every class shifted: all wrong
    score = score_multitask_outputs(outs, s)
    # sample 0 all right, sample 1 all wrong: the same figure from the confusion matrices by hand
    cm = confusion_matrix(np.minimum(s.masks[0], 2), s.masks[0], 3) + confusion_matrix(
        (np.minimum(s.masks[1], 2) + 1) % 3, s.masks[1], 3
    )
    assert score.accuracy == pytest.approx(segmentation_scores(cm).miou * 100)
    assert score.extras["pixel_acc"] == pytest.approx(50.0, abs=1.0)
    with pytest.raises(EdgeMatrixError, match="4 outputs for a split of 3"):
        score_multitask_outputs(perfect(s) + perfect(s)[:1], s)
    with pytest.raises(EdgeMatrixError, match="seg \\[1, C, H, W\\]"):
        score_multitask_outputs([{"seg": np.zeros((3, H, W)), "depth": np.zeros((1, 1, H, W))}], s)


def test_evaluate_through_onnxruntime_matches_torch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model(
        "multitask_seg_depth", [1, 3, H, W], width=0.25, features=8, head_channels=8, num_classes=3, max_depth=50.0
    ).eval()
    onnx_path = tmp_path / "mt.onnx"
    export_onnx(model, (1, 3, H, W), onnx_path, output_names=("seg", "depth"))
    s = split()
    task = MultiTaskTask()
    with OnnxrtRunner(onnx_path) as runner:
        score = task.evaluate(runner, s, tmp_path / "out", "candidate", model=model)
    assert json.loads((tmp_path / "out" / "labels.json").read_text()) == s.files
    assert (tmp_path / "out" / "predictions-candidate.npz").is_file()
    with torch.no_grad():
        seg, depth = model(torch.from_numpy(imagenet_preprocess(s.images)))
    pred = seg.argmax(1).numpy()
    cm = sum(confusion_matrix(pred[i], s.masks[i], 3) for i in range(len(s)))
    assert score.accuracy == pytest.approx(segmentation_scores(cm).miou * 100, abs=0.05)
    assert score.extras["abs_rel"] == pytest.approx(depth_scores(depth[:, 0].numpy(), s.depth)["abs_rel"], rel=1e-3)
    assert 0 <= score.accuracy <= 100


def test_drive_and_overlay() -> None:
    task = MultiTaskTask()
    cfg = SimpleNamespace(input_shape=[1, 3, 48, 96])
    frames = task.drive(cfg, 3, seed=0)
    assert frames.shape == (3, 48, 96, 3) and frames.dtype == np.uint8
    seg = np.zeros((1, 7, 48, 96), np.float32)
    seg[0, syn.ROAD, 24:] = 1
    seg[0, syn.SKY, :24] = 1
    depth = np.full((1, 1, 48, 96), 10.0, np.float32)
    out = task.overlay(frames[0], {"seg": seg, "depth": depth}, SimpleNamespace(max_depth=80.0))
    assert out.shape == frames[0].shape
    # bottom-left is blended with the road colour, the top-right corner holds the depth inset
    road = np.asarray(syn.CLASSES.palette[syn.ROAD], np.float32)
    blended = 0.55 * frames[0][40, 5].astype(np.float32) + 0.45 * road
    assert np.abs(out[40, 5].astype(np.float32) - blended).max() <= 1.0
    direct = draw_overlay(frames[0], seg[0].argmax(0).astype(np.uint8), depth[0, 0], syn.CLASSES.palette, 80.0)
    assert np.array_equal(out, direct)
    assert not np.array_equal(out[2, 90], frames[0][2, 90])
