"""Tiny multi-head torch models exported to ONNX, shared by the split tests (``from split_models import ...``).

- ``one_feature``: conv trunk → one feature map → a segmentation head and a depth head.
- ``two_features``: a trunk with two feature maps (full and half resolution); the segmentation
  head reads both (U-Net style skip), the depth head only the deeper one.

Each model is exported once per test process (dynamo exporter, simplified), into a temporary folder.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INPUT_SHAPE = (1, 3, 32, 32)
OUTPUTS = ("seg", "depth")


@dataclass(frozen=True)
class Exported:
    path: Path
    trunk_output: str  # the ONNX name of the (deepest) trunk tensor the heads share


_CACHE: dict[str, Exported] = {}
_DIR = Path(tempfile.mkdtemp(prefix="edgematrix-split-models-"))
atexit.register(shutil.rmtree, _DIR, ignore_errors=True)


def _build(kind: str):  # type: ignore[no-untyped-def]
    import torch
    from torch import nn

    torch.manual_seed(0)

    class OneFeature(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.trunk = nn.Sequential(
                nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU()
            )
            self.seg = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 1))
            self.depth = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            f = self.trunk(x)
            return self.seg(f), self.depth(f)

    class TwoFeatures(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU())
            self.down = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.ReLU())
            self.seg_deep = nn.Conv2d(16, 8, 3, padding=1)
            self.seg_up = nn.Upsample(scale_factor=2, mode="nearest")
            self.seg_out = nn.Conv2d(8, 4, 1)
            self.depth = nn.Sequential(nn.Conv2d(16, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 1, 1), nn.Sigmoid())

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            a = self.stem(x)
            b = self.down(a)
            seg = self.seg_out(torch.relu(self.seg_up(self.seg_deep(b)) + a))
            return seg, self.depth(b)

    return {"one_feature": OneFeature, "two_features": TwoFeatures}[kind]().eval()


def exported(kind: str) -> Exported:
    """The ONNX export of model ``kind`` (``one_feature`` | ``two_features``), made once per process."""
    if kind not in _CACHE:
        import onnx

        from edgematrix.export.onnx_export import export_onnx

        path = _DIR / f"{kind}.onnx"
        export_onnx(_build(kind), INPUT_SHAPE, path, output_names=OUTPUTS)
        model = onnx.load(str(path))
        consumers: dict[str, set[str]] = {}
        for node in model.graph.node:
            for name in node.input:
                consumers.setdefault(name, set()).add(node.op_type)
        # the deepest trunk tensor: the last Relu output that feeds two Convs (one per head)
        relu_outputs = [n.output[0] for n in model.graph.node if n.op_type == "Relu"]
        shared = [
            t for t in relu_outputs if sum(1 for n in model.graph.node if t in n.input and n.op_type == "Conv") >= 2
        ]
        _CACHE[kind] = Exported(path=path, trunk_output=shared[-1])
    return _CACHE[kind]


def frames(n: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"input": rng.standard_normal(INPUT_SHAPE, dtype=np.float32)} for _ in range(n)]


def whole_outputs(path: Path, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return dict(zip(OUTPUTS, session.run(list(OUTPUTS), feed), strict=True))
