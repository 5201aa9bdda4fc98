"""A folder of images as a model's input: listing, decoding, resizing (stretch, letterbox, crop) and the
declared normalisation (mean/std, channel order, layout), or seeded random pixels when there are no images.

Images are kept as uint8 RGB ``[N, 3, H, W]`` at the model's input size (the convention of every split in
edgematrix) and decoded when a slice is asked for (:class:`ImageStack`): a folder of thousands of
photographs costs no memory until a calibration or evaluation pass reads them. :func:`to_input` turns
those pixels into what the model takes.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import DataError


@dataclass(frozen=True)
class ImageSettings:
    """How an image becomes the model's input (``[models.X.images]``, plus the input's size)."""

    height: int  # the input's
    width: int
    size: tuple[int, int] | None = None  # resize target before the centre crop; None: (height, width)
    resize: str = "stretch"  # stretch | letterbox | crop
    pad_value: int = 114
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    std: tuple[float, float, float] = (255.0, 255.0, 255.0)
    channels: str = "rgb"  # rgb | bgr
    layout: str = "nchw"  # nchw | nhwc
    extensions: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

    def __post_init__(self) -> None:
        h, w = self.target
        if h < self.height or w < self.width:
            raise DataError(
                f"images.size [{h}, {w}] is smaller than the input's {self.height}×{self.width}: the image is "
                "resized to size, then centre-cropped to the input; give a size at least as large (or none)"
            )
        if self.resize not in ("stretch", "letterbox", "crop"):
            raise DataError(f"images.resize {self.resize!r} must be stretch, letterbox or crop")

    @property
    def target(self) -> tuple[int, int]:
        return self.size if self.size is not None else (self.height, self.width)

    def describe(self) -> str:
        h, w = self.target
        crop = f", centre crop {self.height}×{self.width}" if (h, w) != (self.height, self.width) else ""
        return (
            f"{self.resize} to {h}×{w}{crop}, {self.channels.upper()}, (pixel - {list(self.mean)}) / "
            f"{list(self.std)}, {self.layout.upper()}"
        )

    def key(self) -> dict[str, Any]:
        return {
            "input": [self.height, self.width], "size": list(self.target), "resize": self.resize,
            "pad": self.pad_value, "mean": list(self.mean), "std": list(self.std), "channels": self.channels,
            "layout": self.layout,
        }  # fmt: skip


def list_images(root: Path, extensions: Sequence[str]) -> list[Path]:
    """Every image file under ``root`` (subfolders included), sorted by relative path."""
    exts = {e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions}
    return sorted((p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in exts), key=lambda p: p.as_posix())


def fingerprint(root: Path, files: Sequence[Path]) -> str:
    """Content fingerprint of the images: each file's path relative to ``root`` and its SHA-256."""
    h = hashlib.sha256()
    for f in files:
        h.update(f.relative_to(root).as_posix().encode())
        h.update(hashlib.sha256(f.read_bytes()).digest())
    return h.hexdigest()[:16]


def _resized(image: Any, settings: ImageSettings) -> Any:
    from PIL import Image

    th, tw = settings.target
    w, h = image.size
    bilinear = Image.Resampling.BILINEAR
    if settings.resize == "stretch":
        out = image.resize((tw, th), bilinear)
    elif settings.resize == "letterbox":
        scale = min(tw / w, th / h)
        nw, nh = max(1, round(w * scale)), max(1, round(h * scale))
        out = Image.new("RGB", (tw, th), (settings.pad_value,) * 3)
        out.paste(image.resize((nw, nh), bilinear), ((tw - nw) // 2, (th - nh) // 2))
    else:  # crop: cover the target keeping the aspect ratio, then the centre
        scale = max(tw / w, th / h)
        nw, nh = max(tw, round(w * scale)), max(th, round(h * scale))
        left, top = (nw - tw) // 2, (nh - th) // 2
        out = image.resize((nw, nh), bilinear).crop((left, top, left + tw, top + th))
    left, top = (tw - settings.width) // 2, (th - settings.height) // 2
    if (left, top) != (0, 0) or (tw, th) != (settings.width, settings.height):
        out = out.crop((left, top, left + settings.width, top + settings.height))
    return out


def load_image(path: Path, settings: ImageSettings) -> np.ndarray:
    """``path`` decoded as RGB, resized and cropped to the input size: uint8 ``[3, H, W]``."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            rgb = im.convert("RGB")
    except (OSError, UnidentifiedImageError) as e:
        raise DataError(f"image {path} cannot be decoded ({type(e).__name__}: {e}); remove or replace it") from None
    return np.asarray(_resized(rgb, settings), dtype=np.uint8).transpose(2, 0, 1).copy()


@dataclass
class ImageStack:
    """Image files as a uint8 ``[N, 3, H, W]`` RGB array, decoded when sliced (``stack[i : i + 1]``)."""

    files: list[Path]
    settings: ImageSettings
    shape: tuple[int, int, int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.shape = (len(self.files), 3, self.settings.height, self.settings.width)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int | slice) -> np.ndarray:
        if not isinstance(index, slice):
            return load_image(self.files[index], self.settings)
        chosen = self.files[index]
        if not chosen:
            return np.empty((0, *self.shape[1:]), np.uint8)
        return np.stack([load_image(f, self.settings) for f in chosen])


def random_images(n: int, height: int, width: int, seed: int) -> np.ndarray:
    """``n`` seeded uniform-noise RGB images, uint8 ``[n, 3, height, width]``."""
    return np.random.default_rng([seed, 1729]).integers(0, 256, size=(n, 3, height, width), dtype=np.uint8)


def to_input(images: np.ndarray, settings: ImageSettings, dtype: np.dtype | type = np.float32) -> np.ndarray:
    """uint8 RGB ``[N, 3, H, W]`` (or ``[N, H, W, 3]``) → the model's input: channel order, then
    ``(pixel - mean) / std`` (a uint8 input takes the pixels as they are), then the layout."""
    x = np.asarray(images)
    if x.ndim != 4 or 3 not in (x.shape[1], x.shape[3]):
        raise DataError(f"images must be [N, 3, H, W] or [N, H, W, 3]; got {list(x.shape)}")
    if x.shape[1] != 3:
        x = x.transpose(0, 3, 1, 2)
    if settings.channels == "bgr":
        x = x[:, ::-1]
    if np.dtype(dtype) != np.uint8:
        mean = np.asarray(settings.mean, np.float32)[None, :, None, None]
        std = np.asarray(settings.std, np.float32)[None, :, None, None]
        x = (x.astype(np.float32) - mean) / std
    if settings.layout == "nhwc":
        x = x.transpose(0, 2, 3, 1)
    return np.ascontiguousarray(x, dtype=dtype)
