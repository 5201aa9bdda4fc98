"""A small multi-task network: one shared CNN encoder, a segmentation head and a depth head.

The layout of NVIDIA's multi-task GPU+DLA sample (DL4AGX ``mtmi``: a shared encoder whose features
feed a segmentation decoder and a depth decoder, each head a separate subgraph), at a size that
trains on a CPU in minutes. Export-friendly: only Conv / BatchNorm (folded on export) / ReLU /
bilinear Resize / Add / Sigmoid / Mul, all opset 17 and INT8-quantizable.

- ``encoder``: stem (stride 2) and three stages of two 3×3 convolutions (strides 4, 8, 16), then an
  FPN-style top-down fusion back to stride 4 → one feature map ``features`` [N, F, H/4, W/4]. It is
  the encoder's only output (:attr:`MultiTaskNet.ENCODER_OUTPUTS`), and the heads consume nothing else,
  so the exported graph cuts cleanly into an encoder subgraph and one subgraph per head.
- ``heads["seg"]``: 3×3 conv + 1×1 classifier, bilinear ×4 → logits ``seg`` [N, C, H, W]
- ``heads["depth"]``: 3×3 conv + 1×1 conv, bilinear ×4, ``max_depth · sigmoid`` → ``depth`` [N, 1, H, W]
  in metres, in (0, max_depth)

The input is the ImageNet-normalised RGB image (:func:`edgematrix.tasks.base.imagenet_preprocess`).
At 192×384 with the default widths: 295,512 parameters, 0.53 GMAC per frame (encoder 0.36, each head 0.09;
counted with torch.utils.flop_counter).
"""

from __future__ import annotations

from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

STAGE_CHANNELS = (16, 32, 64, 96)


def _cbr(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, k // 2, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True)
    )


def _up(x: torch.Tensor, factor: int) -> torch.Tensor:
    return F.interpolate(x, scale_factor=float(factor), mode="bilinear", align_corners=False)


class Encoder(nn.Module):
    """Image → ``features`` [N, F, H/4, W/4]."""

    def __init__(self, channels: tuple[int, int, int, int], features: int) -> None:
        super().__init__()
        c1, c2, c3, c4 = channels
        self.stem = _cbr(3, c1, 3, 2)
        self.stage4 = nn.Sequential(_cbr(c1, c2, 3, 2), _cbr(c2, c2))
        self.stage8 = nn.Sequential(_cbr(c2, c3, 3, 2), _cbr(c3, c3))
        self.stage16 = nn.Sequential(_cbr(c3, c4, 3, 2), _cbr(c4, c4))
        self.lat4 = _cbr(c2, features, 1)
        self.lat8 = _cbr(c3, features, 1)
        self.lat16 = _cbr(c4, features, 1)
        self.fuse = _cbr(features, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s4 = self.stage4(self.stem(x))
        s8 = self.stage8(s4)
        s16 = self.stage16(s8)
        p8 = self.lat8(s8) + _up(self.lat16(s16), 2)
        p4 = self.lat4(s4) + _up(p8, 2)
        return self.fuse(p4)


class SegHead(nn.Module):
    """``features`` → class logits at the input resolution."""

    def __init__(self, features: int, hidden: int, num_classes: int) -> None:
        super().__init__()
        self.conv = _cbr(features, hidden)
        self.cls = nn.Conv2d(hidden, num_classes, 1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return _up(self.cls(self.conv(f)), 4)


class DepthHead(nn.Module):
    """``features`` → depth in metres at the input resolution, in (0, max_depth)."""

    def __init__(self, features: int, hidden: int, max_depth: float) -> None:
        super().__init__()
        self.conv = _cbr(features, hidden)
        self.out = nn.Conv2d(hidden, 1, 1)
        self.max_depth = float(max_depth)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(_up(self.out(self.conv(f)), 4)) * self.max_depth


class MultiTaskNet(nn.Module):
    """Shared encoder + segmentation and depth heads: ``(N, 3, H, W)`` → ``(seg, depth)``."""

    #: names of the encoder's output tensors (the split's cut) and of the heads' outputs, in order
    ENCODER_OUTPUTS: ClassVar[tuple[str, ...]] = ("features",)
    OUTPUT_NAMES: ClassVar[tuple[str, ...]] = ("seg", "depth")
    STRIDE: ClassVar[int] = 16  # H and W must be multiples of it

    def __init__(
        self,
        input_size: tuple[int, int] = (192, 384),
        num_classes: int = 7,
        width: float = 1.0,
        features: int = 64,
        head_channels: int = 32,
        max_depth: float = 80.0,
        depth_weight: float = 1.0,
        class_balance: bool = True,
    ) -> None:
        super().__init__()
        h, w = input_size
        if h % self.STRIDE or w % self.STRIDE:
            raise ValueError(f"input height and width must be multiples of {self.STRIDE}; got {h}x{w}")
        if num_classes < 2:
            raise ValueError(f"num_classes must be >= 2, got {num_classes}")
        if width <= 0 or features < 1 or head_channels < 1:
            raise ValueError(
                f"width, features and head_channels must be positive; got {width}, {features}, {head_channels}"
            )
        if max_depth <= 0 or depth_weight < 0:
            raise ValueError(f"max_depth must be > 0 and depth_weight >= 0; got {max_depth}, {depth_weight}")
        chans = tuple(max(4, round(c * width)) for c in STAGE_CHANNELS)
        self.input_size = (h, w)
        self.num_classes = num_classes
        self.max_depth = float(max_depth)
        # training settings carried by the model (read by edgematrix.train.multitask): weight of the depth
        # loss vs the segmentation loss, and whether the cross-entropy weighs classes by 1/sqrt(frequency)
        self.depth_weight = float(depth_weight)
        self.class_balance = bool(class_balance)
        self.encoder = Encoder(chans, features)  # type: ignore[arg-type]
        self.heads = nn.ModuleDict(
            {
                "seg": SegHead(features, head_channels, num_classes),
                "depth": DepthHead(features, head_channels, max_depth),
            }
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.encoder(x)
        return self.heads["seg"](f), self.heads["depth"](f)
