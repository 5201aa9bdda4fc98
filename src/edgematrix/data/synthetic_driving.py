"""Driving frames with steering labels, in the Udacity simulator's ``driving_log.csv`` layout.

The format (what the Udacity self-driving-car simulator records and the behavioural-cloning
datasets built on it use)::

    <root>/driving_log.csv      center,left,right,steering,throttle,brake,speed
    <root>/IMG/center_*.jpg     one 320×160 camera frame per row

``steering`` is the normalised steering command in [-1, 1] (the simulator maps ±25° to ±1). The
simulator writes no header and absolute image paths; Udacity's published sample has a header and
paths relative to the root (``IMG/center_2016_12_01_13_30_48_287.jpg``). :func:`read_driving_log`
reads both: a header is detected, and a path that does not exist as written is looked up as
``<root>/IMG/<file name>`` (Windows paths included). A dataset folder holds either one log (the
last ``test_fraction`` of its rows, in recording order, is the test split: neighbouring frames
are near-duplicates, a random split would leak) or ``train/`` and ``test/`` folders, each with
its own log.

:func:`generate` writes synthetic frames in that layout (``train/`` + ``test/``, header, relative
paths, ``left``/``right`` empty: only the centre camera is rendered). A pinhole camera 1.4 m above
a two-lane road looks ahead; the ego lane's centre line in the car's frame is
``x(z) = -offset + heading*z + curvature*z²/2``. The label is pure pursuit on that line at a
look-ahead of :data:`LOOKAHEAD_M`: ``steering = atan(2·L_wb·x(L)/L²) / 25°``, clipped to [-1, 1]
(:func:`steering_label`), so it is a known function of curvature, heading and offset. Each frame
varies lane width, marking style, road and verge texture, sky, lighting, tree shadows and noise,
and is a function of ``(seed, split, index)`` only.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path, PureWindowsPath

import numpy as np
from PIL import Image

from edgematrix.core.cache import reuse_generated, seal_generated
from edgematrix.data import roots
from edgematrix.errors import DataError

GENERATOR_VERSION = 1
WIDTH, HEIGHT = 320, 160  # the Udacity simulator's camera frame
FOCAL = 150.0  # pixels
CAM_HEIGHT = 1.4  # metres
WHEELBASE_M = 2.7
LOOKAHEAD_M = 8.0
MAX_STEER_DEG = 25.0  # the simulator's full-scale steering angle
LOG_NAME = "driving_log.csv"
COLUMNS = ("center", "left", "right", "steering", "throttle", "brake", "speed")
#: rows cropped before resizing to the model input: sky above the road and the car's bonnet
DEFAULT_CROP = (60, 25)


@dataclass(frozen=True)
class DrivingSynthConfig:
    train: int = 3000
    test: int = 600
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Scene:
    """The car's pose on the road: ``offset`` (m, right of lane centre), ``heading`` (rad, road vs car), ``curvature`` (1/m)."""

    offset: float
    heading: float
    curvature: float
    lane_width: float = 3.6

    def centre_x(self, z: np.ndarray | float) -> np.ndarray | float:
        """Lateral position (m, right positive) of the ego lane centre at distance ``z`` ahead."""
        return -self.offset + self.heading * z + 0.5 * self.curvature * np.square(z)


def steering_label(scene: Scene) -> float:
    """Pure pursuit on the lane centre at :data:`LOOKAHEAD_M`, normalised to [-1, 1] (±25°)."""
    x = float(scene.centre_x(LOOKAHEAD_M))
    delta = math.degrees(math.atan(2.0 * WHEELBASE_M * x / LOOKAHEAD_M**2))
    return float(np.clip(delta / MAX_STEER_DEG, -1.0, 1.0))


def sample_scene(rng: np.random.Generator) -> Scene:
    return Scene(
        offset=rng.uniform(-0.9, 0.9),
        heading=rng.uniform(-0.1, 0.1),
        curvature=rng.uniform(-0.025, 0.025),
        lane_width=rng.uniform(3.2, 4.0),
    )


def _coverage(dist: np.ndarray, half_width: float, pixel_m: np.ndarray) -> np.ndarray:
    """Anti-aliased coverage of a stripe ``half_width`` wide by pixels ``pixel_m`` wide."""
    return np.clip((half_width + 0.5 * pixel_m - np.abs(dist)) / pixel_m, 0.0, 1.0)


def render(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    """A 160×320 RGB uint8 frame of ``scene`` (appearance drawn from ``rng``)."""
    horizon = 62.0 + rng.uniform(-4, 4)  # pitch jitter
    v = np.arange(HEIGHT, dtype=np.float64)[:, None] + 0.5
    u = np.arange(WIDTH, dtype=np.float64)[None, :] + 0.5
    below = v > horizon + 0.5
    z = np.where(below, FOCAL * CAM_HEIGHT / np.maximum(v - horizon, 0.5), 1e4)
    pixel_m = z / FOCAL
    x = (u - WIDTH / 2) * pixel_m
    rel = x - scene.centre_x(z)  # lateral position relative to the ego lane centre
    w = scene.lane_width

    img = np.zeros((HEIGHT, WIDTH, 3), np.float64)
    # sky: vertical gradient, random tint
    sky_top, sky_low = rng.uniform([60, 90, 150], [140, 170, 235]), rng.uniform([150, 160, 170], [225, 230, 240])
    t = np.clip(v / max(horizon, 1.0), 0, 1)[..., None]
    img[:] = sky_top * (1 - t) + sky_low * t
    # verge (grass or dry ground) with world-anchored texture
    verge = rng.choice([np.array([70, 110, 50]), np.array([130, 115, 80]), np.array([95, 120, 70])])
    verge = verge * rng.uniform(0.8, 1.2)
    tex = np.sin(x * rng.uniform(1.5, 3.0) + np.sin(z * rng.uniform(0.5, 1.5)) * 2) * rng.uniform(5, 15)
    ground = verge + tex[..., None] + rng.normal(0, 8, (HEIGHT, WIDTH, 1))
    img = np.where(below[..., None], ground, img)
    # road surface: ego lane and the lane to its left, plus shoulders
    road_left, road_right = -1.5 * w - 0.6, 0.5 * w + 0.6
    road = _coverage(rel - (road_left + road_right) / 2, (road_right - road_left) / 2, pixel_m) * below
    asphalt = rng.uniform(70, 120) + rng.normal(0, 6, (HEIGHT, WIDTH))
    img = img * (1 - road[..., None]) + asphalt[..., None] * road[..., None]
    # markings: solid edges, dashed (white or yellow) centre line
    white = np.array([235.0, 235.0, 230.0]) * rng.uniform(0.8, 1.0)
    centre_colour = white if rng.random() < 0.5 else np.array([230.0, 190.0, 40.0])
    half = rng.uniform(0.06, 0.09)
    period, phase = rng.uniform(6, 12), rng.uniform(0, 12)
    dash_on = ((z + phase) % period) < period * 0.45
    for centre, colour, dashed in ((-0.5 * w, centre_colour, True), (0.5 * w, white, False), (-1.5 * w, white, False)):
        cov = _coverage(rel - centre, half, pixel_m) * below * (dash_on if dashed else 1.0)
        img = img * (1 - cov[..., None]) + colour * cov[..., None]
    # shadows of roadside trees: soft ellipses on the ground plane
    for _ in range(int(rng.integers(0, 4))):
        sz, sx = rng.uniform(4, 40), rng.uniform(-2.0 * w, 1.5 * w)
        blob = np.exp(-(((z - sz) / rng.uniform(1, 4)) ** 2) - ((rel - sx) / rng.uniform(0.8, 2.5)) ** 2)
        img *= 1 - rng.uniform(0.3, 0.6) * (blob * below)[..., None]
    # the car's bonnet at the bottom of the frame
    bonnet_top = HEIGHT - 18 + 6 * np.square((u - WIDTH / 2) / (WIDTH / 2))
    bonnet = (v > bonnet_top)[..., None]
    img = np.where(bonnet, rng.uniform(20, 90, 3) + rng.normal(0, 3, (HEIGHT, WIDTH, 1)), img)
    # global lighting, vignetting and sensor noise
    img *= rng.uniform(0.65, 1.25)
    img += rng.uniform(-20, 20)
    vig = 1 - rng.uniform(0, 0.25) * (((u - WIDTH / 2) / WIDTH) ** 2 + ((v - HEIGHT / 2) / HEIGHT) ** 2)
    img *= vig[..., None]
    img += rng.normal(0, rng.uniform(1, 5), img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def render_sample(seed: int, split: str, index: int) -> tuple[np.ndarray, float, Scene]:
    """Frame, steering label and scene, fully determined by ``(seed, split, index)``."""
    split_id = {"train": 0, "test": 1}[split]
    rng = np.random.default_rng([seed, split_id, index])
    scene = sample_scene(rng)
    return render(scene, rng), steering_label(scene), scene


# ----------------------------------------------------------------------------------------------
# the on-disk format


@dataclass(frozen=True)
class DrivingSample:
    image: Path  # the centre camera frame
    steering: float
    throttle: float = 0.0
    brake: float = 0.0
    speed: float = 0.0


def write_driving_log(path: str | os.PathLike[str], rows: Sequence[dict[str, str | float]]) -> Path:
    """Write ``rows`` (keys from :data:`COLUMNS`; ``left``/``right`` may be omitted) with a header line."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(COLUMNS)
        for row in rows:
            writer.writerow([row.get(c, "") for c in COLUMNS])
    os.replace(tmp, path)
    return path


def _is_header(row: list[str]) -> bool:
    try:
        float(row[3])
    except ValueError:
        return True
    return False


def _resolve_image(root: Path, text: str, where: str) -> Path:
    text = text.strip()
    if not text:
        raise DataError(f"{where}: the centre image column is empty")
    as_written = Path(text) if Path(text).is_absolute() else root / text
    if as_written.is_file():
        return as_written
    name = PureWindowsPath(text).name if "\\" in text else Path(text).name
    fallback = root / "IMG" / name
    if fallback.is_file():
        return fallback
    raise DataError(
        f"{where}: image {text!r} not found (looked at {as_written} and {fallback}); copy the IMG/ folder next to "
        f"{LOG_NAME}"
    )


def read_driving_log(path: str | os.PathLike[str], *, check_images: bool = True) -> list[DrivingSample]:
    """Read a ``driving_log.csv`` (with or without header); image paths are resolved against its folder."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"driving log {path} does not exist; expected {LOG_NAME} with columns {','.join(COLUMNS)}")
    root = path.parent
    samples: list[DrivingSample] = []
    with path.open(newline="", encoding="utf-8-sig") as fh:
        for line_no, row in enumerate(csv.reader(fh), start=1):
            if not row or all(not c.strip() for c in row):
                continue
            where = f"{path}:{line_no}"
            if len(row) < 4:
                raise DataError(f"{where}: {len(row)} column(s); a driving log row is {','.join(COLUMNS)}")
            if line_no == 1 and _is_header(row):
                continue
            try:
                numbers = [float(c) if c.strip() else 0.0 for c in row[3:7]]
            except ValueError:
                raise DataError(f"{where}: steering/throttle/brake/speed must be numbers, got {row[3:7]}") from None
            if not all(math.isfinite(n) for n in numbers):
                raise DataError(f"{where}: non-finite value in {row[3:7]}")
            numbers += [0.0] * (4 - len(numbers))
            image = _resolve_image(root, row[0], where) if check_images else root / row[0].strip()
            samples.append(DrivingSample(image, *numbers))
    if not samples:
        raise DataError(f"driving log {path} has no rows")
    return samples


def split_samples(root: str | os.PathLike[str], split: str, test_fraction: float = 0.2) -> list[DrivingSample]:
    """The ``train`` or ``test`` rows of a dataset folder (``train/`` + ``test/`` logs, or one log split in order)."""
    if split not in ("train", "test"):
        raise DataError(f"unknown split {split!r}; choose 'train' or 'test'")
    root = Path(root)
    own = root / split / LOG_NAME
    if own.is_file():
        return read_driving_log(own)
    single = root / LOG_NAME
    if not single.is_file():
        raise DataError(
            f"no driving log under {root}: expected {LOG_NAME} (Udacity simulator recording) or "
            f"train/{LOG_NAME} and test/{LOG_NAME}"
        )
    if not 0 < test_fraction < 1:
        raise DataError(f"test_fraction must be in (0, 1), got {test_fraction}")
    rows = read_driving_log(single)
    n_test = max(1, round(len(rows) * test_fraction))
    if len(rows) - n_test < 1:
        raise DataError(f"{single} has {len(rows)} row(s): too few to split into train and test")
    return rows[: len(rows) - n_test] if split == "train" else rows[len(rows) - n_test :]


# ----------------------------------------------------------------------------------------------
# generation


def _write_one(root: Path, seed: int, split: str, index: int) -> dict[str, str | float]:
    frame, steering, _ = render_sample(seed, split, index)
    name = f"IMG/center_{split}_{index:05d}.jpg"
    target = root / split / name
    Image.fromarray(frame).save(target, quality=95)
    speed = 20.0 + 10.0 * ((index * 7919) % 100) / 100  # mph, deterministic
    return {"center": name, "steering": round(steering, 6), "throttle": 0.3, "brake": 0.0, "speed": speed}


def generate(root: str | os.PathLike[str], config: DrivingSynthConfig = DrivingSynthConfig(), workers: int = 0) -> Path:
    """Write a synthetic dataset under ``root`` (``train/`` and ``test/``); skipped when already complete.

    ``workers`` processes render the frames (0 = one per available core, 1 = in this process); the
    output does not depend on the worker count.
    """
    from concurrent.futures import ProcessPoolExecutor

    root = Path(root)
    if reuse_generated(root, config.key(), "synthetic driving dataset"):
        return root
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    for split, count in (("train", config.train), ("test", config.test)):
        (root / split / "IMG").mkdir(parents=True, exist_ok=True)
        args = ([root] * count, [config.seed] * count, [split] * count, range(count))
        if workers == 1 or count < 64:
            rows = list(map(_write_one, *args))
        else:
            with ProcessPoolExecutor(max_workers=workers) as pool:
                rows = list(pool.map(_write_one, *args, chunksize=32))
        write_driving_log(root / split / LOG_NAME, rows)
    seal_generated(root, {"key": config.key(), **asdict(config), "version": GENERATOR_VERSION})
    return root


# ----------------------------------------------------------------------------------------------
# loading for training / evaluation


@dataclass
class DrivingSplit:
    images: np.ndarray  # uint8 [N, 3, H, W] in the model's colour space
    steering: np.ndarray  # float32 [N]
    samples: list[DrivingSample]

    def __len__(self) -> int:
        return len(self.samples)


def load_frame(
    path: Path, size: tuple[int, int], crop: tuple[int, int] = DEFAULT_CROP, color: str = "yuv"
) -> np.ndarray:
    """One frame as uint8 CHW: rows ``crop`` (top, bottom) removed, resized to ``size`` (H, W), YUV or RGB.

    YUV is BT.601 full range (PIL's ``YCbCr``, the JPEG colour space), as PilotNet's paper feeds YUV planes.
    """
    if color not in ("yuv", "rgb"):
        raise DataError(f"unknown colour space {color!r}; choose 'yuv' or 'rgb'")
    try:
        with Image.open(path) as opened:
            im = opened.convert("RGB")
        top, bottom = crop
        if top < 0 or bottom < 0 or top + bottom >= im.height:
            raise DataError(f"crop {crop} (top, bottom rows) does not fit the {im.height} rows of {path}")
        im = im.crop((0, top, im.width, im.height - bottom)).resize((size[1], size[0]), Image.Resampling.BILINEAR)
        if color == "yuv":
            im = im.convert("YCbCr")
        return np.asarray(im, dtype=np.uint8).transpose(2, 0, 1).copy()
    except OSError as exc:
        raise DataError(f"cannot read image {path}: {exc}") from None


def load_split(
    root: str | os.PathLike[str],
    split: str,
    size: tuple[int, int],
    *,
    limit: int = 0,
    crop: tuple[int, int] = DEFAULT_CROP,
    color: str = "yuv",
    test_fraction: float = 0.2,
) -> DrivingSplit:
    samples = split_samples(root, split, test_fraction)
    if limit:
        samples = samples[:limit]
    images = np.stack([load_frame(s.image, size, crop, color) for s in samples])
    steering = np.asarray([s.steering for s in samples], np.float32)
    return DrivingSplit(np.ascontiguousarray(images), steering, samples)


def resolve_data_root(configured: str | None, config: DrivingSynthConfig, cache_dir: Path) -> tuple[Path, bool]:
    """The driving log folder (``EDGEMATRIX_DATA_ROOT``, then ``configured``), or synthetic frames in the cache."""
    return roots.resolve_data_root(
        configured,
        layout=f"folder with {LOG_NAME} + IMG/ (Udacity simulator layout)",
        synthetic="synthetic frames",
        generate=lambda: generate(cache_dir / "data" / f"synthetic-driving-{config.key()}", config),
    )
