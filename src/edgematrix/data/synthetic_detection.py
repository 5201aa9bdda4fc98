"""Deterministic synthetic road scenes for detection, written in exactly COCO's instances layout.

A pinhole camera (focal :data:`FOCAL` px, 1.5 m above the road) looks down a gently curving road with lane
markings; objects of four categories stand on the ground plane at 5–45 m, so their size in the image
follows from their depth (a car ~200 px wide close up, ~22 px far away):

- ``car`` (1.8 × 1.5 m): body, narrower cabin with a dark rear window, tail lights, wheels
- ``truck`` (2.5 × 3.4 m): a tall cargo box with door lines over a dark chassis with wheels
- ``pedestrian`` (0.6 × 1.75 m): head, shirt, legs, on the road side or crossing
- ``traffic_sign`` (0.8 × 0.8 m panel on a pole): round red-rimmed, triangular, blue square or yellow diamond

Unlabelled clutter (trees, buildings, shadows), lighting changes, sensor noise and blur make it less trivial.
Objects are drawn far to near, so near objects occlude far ones; a placement that would hide more than 40%
of an already placed object is skipped. Boxes are the full (amodal) extent clipped to the image, and boxes
smaller than :data:`MIN_BOX` pixels are not kept. Every image is a function of (seed, split, index) only.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from edgematrix.core.cache import reuse_generated, seal_generated
from edgematrix.data import roots
from edgematrix.data.coco import CocoAnnotation, CocoCategory, CocoImage, CocoInstances, write_instances

GENERATOR_VERSION = 1
WIDTH, HEIGHT = 640, 384
FOCAL = 560.0
CAM_HEIGHT = 1.5
MIN_BOX = 6.0  # pixels (native 640x384), both sides
CATEGORIES = (
    CocoCategory(1, "car", "vehicle"),
    CocoCategory(2, "truck", "vehicle"),
    CocoCategory(3, "pedestrian", "person"),
    CocoCategory(4, "traffic_sign", "outdoor"),
)
# width, height (m) of each category's labelled extent
SIZES = {1: (1.8, 1.5), 2: (2.5, 3.4), 3: (0.6, 1.75), 4: (0.8, 0.8)}
SIGN_BOTTOM = 1.7  # m above the road: the panel's lower edge


@dataclass(frozen=True)
class SyntheticDetectionConfig:
    train: int = 1200
    test: int = 200
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION, "kind": "coco"}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _Object:
    category: int
    u: float  # lateral position (m) relative to the road centre line, at its depth
    z: float  # depth (m)
    colours: list[tuple[int, int, int]]
    variant: int = 0


@dataclass
class _Scene:
    horizon: float
    cx: float
    yaw: float
    curvature: float
    lane_width: float
    lanes: int
    sky: tuple[np.ndarray, np.ndarray]
    grass: np.ndarray
    road_grey: float
    dashed: bool
    clutter: list[tuple[str, float, float, float, tuple[int, int, int]]]  # kind, u, z, size, colour
    objects: list[_Object] = field(default_factory=list)
    brightness: float = 1.0
    offset: float = 0.0
    noise: float = 5.0
    blur: bool = False


def _project(s: _Scene, u: float | np.ndarray, z: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    z = np.maximum(z, 0.5)
    world_x = u + s.yaw * z + 0.5 * s.curvature * z**2
    return s.cx + FOCAL * world_x / z, s.horizon + FOCAL * CAM_HEIGHT / z


def _colour(rng: np.random.Generator, lo: float = 20, hi: float = 235) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.uniform(lo, hi, 3))
    return r, g, b


def _new_object(rng: np.random.Generator, category: int, s: _Scene) -> _Object:
    half_road = s.lanes * s.lane_width / 2
    if category in (1, 2):
        lane = int(rng.integers(0, s.lanes))
        u = -half_road + (lane + 0.5) * s.lane_width + rng.uniform(-0.4, 0.4)
        z = rng.uniform(5, 45)
        colours = [_colour(rng), _colour(rng, 150, 250) if category == 2 else _colour(rng, 10, 60)]
    elif category == 3:
        side = rng.choice([-1.0, 1.0])
        u = side * (half_road + rng.uniform(0.3, 2.5)) if rng.random() < 0.7 else rng.uniform(-half_road, half_road)
        z = rng.uniform(5, 28)
        colours = [_colour(rng, 120, 230), _colour(rng), _colour(rng, 10, 120)]
    else:
        side = rng.choice([-1.0, 1.0])
        u = side * (half_road + rng.uniform(1.0, 3.0))
        z = rng.uniform(6, 30)
        colours = [(120, 120, 125)]
    return _Object(category, float(u), float(z), colours, int(rng.integers(0, 4)))


def _sample_scene(rng: np.random.Generator, objects: bool = True) -> _Scene:
    lanes = int(rng.integers(2, 5))
    s = _Scene(
        horizon=rng.uniform(140, 175),
        cx=WIDTH / 2 + rng.uniform(-40, 40),
        yaw=rng.uniform(-0.02, 0.02),
        curvature=rng.uniform(-0.0015, 0.0015),
        lane_width=rng.uniform(3.2, 3.8),
        lanes=lanes,
        sky=(rng.uniform(110, 200, 3), rng.uniform(160, 240, 3)),
        grass=rng.uniform(50, 120, 3) * np.array([0.8, 1.0, 0.6]),
        road_grey=rng.uniform(70, 130),
        dashed=bool(rng.random() < 0.6),
        clutter=[],
        brightness=rng.uniform(0.65, 1.25),
        offset=rng.uniform(-20, 20),
        noise=rng.uniform(2, 8),
        blur=bool(rng.random() < 0.4),
    )
    half_road = lanes * s.lane_width / 2
    for _ in range(int(rng.integers(2, 9))):
        kind = "tree" if rng.random() < 0.6 else "building"
        side = rng.choice([-1.0, 1.0])
        s.clutter.append(
            (kind, float(side * (half_road + rng.uniform(4, 14))), float(rng.uniform(15, 90)), float(rng.uniform(3, 9)),
             _colour(rng, 30, 170))
        )  # fmt: skip
    if objects:
        for _ in range(int(rng.integers(2, 9))):
            cat = int(rng.choice([1, 2, 3, 4], p=[0.4, 0.15, 0.25, 0.2]))
            s.objects.append(_new_object(rng, cat, s))
    return s


def _extent(s: _Scene, o: _Object) -> tuple[float, float, float, float]:
    """The object's box x1, y1, x2, y2 in image pixels (unclipped)."""
    w, h = SIZES[o.category]
    px, py = _project(s, o.u, o.z)
    x, y = float(px), float(py)
    pw, ph = FOCAL * w / o.z, FOCAL * h / o.z
    bottom = y - (FOCAL * SIGN_BOTTOM / o.z if o.category == 4 else 0.0)
    return x - pw / 2, bottom - ph, x + pw / 2, bottom


def _draw_object(draw: ImageDraw.ImageDraw, s: _Scene, o: _Object) -> None:
    x1, y1, x2, y2 = _extent(s, o)
    w, h = x2 - x1, y2 - y1
    c = o.colours
    if o.category == 1:  # car, from behind
        draw.ellipse([x1 - 0.05 * w, y2 - 0.08 * h, x2 + 0.05 * w, y2 + 0.06 * h], fill=(25, 25, 28))
        draw.rectangle([x1 + 0.12 * w, y1, x2 - 0.12 * w, y1 + 0.45 * h], fill=c[0])
        draw.rectangle([x1 + 0.18 * w, y1 + 0.06 * h, x2 - 0.18 * w, y1 + 0.4 * h], fill=c[1])
        draw.rectangle([x1, y1 + 0.4 * h, x2, y2 - 0.12 * h], fill=c[0])
        lw = max(1.0, 0.12 * w)
        draw.rectangle([x1 + 0.04 * w, y1 + 0.5 * h, x1 + 0.04 * w + lw, y1 + 0.62 * h], fill=(200, 20, 20))
        draw.rectangle([x2 - 0.04 * w - lw, y1 + 0.5 * h, x2 - 0.04 * w, y1 + 0.62 * h], fill=(200, 20, 20))
        draw.rectangle([x1 + 0.05 * w, y2 - 0.14 * h, x1 + 0.25 * w, y2], fill=(15, 15, 15))
        draw.rectangle([x2 - 0.25 * w, y2 - 0.14 * h, x2 - 0.05 * w, y2], fill=(15, 15, 15))
    elif o.category == 2:  # truck: cargo box over chassis
        draw.rectangle([x1, y1, x2, y1 + 0.82 * h], fill=c[1])
        draw.rectangle([x1, y1 + 0.82 * h, x2, y2 - 0.06 * h], fill=(35, 35, 38))
        for f in (0.33, 0.5, 0.67):
            draw.line([x1 + f * w, y1 + 0.04 * h, x1 + f * w, y1 + 0.78 * h], fill=c[0], width=max(1, int(0.02 * w)))
        draw.rectangle([x1, y1 + 0.76 * h, x2, y1 + 0.82 * h], fill=c[0])
        draw.rectangle([x1 + 0.06 * w, y2 - 0.12 * h, x1 + 0.3 * w, y2], fill=(12, 12, 12))
        draw.rectangle([x2 - 0.3 * w, y2 - 0.12 * h, x2 - 0.06 * w, y2], fill=(12, 12, 12))
    elif o.category == 3:  # pedestrian
        draw.ellipse([x1 + 0.22 * w, y1, x2 - 0.22 * w, y1 + 0.15 * h], fill=c[0])
        draw.rectangle([x1, y1 + 0.15 * h, x2, y1 + 0.55 * h], fill=c[1])
        stride = 0.08 * w * (o.variant - 1.5)
        draw.rectangle([x1 + 0.1 * w - stride, y1 + 0.55 * h, x1 + 0.45 * w - stride, y2], fill=c[2])
        draw.rectangle([x2 - 0.45 * w + stride, y1 + 0.55 * h, x2 - 0.1 * w + stride, y2], fill=c[2])
    else:  # traffic sign on a pole (the pole is not part of the box)
        xm = (x1 + x2) / 2
        _, ground = _project(s, o.u, o.z)
        draw.rectangle([xm - max(1.0, 0.05 * w), y2, xm + max(1.0, 0.05 * w), float(ground)], fill=c[0])
        r = max(1.0, 0.14 * w)
        if o.variant == 0:  # round, red rim
            draw.ellipse([x1, y1, x2, y2], fill=(200, 25, 30))
            draw.ellipse([x1 + r, y1 + r, x2 - r, y2 - r], fill=(245, 245, 245))
        elif o.variant == 1:  # warning triangle
            draw.polygon([(xm, y1), (x2, y2), (x1, y2)], fill=(200, 25, 30))
            draw.polygon(
                [(xm, y1 + 2 * r), (x2 - 1.6 * r, y2 - 0.8 * r), (x1 + 1.6 * r, y2 - 0.8 * r)], fill=(245, 245, 240)
            )
        elif o.variant == 2:  # blue square
            draw.rectangle([x1, y1, x2, y2], fill=(20, 70, 190))
            draw.rectangle([x1 + 1.5 * r, y1 + 1.5 * r, x2 - 1.5 * r, y2 - 1.5 * r], fill=(235, 235, 240))
        else:  # yellow diamond
            ym = (y1 + y2) / 2
            draw.polygon([(xm, y1), (x2, ym), (xm, y2), (x1, ym)], fill=(240, 190, 20))


def _visible_boxes(s: _Scene) -> list[tuple[_Object, tuple[float, float, float, float]]]:
    """Objects kept (far to near): on screen, large enough, not hiding > 40% of an object behind them."""
    kept: list[tuple[_Object, tuple[float, float, float, float]]] = []
    for o in sorted(s.objects, key=lambda o: -o.z):
        x1, y1, x2, y2 = _extent(s, o)
        cx1, cy1, cx2, cy2 = max(x1, 0.0), max(y1, 0.0), min(x2, WIDTH), min(y2, HEIGHT)
        if cx2 - cx1 < MIN_BOX or cy2 - cy1 < MIN_BOX or (cx2 - cx1) * (cy2 - cy1) < 0.5 * (x2 - x1) * (y2 - y1):
            continue
        hides = False
        for _, (bx1, by1, bx2, by2) in kept:
            iw = min(cx2, bx2) - max(cx1, bx1)
            ih = min(cy2, by2) - max(cy1, by1)
            if iw > 0 and ih > 0 and iw * ih > 0.4 * (bx2 - bx1) * (by2 - by1):
                hides = True
                break
        if not hides:
            kept.append((o, (cx1, cy1, cx2, cy2)))
    return kept


def render(
    s: _Scene, rng: np.random.Generator
) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """The image and its labels: (category id, (x1, y1, x2, y2)) per visible object."""
    hz = int(s.horizon)
    img = np.empty((HEIGHT, WIDTH, 3), np.float32)
    t = np.linspace(0, 1, hz)[:, None, None]
    img[:hz] = s.sky[0] * (1 - t) + s.sky[1] * t
    img[hz:] = s.grass
    ys = np.arange(hz + 1, HEIGHT, dtype=np.float64)
    z = FOCAL * CAM_HEIGHT / (ys - s.horizon)
    half_road = s.lanes * s.lane_width / 2
    left, _ = _project(s, -half_road - 0.6, z)
    right, _ = _project(s, half_road + 0.6, z)
    cols = np.arange(WIDTH)[None, :]
    mask = (cols >= left[:, None]) & (cols <= right[:, None])
    img[hz + 1 :][mask] = np.array([s.road_grey, s.road_grey, s.road_grey * 1.03], np.float32)
    pil = Image.fromarray(img.astype(np.uint8))
    draw = ImageDraw.Draw(pil)
    for kind, u, cz, size, colour in sorted(s.clutter, key=lambda c: -c[2]):
        fx, fy = _project(s, u, cz)
        x, y, px = float(fx), float(fy), FOCAL * size / cz
        if kind == "tree":
            draw.rectangle([x - 0.06 * px, y - 0.5 * px, x + 0.06 * px, y], fill=(70, 50, 30))
            draw.ellipse(
                [x - 0.45 * px, y - 1.3 * px, x + 0.45 * px, y - 0.35 * px],
                fill=(colour[0] // 4, colour[1], colour[2] // 4),
            )
        else:
            draw.rectangle([x - px, y - 1.2 * px, x + px, y], fill=colour)
    # lane markings between the lanes and at the road edges
    yy = np.arange(hz + 3, HEIGHT + 3, 2.0)
    zz = FOCAL * CAM_HEIGHT / (yy - s.horizon)
    for k in range(s.lanes + 1):
        u = -half_road + k * s.lane_width
        xx, _ = _project(s, u, zz)
        half = 0.5 * 0.15 * FOCAL / zz
        edge = k in (0, s.lanes)
        visible = np.ones_like(zz, bool) if edge or not s.dashed else (zz % 12.0 < 4.0)
        for i in range(len(yy) - 1):
            if visible[i]:
                draw.polygon(
                    [(xx[i] - half[i], yy[i]), (xx[i] + half[i], yy[i]), (xx[i + 1] + half[i + 1], yy[i + 1]),
                     (xx[i + 1] - half[i + 1], yy[i + 1])],
                    fill=(235, 235, 225),
                )  # fmt: skip
    kept = _visible_boxes(s)
    for o, _ in kept:
        _draw_object(draw, s, o)
    arr = np.asarray(pil).astype(np.float32) * s.brightness + s.offset
    arr += rng.standard_normal((HEIGHT // 2, WIDTH // 2, 1), dtype=np.float32).repeat(2, 0).repeat(2, 1) * s.noise
    out = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    if s.blur:
        out = out.filter(ImageFilter.BoxBlur(1))
    return out, [(o.category, box) for o, box in kept]


def render_sample(seed: int, index: int) -> tuple[Image.Image, list[tuple[int, tuple[float, float, float, float]]]]:
    """One scene, fully determined by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    return render(_sample_scene(rng), rng)


def drive(seed: int, frames: int, size: tuple[int, int] | None = None) -> np.ndarray:
    """A 2-second drive: uint8 ``[frames, H, W, 3]`` (``size`` = (H, W); default native 384×640). The ego car
    drives at 12 m/s; other vehicles move with their own speeds, signs and pedestrians stand, the road bends
    slowly. Objects that pass the camera come back far ahead."""
    rng = np.random.default_rng([seed, 7919])
    base = _sample_scene(rng, objects=False)
    objs = [_new_object(rng, cat, base) for cat in (1, 1, 2, 3, 3, 4, 4, 1)]
    speeds = [rng.uniform(-3, 4) if o.category in (1, 2) else -12.0 for o in objs]
    h, w = size if size is not None else (HEIGHT, WIDTH)
    out = np.empty((frames, h, w, 3), np.uint8)
    for t in range(frames):
        sec = 2.0 * t / max(frames - 1, 1)
        moved = []
        for o, v in zip(objs, speeds, strict=True):
            z = 5 + (o.z + v * sec - 5) % 40  # wraps within 5..45 m
            moved.append(_Object(o.category, o.u, float(z), o.colours, o.variant))
        scene = _Scene(
            **{**base.__dict__, "objects": moved, "curvature": base.curvature + 0.0006 * np.sin(np.pi * sec / 2)}
        )
        image, _ = render(scene, np.random.default_rng([seed, 104729]))
        out[t] = np.asarray(image if size is None else image.resize((w, h), Image.Resampling.BILINEAR))
    return out


def _write_one(
    root: Path, seed: int, split: str, index: int
) -> tuple[str, list[tuple[int, tuple[float, float, float, float]]]]:
    name = f"{index:06d}.jpg"
    image, labels = render_sample(seed, index)
    image.save(root / split / name, quality=92)
    return name, labels


def generate(
    root: str | os.PathLike[str], config: SyntheticDetectionConfig = SyntheticDetectionConfig(), workers: int = 0
) -> Path:
    """Write a synthetic detection dataset in COCO layout under ``root`` (skipped when already complete).

    Images are rendered by ``workers`` processes (0 = one per available core); the output does not depend on
    the worker count. ``root/synthetic.json`` stamps a complete dataset with its config key.
    """
    from concurrent.futures import ProcessPoolExecutor

    root = Path(root)
    if reuse_generated(root, config.key(), "synthetic COCO dataset"):
        return root
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split_id, (split, count) in enumerate((("train", config.train), ("val", config.test))):
            (root / split).mkdir(parents=True, exist_ok=True)
            seed = config.seed * 2 + split_id
            jobs = pool.map(_write_one, [root] * count, [seed] * count, [split] * count, range(count), chunksize=8)
            images: list[CocoImage] = []
            anns: list[CocoAnnotation] = []
            for i, (name, labels) in enumerate(jobs):
                images.append(CocoImage(i + 1, name, WIDTH, HEIGHT))
                for cat, (x1, y1, x2, y2) in labels:
                    bbox = (round(x1, 2), round(y1, 2), round(x2 - x1, 2), round(y2 - y1, 2))
                    anns.append(CocoAnnotation(len(anns) + 1, i + 1, cat, bbox, round(bbox[2] * bbox[3], 2), 0))
            info = {"description": "edgematrix synthetic road scenes", "version": str(GENERATOR_VERSION)}
            write_instances(
                root / "annotations" / f"instances_{split}.json",
                CocoInstances(images, anns, list(CATEGORIES), info),
            )
    seal_generated(root, {"key": config.key(), **asdict(config), "version": GENERATOR_VERSION})
    return root


def resolve_data_root(configured: str, synthetic: Any, cache_dir: Path) -> tuple[Path, bool]:
    """The COCO-format folder (``EDGEMATRIX_DATA_ROOT``, then ``data_root``), or synthetic road scenes in
    the cache (``synthetic``: the model's train / test / seed)."""
    cfg = SyntheticDetectionConfig(train=synthetic.train, test=synthetic.test, seed=synthetic.seed)
    return roots.resolve_data_root(
        configured,
        layout="COCO-format folder (annotations/instances_train.json, annotations/instances_val.json, train/, val/; "
        "COCO's *2017 names work too)",
        synthetic="synthetic road scenes",
        generate=lambda: generate(cache_dir / "data" / f"synthetic-coco-{cfg.key()}", cfg),
    )
