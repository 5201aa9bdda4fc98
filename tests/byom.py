"""Bring-your-own-model fixtures: a detector ONNX file edgematrix did not produce (written with onnx.helper,
opset 13, dynamic batch / height / width, two outputs), folders of images, and a user package outside
src/edgematrix (a torch module, its checkpoint, a task with its own metric registered by entry point).
Importable from every test folder (tests/ is on sys.path via conftest.py)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np


def build_detector(
    path: Path, *, widths: tuple[int, ...] = (16, 32, 64, 64), classes: int = 4, anchors: int = 2, seed: int = 0
) -> Path:
    """A small single-stage detector as a third party would ship it: input ``images`` float32
    [batch, 3, height, width] (pixels 0..1), a stride-2 ReLU conv backbone (3x3 convs, He-initialised, seeded),
    then two 1x1 heads: ``boxes`` [batch, anchors·cells, 4] and ``scores`` [batch, anchors·cells, classes]
    (sigmoid). Written with onnx.helper, not edgematrix's exporter."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, name: str) -> str:
        w = (rng.standard_normal((cout, cin, k, k)) * np.sqrt(2.0 / (cin * k * k))).astype(np.float32)
        b = (rng.standard_normal(cout) * 0.05).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"{name}.w"), numpy_helper.from_array(b, f"{name}.b")])
        pad = k // 2
        nodes.append(
            helper.make_node(
                "Conv", [x, f"{name}.w", f"{name}.b"], [f"{name}.y"], name=name, kernel_shape=[k, k],
                strides=[stride, stride], pads=[pad, pad, pad, pad],
            )
        )  # fmt: skip
        return f"{name}.y"

    x, cin = "images", 3
    for i, w in enumerate(widths):
        y = conv(x, cin, w, 3, 2, f"backbone.{i}")
        nodes.append(helper.make_node("Relu", [y], [f"backbone.{i}.relu"], name=f"backbone.{i}.relu"))
        x, cin = f"backbone.{i}.relu", w
    inits.append(numpy_helper.from_array(np.array([0, 4, -1], np.int64), "box_shape"))
    inits.append(numpy_helper.from_array(np.array([0, classes, -1], np.int64), "score_shape"))
    box = conv(x, cin, 4 * anchors, 1, 1, "head.box")
    nodes += [
        helper.make_node("Reshape", [box, "box_shape"], ["box.r"], name="box.reshape"),
        helper.make_node("Transpose", ["box.r"], ["boxes"], name="box.transpose", perm=[0, 2, 1]),
    ]
    cls = conv(x, cin, classes * anchors, 1, 1, "head.cls")
    nodes += [
        helper.make_node("Reshape", [cls, "score_shape"], ["cls.r"], name="cls.reshape"),
        helper.make_node("Transpose", ["cls.r"], ["cls.t"], name="cls.transpose", perm=[0, 2, 1]),
        helper.make_node("Sigmoid", ["cls.t"], ["scores"], name="cls.sigmoid"),
    ]
    graph = helper.make_graph(
        nodes,
        "third_party_detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, ["batch", 3, "height", "width"])],
        [
            helper.make_tensor_value_info("boxes", TensorProto.FLOAT, ["batch", "anchors", 4]),
            helper.make_tensor_value_info("scores", TensorProto.FLOAT, ["batch", "anchors", classes]),
        ],
        inits,
    )
    model = helper.make_model(graph, producer_name="onnx.helper", opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def export_torch_detector(path: Path, *, classes: int = 5, seed: int = 0) -> Path:
    """The same kind of detector as a PyTorch user exports it: ``torch.onnx.export`` with the TorchScript
    exporter (``dynamo=False``, not edgematrix's), opset 13, dynamic batch / height / width, outputs ``boxes``
    and ``scores`` whose anchor count follows the input size (Shape → Gather → Concat → Reshape in the graph)."""
    import warnings

    import torch
    from torch import nn

    class Det(nn.Module):
        def __init__(self) -> None:
            super().__init__()

            def block(i: int, o: int) -> nn.Module:
                return nn.Sequential(nn.Conv2d(i, o, 3, 2, 1), nn.BatchNorm2d(o), nn.ReLU())

            self.backbone = nn.Sequential(block(3, 16), block(16, 32), block(32, 64))
            self.box, self.cls = nn.Conv2d(64, 4 * 2, 1), nn.Conv2d(64, classes * 2, 1)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.backbone(x)
            n = x.shape[0]
            boxes = self.box(f).reshape(n, 4, -1).transpose(1, 2)
            return boxes, self.cls(f).reshape(n, classes, -1).transpose(1, 2).sigmoid()

    torch.manual_seed(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            Det().eval(), (torch.randn(1, 3, 64, 64),), str(path), opset_version=13, dynamo=False,
            input_names=["images"], output_names=["boxes", "scores"],
            dynamic_axes={"images": {0: "batch", 2: "height", 3: "width"}, "boxes": {0: "batch", 1: "anchors"},
                          "scores": {0: "batch", 1: "anchors"}},
        )  # fmt: skip
    return path


def write_images(
    folder: Path, n: int, *, seed: int = 0, sizes: tuple[tuple[int, int], ...] = ((180, 320),)
) -> list[Path]:
    """``n`` PNG street-like scenes (sky/road gradient, coloured boxes), sizes cycling through ``sizes``
    (height, width), in two subfolders; returns the files in sorted order."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    files = []
    for i in range(n):
        h, w = sizes[i % len(sizes)]
        y = np.linspace(0, 1, h)[:, None, None]
        sky, road = np.array([120, 160, 220]), np.array([70, 70, 75])
        base = (sky * (1 - y) + road * y) * np.ones((1, w, 1))
        im = Image.fromarray(np.clip(base + rng.normal(0, 6, (h, w, 3)), 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 6))):
            x0, y0 = int(rng.integers(0, w - 20)), int(rng.integers(h // 3, h - 20))
            x1, y1 = x0 + int(rng.integers(12, w // 3)), y0 + int(rng.integers(10, h // 3))
            draw.rectangle((x0, y0, x1, y1), fill=tuple(int(c) for c in rng.integers(0, 255, 3)))
        f = folder / ("a" if i % 2 else "b") / f"frame_{i:03d}.png"
        f.parent.mkdir(parents=True, exist_ok=True)
        im.save(f)
        files.append(f)
    return sorted(files, key=lambda p: p.as_posix())


#: the user's package: a colour classifier (torch module + factory) and a task with its own metric (top-1
#: accuracy from labels.csv), registered in the edgematrix.tasks entry-point group
USER_MODEL = '''
import torch
from torch import nn


class ColourNet(nn.Module):
    """Classifies the dominant colour of an image: conv features, global pooling, a linear head."""

    def __init__(self, classes: int = 3, width: int = 32) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, stride=1, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
            nn.Conv2d(2 * width, 4 * width, 3, stride=2, padding=1), nn.BatchNorm2d(4 * width), nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.cls = nn.Linear(4 * width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls(torch.flatten(self.pool(self.features(x)), 1))


def build(classes: int = 3, width: int = 32) -> nn.Module:
    return ColourNet(classes, width)
'''

USER_TASK = '''
import csv
from pathlib import Path

import numpy as np

from edgematrix.tasks.base import TaskScore
from edgematrix.tasks.outputs import OutputsTask


class ColourTask(OutputsTask):
    """Top-1 accuracy of the dominant colour, labels in labels.csv (file,label) beside the images."""

    name = "colour"
    metric = "top-1 colour accuracy"
    needs_reference = False
    output_names = ("logits",)

    def load_data(self, model_cfg, data_root, cache_dir):
        data = super().load_data(model_cfg, data_root, cache_dir)
        with (data.root / "labels.csv").open(newline="") as fh:
            labels = {row["file"]: int(row["label"]) for row in csv.DictReader(fh)}
        for split in (data.train, data.test):
            split.labels = [labels[f.relative_to(data.root).as_posix()] for f in split.files]
        return data

    def score(self, outputs, split, out_dir, role, *, model, reference=None):
        predicted = [int(np.argmax(o["logits"])) for o in outputs]
        correct = sum(p == y for p, y in zip(predicted, split.labels))
        if out_dir is not None:
            out = Path(out_dir) / f"predictions-{role}.csv"
            out.write_text("file,predicted\\n" + "".join(f"{f.name},{p}\\n" for f, p in zip(split.files, predicted)))
        else:
            out = None
        return TaskScore(100.0 * correct / len(outputs), {"correct": float(correct)}, out)
'''

USER_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"

[project]
name = "{dist}"
version = "0.1.0"

[project.entry-points."edgematrix.tasks"]
colour = "{package}.task:ColourTask"

[tool.setuptools]
packages = ["{package}"]
"""


def write_user_package(root: Path, package: str, dist: str) -> Path:
    """The user's package folder (pyproject, model.py, task.py): install it with :func:`pip_install`."""
    pkg = root / package
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "model.py").write_text(textwrap.dedent(USER_MODEL))
    (pkg / "task.py").write_text(textwrap.dedent(USER_TASK))
    (root / "pyproject.toml").write_text(USER_PYPROJECT.format(dist=dist, package=package))
    return root


def pip(*args: str) -> None:
    """pip of the interpreter running the tests (the test venv)."""
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise RuntimeError(
            f"pip {' '.join(args)} failed ({done.returncode}):\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
        )


COLOURS = np.array([[200, 40, 40], [40, 180, 60], [50, 70, 210]], np.float64)  # red, green, blue classes


def write_colour_images(folder: Path, n: int, *, seed: int = 0, size: int = 64) -> list[tuple[str, int]]:
    """``n`` images whose dominant colour (noise, a darker patch) is the label; labels.csv (file,label)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = i % len(COLOURS)
        img = COLOURS[label] + rng.normal(0, 25, (size, size, 3))
        y, x = rng.integers(0, size // 2, 2)
        img[y : y + size // 3, x : x + size // 3] *= 0.5
        name = f"img_{i:03d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
        rows.append((name, label))
    (folder / "labels.csv").write_text("file,label\n" + "".join(f"{f},{y}\n" for f, y in rows))
    return rows
