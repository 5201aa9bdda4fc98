"""Deterministic synthetic TuSimple: road scenes written in exactly the real dataset's format.

A pinhole camera looks down a road; lane boundaries are curves on the ground plane
``X(z) = X0 + yaw*z + curvature*z^2/2`` projected into a 1280×720 image. Each scene draws 2–5
boundaries (solid or dashed, white or yellow), vehicles that occlude them, shadows, lighting
changes and sensor noise. Labels are the projected boundaries at TuSimple's ``h_samples``, so
the TuSimple reader, the model targets and the metric run on this data exactly as on the real set.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgematrix.core.cache import reuse_generated, seal_generated
from edgematrix.data.tusimple import LaneSample, write_label_file

GENERATOR_VERSION = 2  # 2: x in [1279.5, 1280) is absent (-2), no longer rounded to 1280
WIDTH, HEIGHT = 1280, 720
H_SAMPLES = list(range(160, 720, 10))
FOCAL = 1000.0
CAM_HEIGHT = 1.5


@dataclass(frozen=True)
class SyntheticConfig:
    train: int = 600
    test: int = 150
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _Scene:
    horizon: float
    cx: float
    yaw: float
    curvature: float
    offsets: list[float]
    start_rows: list[float]


def _lane_x(scene: _Scene, x0: float, ys: np.ndarray) -> np.ndarray:
    z = FOCAL * CAM_HEIGHT / np.maximum(ys - scene.horizon, 1e-3)
    world = x0 + scene.yaw * z + 0.5 * scene.curvature * z**2
    return scene.cx + FOCAL * world / z


def _sample_scene(rng: np.random.Generator) -> _Scene:
    lane_w = rng.uniform(3.3, 3.9)
    ego = rng.uniform(-0.35, 0.35) * lane_w
    n = int(rng.integers(2, 6))  # 2..5 boundaries
    extra = n - 2
    left_extra = int(rng.integers(max(0, extra - 2), min(2, extra) + 1))
    right_extra = extra - left_extra
    ks = list(range(-left_extra, 2 + right_extra))  # boundary k sits at (k - 0.5) * lane_w
    horizon = rng.uniform(245, 290)
    return _Scene(
        horizon=horizon,
        cx=WIDTH / 2 + rng.uniform(-70, 70),
        yaw=rng.uniform(-0.025, 0.025),
        curvature=rng.uniform(-0.0018, 0.0018),
        offsets=[(k - 0.5) * lane_w - ego for k in ks],
        start_rows=[horizon + rng.uniform(12, 45) for _ in ks],
    )


def _labels(scene: _Scene) -> list[list[int]]:
    ys = np.asarray(H_SAMPLES, dtype=np.float64)
    lanes = []
    for x0, y0 in zip(scene.offsets, scene.start_rows, strict=True):
        xs = np.rint(_lane_x(scene, x0, ys))  # labels are whole pixels inside the image: 0..WIDTH-1
        ok = (ys >= y0) & (xs >= 0) & (xs < WIDTH)
        lane = [int(x) if o else -2 for x, o in zip(xs, ok, strict=True)]
        if sum(o for o in ok) >= 3:
            lanes.append(lane)
    return lanes


def _scale(factor: float) -> Callable[[int], int]:
    return lambda v: int(v * factor)


def _render(scene: _Scene, rng: np.random.Generator) -> Image.Image:
    hz = scene.horizon
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    # sky gradient and a distant tree line
    sky_top, sky_bot = rng.uniform(120, 200, 3), rng.uniform(170, 240, 3)
    t = np.linspace(0, 1, int(hz))[:, None]
    img[: int(hz)] = sky_top * (1 - t)[..., None] + sky_bot * t[..., None]
    band = int(rng.uniform(8, 25))
    img[max(0, int(hz) - band) : int(hz)] = rng.uniform(40, 90, 3)
    # ground: grass/dirt, then the road surface between the outer boundaries plus a shoulder
    img[int(hz) :] = rng.uniform(50, 120, 3) * np.array([0.8, 1.0, 0.6])
    ys = np.arange(int(hz) + 1, HEIGHT, dtype=np.float64)
    lane_w = float(np.diff(scene.offsets).mean()) if len(scene.offsets) > 1 else 3.6
    left = _lane_x(scene, min(scene.offsets) - rng.uniform(0.5, 0.5 + lane_w), ys)
    right = _lane_x(scene, max(scene.offsets) + rng.uniform(0.5, 0.5 + lane_w), ys)
    grey = rng.uniform(70, 130)
    road = np.array([grey, grey, grey * rng.uniform(0.95, 1.08)], np.float32)
    cols = np.arange(WIDTH)[None, :]
    mask = (cols >= left[:, None]) & (cols <= right[:, None])
    rows = img[int(hz) + 1 :]
    rows[mask] = road
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    # lane markings: quads between consecutive rows, dashes by ground distance
    for x0, y0 in zip(scene.offsets, scene.start_rows, strict=True):
        colour = (
            tuple(int(v) for v in rng.uniform([215, 180, 20], [255, 215, 70]))
            if rng.random() < 0.15
            else tuple(int(v) for v in rng.uniform(200, 255, 3))
        )
        dashed = rng.random() < 0.5
        phase = rng.uniform(0, 12)
        width_m = rng.uniform(0.12, 0.2)
        yy = np.arange(max(y0 - 8, hz + 2), HEIGHT + 4, 3.0)
        xx = _lane_x(scene, x0, yy)
        z = FOCAL * CAM_HEIGHT / (yy - hz)
        half = 0.5 * width_m * FOCAL / z
        visible = ((z + phase) % 12.0 < 4.0) if dashed else np.ones_like(z, bool)
        for i in range(len(yy) - 1):
            if visible[i]:
                draw.polygon(
                    [
                        (xx[i] - half[i], yy[i]),
                        (xx[i] + half[i], yy[i]),
                        (xx[i + 1] + half[i + 1], yy[i + 1]),
                        (xx[i + 1] - half[i + 1], yy[i + 1]),
                    ],
                    fill=colour,
                )
    # vehicles (occluders)
    for _ in range(int(rng.integers(0, 3))):
        yb = rng.uniform(hz + 25, hz + 220)
        zb = FOCAL * CAM_HEIGHT / (yb - hz)
        xw = rng.uniform(min(scene.offsets), max(scene.offsets))
        xc = _lane_x(scene, xw, np.array([yb]))[0]
        w = 1.8 * FOCAL / zb
        h = 1.4 * FOCAL / zb
        body = tuple(int(v) for v in rng.uniform(10, 200, 3))
        draw.rectangle([xc - w / 2, yb - h, xc + w / 2, yb], fill=body)
        draw.rectangle([xc - w / 2.6, yb - h * 0.95, xc + w / 2.6, yb - h * 0.6], fill=(30, 35, 40))
    # shadows across the road
    for _ in range(int(rng.integers(0, 3))):
        ya = rng.uniform(hz + 30, HEIGHT - 40)
        hgt = rng.uniform(15, 90)
        x1, x2 = sorted(rng.uniform(0, WIDTH, 2))
        shadow = Image.new("L", (WIDTH, HEIGHT), 0)
        ImageDraw.Draw(shadow).polygon(
            [(x1, ya), (x2, ya + rng.uniform(-20, 20)), (x2 + 80, ya + hgt), (x1 - 80, ya + hgt)], fill=255
        )
        dark = Image.eval(pil, _scale(rng.uniform(0.4, 0.75)))
        pil = Image.composite(dark, pil, shadow)
    # lighting and sensor noise (noise drawn at half resolution: 4x cheaper, same look after JPEG)
    arr = np.asarray(pil).astype(np.float32)
    noise = rng.standard_normal((HEIGHT // 2, WIDTH // 2, 1), dtype=np.float32) * rng.uniform(3, 9)
    arr *= rng.uniform(0.6, 1.3)
    arr += rng.uniform(-20, 20) + noise.repeat(2, 0).repeat(2, 1)
    out = Image.fromarray(np.clip(arr, 0, 255, out=arr).astype(np.uint8))
    return out.filter(ImageFilter.BoxBlur(1)) if rng.random() < 0.5 else out


def render_sample(seed: int, index: int) -> tuple[Image.Image, list[list[int]]]:
    """One scene, fully determined by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    scene = _sample_scene(rng)
    return _render(scene, rng), _labels(scene)


def render_scene_frame(seed: int, t: float) -> Image.Image:
    """Frame ``t`` in [0, 1] of a short drive: one road (fixed by ``seed``) whose curvature and heading
    change smoothly while the ego car drifts across its lane; same colours and lighting throughout."""
    base = _sample_scene(np.random.default_rng([seed, 7919]))
    phase = 2 * np.pi * t
    lane_w = float(np.diff(base.offsets).mean()) if len(base.offsets) > 1 else 3.6
    drift = 0.3 * lane_w * np.sin(phase)
    scene = _Scene(
        horizon=base.horizon,
        cx=base.cx,
        yaw=base.yaw + 0.012 * np.sin(phase + 1.0),
        curvature=0.0012 * np.sin(0.5 * phase + 0.3),
        offsets=[x - drift for x in base.offsets],
        start_rows=base.start_rows,
    )
    return _render(scene, np.random.default_rng([seed, 104729]))


def _write_one(root: Path, seed: int, split: str, index: int) -> tuple[str, list[list[int]]]:
    raw = f"clips/synthetic-{split}/{index:05d}/20.jpg"
    image, lanes = render_sample(seed, index)
    path = root / raw
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, quality=92)
    return raw, lanes


def generate(root: str | os.PathLike, config: SyntheticConfig = SyntheticConfig(), workers: int = 0) -> Path:
    """Write a synthetic TuSimple dataset under ``root`` (skipped when already complete).

    Images are rendered by ``workers`` processes (0 = one per available core); every image is a
    function of (seed, split, index) only, so the output does not depend on the worker count.
    """
    from concurrent.futures import ProcessPoolExecutor

    root = Path(root)
    if reuse_generated(root, config.key(), "synthetic TuSimple dataset"):
        return root
    root.mkdir(parents=True, exist_ok=True)
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    splits = {"train": (0, config.train, "label_data_synthetic.json"), "test": (1, config.test, "test_label.json")}
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split, (split_id, count, label_name) in splits.items():
            seed = config.seed * 2 + split_id
            jobs = pool.map(_write_one, [root] * count, [seed] * count, [split] * count, range(count), chunksize=8)
            samples = [LaneSample(raw, lanes, list(H_SAMPLES)) for raw, lanes in jobs]
            write_label_file(root / label_name, samples)
            if split == "test":
                (root / "test.txt").write_text("".join(f"{s.raw_file}\n" for s in samples))
                tasks = (json.dumps({"raw_file": s.raw_file, "h_samples": s.h_samples, "lanes": []}) for s in samples)
                (root / "test_tasks.json").write_text("".join(f"{t}\n" for t in tasks))
    seal_generated(root, {"key": config.key(), **asdict(config), "version": GENERATOR_VERSION})
    return root
