"""A small single-shot detector for the edge: SSD-lite style (depthwise-separable head convolutions), with
an anchor-free, FCOS-style head (one prediction per feature-map cell, boxes as distances to its sides).

Layout (``width`` scales the backbone's channels, ``neck_channels`` the neck and head):

- backbone: ten plain 3×3 convolutions (BatchNorm + ReLU), five of stride 2; C3, C4, C5 at strides 8, 16, 32
- neck: FPN-lite: 1×1 laterals, nearest 2× upsampling, top-down sums, a 3×3 smoothing convolution per level
- head, shared by the three levels: a classification and a box tower of ``head_depth`` depthwise-separable
  3×3 blocks each, then a 3×3 convolution to ``num_classes`` logits / 4 box values

Outputs (the ONNX output names are :data:`OUTPUT_NAMES`), levels concatenated stride 8 first, cells row-major:

- ``scores`` ``[N, A, num_classes]``: per-class logits (sigmoid; no background class)
- ``boxes`` ``[N, A, 4]``: ``log(d / stride)`` of the distances ``d`` from the cell centre to the box's left,
  top, right and bottom sides (decode: :func:`edgematrix.models.detection_task.decode_boxes`)

Decoding, score threshold and NMS run on the host (numpy), so the exported graph is plain convolutions,
Resize, Add, Transpose/Reshape and Concat: it quantizes to INT8 and runs on every backend.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

OUTPUT_NAMES = ("scores", "boxes")
STRIDES = (8, 16, 32)
BACKBONE_CHANNELS = (16, 32, 64, 128, 192)  # stem, then stages at strides 4, 8, 16, 32


@dataclass(frozen=True)
class DetectorGeometry:
    """Where the predictions sit: input size, strides, classes; the anchor points follow from it."""

    input_height: int
    input_width: int
    strides: tuple[int, ...] = STRIDES
    num_classes: int = 4

    def level_sizes(self) -> list[tuple[int, int]]:
        return [(self.input_height // s, self.input_width // s) for s in self.strides]

    @property
    def num_anchors(self) -> int:
        return sum(h * w for h, w in self.level_sizes())

    def points(self) -> tuple[np.ndarray, np.ndarray]:
        """Cell centres ``[A, 2]`` (x, y in input pixels) and each one's stride ``[A]``, in output order."""
        pts, strides = [], []
        for s, (h, w) in zip(self.strides, self.level_sizes(), strict=True):
            ys, xs = np.meshgrid(np.arange(h, dtype=np.float32), np.arange(w, dtype=np.float32), indexing="ij")
            pts.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
            strides.append(np.full(h * w, s, np.float32))
        return np.concatenate(pts), np.concatenate(strides)


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


def _separable(c: int) -> nn.Sequential:
    """Depthwise 3×3 + pointwise 1×1 (SSDLite's head block), BatchNorm + ReLU after each."""
    return nn.Sequential(
        nn.Conv2d(c, c, 3, 1, 1, groups=c, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
        nn.Conv2d(c, c, 1, bias=False),
        nn.BatchNorm2d(c),
        nn.ReLU(inplace=True),
    )


class Detector(nn.Module):
    """``(N, 3, H, W)`` normalised RGB → ``(scores [N, A, C], boxes [N, A, 4])``; see the module docstring."""

    def __init__(
        self,
        input_size: tuple[int, int] = (192, 320),
        num_classes: int = 4,
        width: float = 1.0,
        neck_channels: int = 64,
        head_depth: int = 2,
        prior: float = 0.01,
        class_names: str = "",
    ) -> None:
        super().__init__()
        h, w = input_size
        if h % 32 or w % 32 or h < 32 or w < 32:
            raise ValueError(f"input size {h}x{w} must be positive multiples of 32 (the coarsest stride)")
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if width <= 0 or neck_channels < 1 or head_depth < 0:
            raise ValueError(
                f"width must be > 0, neck_channels >= 1, head_depth >= 0; got {width}, {neck_channels}, {head_depth}"
            )
        if not 0 < prior < 1:
            raise ValueError(f"prior (initial foreground probability) must be in (0, 1), got {prior}")
        names = tuple(n.strip() for n in class_names.split(",")) if class_names else ()
        if names and len(names) != num_classes:
            raise ValueError(f"class_names lists {len(names)} names ({class_names!r}) for num_classes = {num_classes}")
        self.class_names = names  # for drawings; empty: class indices are shown
        self.geometry = DetectorGeometry(h, w, STRIDES, num_classes)
        c = [max(4, round(ch * width)) for ch in BACKBONE_CHANNELS]
        self.stem = _conv(3, c[0], 2)
        self.stage1 = nn.Sequential(_conv(c[0], c[1], 2), _conv(c[1], c[1]))
        self.stage2 = nn.Sequential(_conv(c[1], c[2], 2), _conv(c[2], c[2]))  # C3, stride 8
        self.stage3 = nn.Sequential(_conv(c[2], c[3], 2), _conv(c[3], c[3]))  # C4, stride 16
        self.stage4 = nn.Sequential(_conv(c[3], c[4], 2), _conv(c[4], c[4]))  # C5, stride 32
        f = neck_channels
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(ci, f, 1, bias=False), nn.BatchNorm2d(f)) for ci in (c[2], c[3], c[4])
        )
        self.smooth = nn.ModuleList(_conv(f, f) for _ in STRIDES)
        self.cls_tower = nn.Sequential(*[_separable(f) for _ in range(head_depth)])
        self.box_tower = nn.Sequential(*[_separable(f) for _ in range(head_depth)])
        self.cls_out = nn.Conv2d(f, num_classes, 3, 1, 1)
        self.box_out = nn.Conv2d(f, 4, 3, 1, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.cls_out.weight, std=0.01)
        assert self.cls_out.bias is not None and self.box_out.bias is not None
        nn.init.constant_(self.cls_out.bias, -float(np.log((1 - prior) / prior)))  # focal loss's prior
        nn.init.normal_(self.box_out.weight, std=0.01)
        nn.init.constant_(self.box_out.bias, float(np.log(2.0)))  # initial boxes: 2 strides to each side

    def features(self, x: torch.Tensor) -> list[torch.Tensor]:
        c3 = self.stage2(self.stage1(self.stem(x)))
        c4 = self.stage3(c3)
        c5 = self.stage4(c4)
        p5 = self.lateral[2](c5)
        p4 = self.lateral[1](c4) + F.interpolate(p5, scale_factor=2.0, mode="nearest")
        p3 = self.lateral[0](c3) + F.interpolate(p4, scale_factor=2.0, mode="nearest")
        return [self.smooth[i](p) for i, p in enumerate((p3, p4, p5))]

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        n = x.shape[0]
        scores, boxes = [], []
        for p in self.features(x):
            s = self.cls_out(self.cls_tower(p))
            b = self.box_out(self.box_tower(p))
            scores.append(s.permute(0, 2, 3, 1).reshape(n, -1, s.shape[1]))
            boxes.append(b.permute(0, 2, 3, 1).reshape(n, -1, 4))
        return torch.cat(scores, 1), torch.cat(boxes, 1)
