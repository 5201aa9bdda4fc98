"""Scene-parsing data for multi-task models: images with per-pixel class masks and depth maps.

On-disk format (one folder per split, files paired by stem)::

    <root>/classes.json                 {"names": ["road", ...], "palette": [[128, 64, 128], ...]}
    <root>/{train,val}/images/<stem>.png|.jpg   RGB
    <root>/{train,val}/masks/<stem>.png         uint8 class ids, 255 = ignore (Cityscapes trainIds)
    <root>/{train,val}/depth/<stem>.png         uint16, metres × 256, 0 = no measurement (KITTI depth)

Masks and depth maps have the image's size. ``depth/`` may be absent from a split (a segmentation-only
dataset such as Cityscapes without disparity): its depth is then all "no measurement" and depth
metrics are not reported. :func:`load_split` returns a split at the model's input size: images
bilinear-resized, masks and depth nearest-resized (a depth value is never blended with a missing
one, so ``depth > 0`` stays the valid mask).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from edgematrix.errors import DataError

IGNORE_INDEX = 255
DEPTH_SCALE = 256.0  # KITTI: uint16 value = metres × 256
MAX_DEPTH_VALUE = 65535 / DEPTH_SCALE
SPLITS = ("train", "val")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
LAYOUT = (
    "<root>/classes.json, <root>/{train,val}/images/*.png|jpg, <root>/{train,val}/masks/*.png (uint8 class ids, "
    "255 = ignore), optional <root>/{train,val}/depth/*.png (uint16 metres x 256, 0 = none)"
)


@dataclass(frozen=True)
class ClassInfo:
    names: tuple[str, ...]
    palette: tuple[tuple[int, ...], ...]  # one [r, g, b] per class

    def __post_init__(self) -> None:
        if not self.names:
            raise DataError("classes.json lists no classes; give at least one name")
        if len(self.names) != len(self.palette):
            raise DataError(f"classes.json has {len(self.names)} names but {len(self.palette)} palette colours")
        if len(self.names) >= IGNORE_INDEX:
            raise DataError(f"classes.json lists {len(self.names)} classes; at most {IGNORE_INDEX} fit uint8 masks")
        if len(set(self.names)) != len(self.names):
            raise DataError(f"classes.json repeats a class name: {list(self.names)}")
        for c in self.palette:
            if len(c) != 3 or any(not 0 <= v <= 255 for v in c):
                raise DataError(f"classes.json palette colour {list(c)} is not [r, g, b] in 0..255")

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def to_json(self) -> dict[str, list]:
        return {"names": list(self.names), "palette": [list(c) for c in self.palette]}


def read_classes(root: Path) -> ClassInfo:
    path = Path(root) / "classes.json"
    if not path.is_file():
        raise DataError(f"{path} not found; a scenes dataset needs it. Expected layout: {LAYOUT}")
    try:
        raw = json.loads(path.read_text())
        return ClassInfo(tuple(str(n) for n in raw["names"]), tuple(tuple(int(v) for v in c) for c in raw["palette"]))
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise DataError(
            f"{path} is not valid ({type(e).__name__}: {e}); expected "
            '{"names": ["road", ...], "palette": [[128, 64, 128], ...]}'
        ) from None


def write_classes(root: Path, classes: ClassInfo) -> None:
    Path(root).mkdir(parents=True, exist_ok=True)
    (Path(root) / "classes.json").write_text(json.dumps(classes.to_json(), indent=1))


def encode_depth(depth_m: np.ndarray) -> np.ndarray:
    """Metres (float, 0 or NaN = none) -> KITTI uint16 (metres × 256, rounded)."""
    d = np.nan_to_num(np.asarray(depth_m, np.float64), nan=0.0)
    if d.min(initial=0.0) < 0 or d.max(initial=0.0) > MAX_DEPTH_VALUE:
        raise DataError(f"depth must be in [0, {MAX_DEPTH_VALUE:.1f}] m to fit uint16 × 256; got {d.min()}..{d.max()}")
    return np.rint(d * DEPTH_SCALE).astype(np.uint16)


def decode_depth(raw: np.ndarray) -> np.ndarray:
    """KITTI uint16 -> float32 metres (0 = no measurement)."""
    return (np.asarray(raw).astype(np.float32) / np.float32(DEPTH_SCALE)).astype(np.float32)


def write_sample(
    root: Path,
    split: str,
    stem: str,
    image: np.ndarray | Image.Image,
    mask: np.ndarray,
    depth_m: np.ndarray | None,
    *,
    image_format: str = "jpg",
    quality: int = 92,
) -> None:
    """Write one sample of ``split`` (image, uint8 mask, depth in metres or ``None``) in the format above."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {SPLITS}")
    if image_format not in ("jpg", "png"):
        raise DataError(f"image_format {image_format!r}: use 'jpg' or 'png'")
    pil = image if isinstance(image, Image.Image) else Image.fromarray(np.asarray(image, np.uint8))
    mask = np.asarray(mask)
    if mask.dtype != np.uint8 or mask.shape != (pil.height, pil.width):
        raise DataError(f"mask must be uint8 [{pil.height}, {pil.width}]; got {mask.dtype} {mask.shape}")
    base = Path(root) / split
    for sub in ("images", "masks") + (("depth",) if depth_m is not None else ()):
        (base / sub).mkdir(parents=True, exist_ok=True)
    if image_format == "jpg":
        pil.convert("RGB").save(base / "images" / f"{stem}.jpg", quality=quality)
    else:
        pil.convert("RGB").save(base / "images" / f"{stem}.png")
    Image.fromarray(mask).save(base / "masks" / f"{stem}.png")
    if depth_m is not None:
        d = np.asarray(depth_m)
        if d.shape != mask.shape:
            raise DataError(f"depth shape {d.shape} differs from the mask shape {mask.shape}")
        Image.fromarray(encode_depth(d)).save(base / "depth" / f"{stem}.png")


@dataclass
class ScenesSplit:
    """One split at the model's input size."""

    root: Path
    split: str
    files: list[str]  # image paths relative to root, e.g. "val/images/00012.jpg"
    images: np.ndarray  # uint8 [N, 3, H, W]
    masks: np.ndarray  # uint8 [N, H, W], 255 = ignore
    depth: np.ndarray  # float32 [N, H, W] metres, 0 = no measurement
    classes: ClassInfo
    has_depth: bool

    def __len__(self) -> int:
        return len(self.files)

    @property
    def valid(self) -> np.ndarray:
        return self.depth > 0

    def subset(self, index: slice) -> ScenesSplit:
        """The samples ``index`` selects (e.g. ``split.subset(slice(-32, None))``), as a split of their own."""
        return ScenesSplit(
            self.root,
            self.split,
            self.files[index],
            self.images[index],
            self.masks[index],
            self.depth[index],
            self.classes,
            self.has_depth,
        )


def list_split(root: Path, split: str) -> list[tuple[Path, Path, Path | None]]:
    """(image, mask, depth-or-None) paths of ``split``, sorted by stem; validates the pairing."""
    root = Path(root)
    base = root / split
    img_dir, mask_dir, depth_dir = base / "images", base / "masks", base / "depth"
    for d in (img_dir, mask_dir):
        if not d.is_dir():
            raise DataError(f"{d} not found; a scenes dataset is laid out as {LAYOUT}")
    images = {p.stem: p for p in img_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES}
    if not images:
        raise DataError(f"{img_dir} holds no .png/.jpg images")
    masks = {p.stem: p for p in mask_dir.iterdir() if p.suffix.lower() == ".png"}
    missing = sorted(set(images) - set(masks))
    if missing:
        raise DataError(
            f"{len(missing)} image(s) of {base} have no mask in {mask_dir} (e.g. {missing[0]}.png); "
            "every image needs masks/<stem>.png"
        )
    depths: dict[str, Path] = {}
    if depth_dir.is_dir():
        depths = {p.stem: p for p in depth_dir.iterdir() if p.suffix.lower() == ".png"}
        missing = sorted(set(images) - set(depths))
        if missing:
            raise DataError(
                f"{len(missing)} image(s) of {base} have no depth map in {depth_dir} (e.g. {missing[0]}.png); "
                "give every image depth/<stem>.png or remove the depth/ folder"
            )
    return [(images[s], masks[s], depths.get(s)) for s in sorted(images)]


def _read_mask(path: Path, size_hw: tuple[int, int], num_classes: int) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("L", "P"):
            raise DataError(f"mask {path} has mode {im.mode}; masks are 8-bit single-channel PNGs of class ids")
        arr = np.asarray(im, dtype=np.uint8)
    if arr.shape != size_hw:
        raise DataError(f"mask {path} is {arr.shape[1]}x{arr.shape[0]}, its image {size_hw[1]}x{size_hw[0]}")
    bad = (arr >= num_classes) & (arr != IGNORE_INDEX)
    if bad.any():
        raise DataError(
            f"mask {path} holds class id {int(arr[bad].max())}; classes.json lists {num_classes} classes "
            f"(ids 0..{num_classes - 1}, {IGNORE_INDEX} = ignore). Map the ids (e.g. Cityscapes labelIds to trainIds)."
        )
    return arr


def _read_depth(path: Path, size_hw: tuple[int, int]) -> np.ndarray:
    with Image.open(path) as im:
        if im.mode not in ("I;16", "I;16B", "I"):
            raise DataError(
                f"depth map {path} has mode {im.mode}; depth maps are 16-bit PNGs (uint16 metres x 256, KITTI)"
            )
        arr = np.asarray(im)
    if arr.shape != size_hw:
        raise DataError(f"depth map {path} is {arr.shape[1]}x{arr.shape[0]}, its image {size_hw[1]}x{size_hw[0]}")
    if arr.min() < 0 or arr.max() > 65535:
        raise DataError(f"depth map {path} holds values outside uint16")
    return decode_depth(arr)


def load_split(root: Path, split: str, size: tuple[int, int], limit: int = 0) -> ScenesSplit:
    """``split`` of the dataset at ``root`` resized to ``size`` = (H, W); ``limit`` > 0 keeps the first n."""
    if split not in SPLITS:
        raise DataError(f"split {split!r} is not one of {SPLITS}")
    root = Path(root)
    classes = read_classes(root)
    entries = list_split(root, split)
    if limit:
        entries = entries[:limit]
    has_depth = entries[0][2] is not None
    h, w = size
    n = len(entries)
    images = np.empty((n, h, w, 3), np.uint8)
    masks = np.empty((n, h, w), np.uint8)
    depth = np.zeros((n, h, w), np.float32)
    for i, (ip, mp, dp) in enumerate(entries):
        try:
            with Image.open(ip) as im:
                rgb = im.convert("RGB")
        except OSError as e:
            raise DataError(f"image {ip} cannot be read ({e}); the file is corrupt or not an image") from None
        size_hw = (rgb.height, rgb.width)
        images[i] = np.asarray(rgb.resize((w, h), Image.Resampling.BILINEAR))
        masks[i] = np.asarray(
            Image.fromarray(_read_mask(mp, size_hw, classes.num_classes)).resize((w, h), Image.Resampling.NEAREST)
        )
        if dp is not None:
            d = _read_depth(dp, size_hw)
            depth[i] = np.asarray(Image.fromarray(d).resize((w, h), Image.Resampling.NEAREST))
    files = [ip.relative_to(root).as_posix() for ip, _, _ in entries]
    return ScenesSplit(
        root, split, files, np.ascontiguousarray(images.transpose(0, 3, 1, 2)), masks, depth, classes, has_depth
    )


def fingerprint(root: Path) -> str:
    """Content hash of a dataset: classes.json plus every file's split-relative name and size."""
    root = Path(root)
    h = hashlib.sha256()
    h.update((root / "classes.json").read_bytes() if (root / "classes.json").is_file() else b"")
    synthetic = root / "synthetic.json"
    if synthetic.is_file():
        h.update(synthetic.read_bytes())
    for split in SPLITS:
        for sub in ("images", "masks", "depth"):
            d = root / split / sub
            if d.is_dir():
                for p in sorted(d.iterdir()):
                    h.update(f"{split}/{sub}/{p.name}:{p.stat().st_size}".encode())
    return h.hexdigest()[:16]


def colorize(mask: np.ndarray, palette: Sequence[Sequence[int]]) -> np.ndarray:
    """uint8 [H, W] class ids -> uint8 [H, W, 3] colours (ignore / unknown ids black)."""
    lut = np.zeros((256, 3), np.uint8)
    lut[: len(palette)] = np.asarray(palette, np.uint8)
    return lut[np.asarray(mask, np.uint8)]
