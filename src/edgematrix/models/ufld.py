"""UFLD-v2-style lane detector: ResNet backbone + row/column-anchor classification head.

Outputs (names are the ONNX output names):

- ``loc_row``  [B, num_cell_row, num_row, num_lanes]: logits over horizontal cells per row anchor
- ``loc_col``  [B, num_cell_col, num_col, num_lanes]: logits over vertical cells per column anchor
- ``exist_row`` [B, 2, num_row, num_lanes]: lane present at this row anchor
- ``exist_col`` [B, 2, num_col, num_lanes]

as in Ultra-Fast-Lane-Detection-v2 (Qin et al., TPAMI 2022). The anchor geometry lives in
:class:`LaneGeometry` so that the data targets, the decoder and the model agree by construction.
"""

from __future__ import annotations

import torch
from torch import nn

from edgematrix.models.lane_geometry import OUTPUT_NAMES, LaneGeometry
from edgematrix.models.resnet import ResNet

__all__ = ["OUTPUT_NAMES", "LaneGeometry", "UFLDv2"]


class UFLDv2(nn.Module):
    def __init__(
        self,
        input_size: tuple[int, int] = (288, 800),
        geometry: LaneGeometry | None = None,
        depth: int = 18,
        width: int = 64,
        mlp_mid_dim: int = 2048,
        pool_channels: int = 8,
        use_aux: bool = False,
    ) -> None:
        super().__init__()
        self.geometry = geometry or LaneGeometry()
        self.input_size = tuple(input_size)
        g = self.geometry
        h, w = input_size
        if h % 32 or w % 32:
            raise ValueError(f"input size {input_size} must be divisible by 32 (output stride)")
        self.dims = (
            g.num_cell_row * g.num_row * g.num_lanes,
            g.num_cell_col * g.num_col * g.num_lanes,
            2 * g.num_row * g.num_lanes,
            2 * g.num_col * g.num_lanes,
        )
        self.backbone = ResNet(depth=depth, width=width)
        self.pool = nn.Conv2d(self.backbone.out_channels, pool_channels, 1)
        in_dim = pool_channels * (h // 32) * (w // 32)
        self.cls = nn.Sequential(
            nn.Linear(in_dim, mlp_mid_dim), nn.ReLU(inplace=True), nn.Linear(mlp_mid_dim, sum(self.dims))
        )
        # UFLD's auxiliary segmentation branch: dense lane masks at stride 8 from three stages.
        # Training only (dense supervision makes the backbone learn far faster); eval and export
        # never run it, so the deployed graph is exactly the four anchor outputs.
        self.use_aux = use_aux
        if use_aux:
            mid = max(8, width)

            def cbr(cin: int, cout: int) -> nn.Sequential:
                return nn.Sequential(
                    nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(True)
                )

            self.aux = nn.ModuleList(cbr(c, mid) for c in self.backbone.stage_channels)
            self.aux_head = nn.Sequential(cbr(3 * mid, mid), nn.Conv2d(mid, g.num_lanes + 1, 1))

    @property
    def aux_size(self) -> tuple[int, int]:
        """(H, W) of the auxiliary segmentation output: the input at stride 8."""
        return self.input_size[0] // 8, self.input_size[1] // 8

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        g = self.geometry
        x2, x3, x4 = self.backbone.forward_stages(x)
        feat = self.pool(x4).flatten(1)
        out = self.cls(feat)
        d1, d2, d3, _ = self.dims
        b = out.shape[0]
        loc_row = out[:, :d1].reshape(b, g.num_cell_row, g.num_row, g.num_lanes)
        loc_col = out[:, d1 : d1 + d2].reshape(b, g.num_cell_col, g.num_col, g.num_lanes)
        exist_row = out[:, d1 + d2 : d1 + d2 + d3].reshape(b, 2, g.num_row, g.num_lanes)
        exist_col = out[:, d1 + d2 + d3 :].reshape(b, 2, g.num_col, g.num_lanes)
        if self.use_aux and self.training:
            size = x2.shape[-2:]
            feats = [
                nn.functional.interpolate(m(f), size=size, mode="bilinear", align_corners=False) if i else m(f)
                for i, (m, f) in enumerate(zip(self.aux, (x2, x3, x4), strict=True))
            ]
            seg = self.aux_head(torch.cat(feats, 1))
            return loc_row, loc_col, exist_row, exist_col, seg
        return loc_row, loc_col, exist_row, exist_col
