"""The lane model's anchor geometry and ONNX output names, without torch: the lane task adapter, which
loading a matrix imports, and the data targets use them where no torch is installed (a session that only
drives Docker). :mod:`edgematrix.models.ufld` builds the network on them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

OUTPUT_NAMES = ("loc_row", "loc_col", "exist_row", "exist_col")


@dataclass(frozen=True)
class LaneGeometry:
    """Anchors in the coordinates of the original image (TuSimple: 1280×720)."""

    image_width: int = 1280
    image_height: int = 720
    row_anchors: tuple[int, ...] = tuple(range(160, 720, 10))  # TuSimple h_samples
    num_col: int = 41
    num_cell_row: int = 100
    num_cell_col: int = 100
    num_lanes: int = 4
    col_y_min: float = field(default=160.0)

    @property
    def num_row(self) -> int:
        return len(self.row_anchors)

    @property
    def col_anchors(self) -> np.ndarray:
        """x positions of the column anchors, evenly spread over the image width."""
        return np.linspace(0, self.image_width - 1, self.num_col)

    def x_to_cell(self, x: np.ndarray) -> np.ndarray:
        return x / (self.image_width - 1) * (self.num_cell_row - 1)

    def cell_to_x(self, cell: np.ndarray) -> np.ndarray:
        return cell / (self.num_cell_row - 1) * (self.image_width - 1)

    def y_to_cell(self, y: np.ndarray) -> np.ndarray:
        span = self.image_height - 1 - self.col_y_min
        return (y - self.col_y_min) / span * (self.num_cell_col - 1)

    def cell_to_y(self, cell: np.ndarray) -> np.ndarray:
        span = self.image_height - 1 - self.col_y_min
        return cell / (self.num_cell_col - 1) * span + self.col_y_min
