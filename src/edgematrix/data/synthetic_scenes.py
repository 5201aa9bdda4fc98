"""Deterministic synthetic road scenes with exact per-pixel class masks and depth maps.

The camera model is the one of :mod:`edgematrix.data.synthetic_lanes` (pinhole, optical axis parallel
to a flat ground plane, camera 1.5 m above it), scaled to a 768×384 image: focal length 600 px. A
ground pixel at row ``y`` below the horizon row ``hz`` lies at depth ``z = f·h / (y - hz)`` and at
lateral position ``X = (x - cx)·z / f``. The road follows ``X_c(z) = yaw·z + curvature·z²/2`` (as the
lanes of synthetic TuSimple); each pixel is classified from its road coordinate ``u = X + ego - X_c(z)``:
road (2-4 lanes), lane markings (solid outer, dashed inner boundaries), sidewalks, vegetation
(verge and a tree line that closes the view at 45-75 m), then upright objects drawn far to near:
poles and vehicles (flat rear faces at their distance). Sky has no depth (0, as a LiDAR returns
none). Masks and depth come from the same geometry as the image, so they are exact; the image adds
textures, shadows, lighting changes and sensor noise that the labels ignore.

Written in the format of :mod:`edgematrix.data.scenes` (KITTI-encoded depth, max 80 m).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from edgematrix.core.cache import reuse_generated, seal_generated
from edgematrix.data import roots
from edgematrix.data.scenes import LAYOUT, ClassInfo, write_classes, write_sample

GENERATOR_VERSION = 2  # 2: 1-6 poles per scene (1: 0-4; too rare to learn)
WIDTH, HEIGHT = 768, 384
FOCAL = 600.0  # synthetic_lanes' 1000 px at 1280 wide, scaled to 768
CAM_HEIGHT = 1.5
MAX_DEPTH = 80.0

CLASSES = ClassInfo(
    names=("road", "sidewalk", "lane_marking", "vegetation", "vehicle", "pole", "sky"),
    palette=(
        (128, 64, 128),
        (244, 35, 232),
        (255, 255, 255),
        (107, 142, 35),
        (0, 0, 142),
        (153, 153, 153),
        (70, 130, 180),
    ),
)
ROAD, SIDEWALK, MARKING, VEGETATION, VEHICLE, POLE, SKY = range(7)


@dataclass(frozen=True)
class ScenesConfig:
    train: int = 800
    val: int = 160
    seed: int = 0

    def key(self) -> str:
        blob = json.dumps({**asdict(self), "version": GENERATOR_VERSION}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass
class _Object:
    kind: int  # VEHICLE or POLE
    z: float  # distance (m)
    u: float  # road coordinate of its centre (m)
    width: float
    height: float
    colour: tuple[float, float, float]


@dataclass
class _Scene:
    horizon: float
    cx: float
    yaw: float
    curvature: float
    ego: float  # lateral position of the camera in road coordinates (m)
    lanes: int
    lane_w: float
    sidewalk_l: float  # width (m); 0 = none on that side
    sidewalk_r: float
    marking_w: float
    dash_period: float
    dash_phase: float
    tree_z: float
    tree_phase: tuple[float, float]
    objects: list[_Object] = field(default_factory=list)
    # appearance
    road_grey: float = 100.0
    sidewalk_grey: float = 160.0
    grass: tuple[float, float, float] = (70.0, 110.0, 40.0)
    trees: tuple[float, float, float] = (40.0, 80.0, 30.0)
    sky_top: tuple[float, float, float] = (90.0, 140.0, 200.0)
    sky_bottom: tuple[float, float, float] = (180.0, 200.0, 225.0)
    marking_colour: tuple[float, float, float] = (235.0, 235.0, 235.0)


def _sample_scene(rng: np.random.Generator) -> _Scene:
    lanes = int(rng.integers(2, 5))
    lane_w = float(rng.uniform(3.2, 3.8))
    half = lanes * lane_w / 2
    ego_lane = int(rng.integers(0, lanes))
    ego = -half + (ego_lane + 0.5) * lane_w + float(rng.uniform(-0.4, 0.4))
    sw_l = float(rng.uniform(1.5, 3.0)) if rng.random() < 0.75 else 0.0
    sw_r = float(rng.uniform(1.5, 3.0)) if rng.random() < 0.75 else 0.0
    scene = _Scene(
        horizon=float(rng.uniform(0.40, 0.47) * HEIGHT),
        cx=WIDTH / 2 + float(rng.uniform(-30, 30)),
        yaw=float(rng.uniform(-0.03, 0.03)),
        curvature=float(rng.uniform(-0.002, 0.002)),
        ego=ego,
        lanes=lanes,
        lane_w=lane_w,
        sidewalk_l=sw_l,
        sidewalk_r=sw_r,
        marking_w=float(rng.uniform(0.15, 0.25)),
        dash_period=float(rng.uniform(9, 12)),
        dash_phase=float(rng.uniform(0, 12)),
        tree_z=float(rng.uniform(45, 75)),
        tree_phase=(float(rng.uniform(0, 6.3)), float(rng.uniform(0, 6.3))),
        road_grey=float(rng.uniform(70, 125)),
        sidewalk_grey=float(rng.uniform(140, 190)),
        grass=tuple(float(v) for v in rng.uniform([50, 90, 20], [100, 150, 70])),  # type: ignore[arg-type]
        trees=tuple(float(v) for v in rng.uniform([25, 55, 15], [60, 100, 45])),  # type: ignore[arg-type]
        sky_top=tuple(float(v) for v in rng.uniform([60, 110, 170], [130, 170, 230])),  # type: ignore[arg-type]
        sky_bottom=tuple(float(v) for v in rng.uniform([160, 180, 200], [225, 230, 245])),  # type: ignore[arg-type]
        marking_colour=(
            tuple(float(v) for v in rng.uniform([215, 180, 20], [255, 215, 70]))  # type: ignore[arg-type]
            if rng.random() < 0.15
            else (float(rng.uniform(200, 255)),) * 3
        ),
    )
    for _ in range(int(rng.integers(0, 5))):
        lane = int(rng.integers(0, lanes))
        z_min = 9.0 if lane == ego_lane else 5.0
        scene.objects.append(
            _Object(
                VEHICLE,
                float(rng.uniform(z_min, 55)),
                -half + (lane + 0.5) * lane_w + float(rng.uniform(-0.3, 0.3)),
                float(rng.uniform(1.7, 2.0)),
                float(rng.uniform(1.4, 1.8)),
                tuple(float(v) for v in rng.uniform(10, 220, 3)),  # type: ignore[arg-type]
            )
        )
    for _ in range(int(rng.integers(1, 7))):
        side = -1 if rng.random() < 0.5 else 1
        sw = sw_l if side < 0 else sw_r
        scene.objects.append(
            _Object(
                POLE,
                float(rng.uniform(6, 45)),
                side * (half + (sw * 0.8 if sw else float(rng.uniform(0.5, 1.5)))),
                float(rng.uniform(0.25, 0.4)),
                float(rng.uniform(4.5, 7.0)),
                tuple(float(v) for v in rng.uniform(80, 150, 3)),  # type: ignore[arg-type]
            )
        )
    return scene


def _road_x(scene: _Scene, z: np.ndarray | float) -> np.ndarray | float:
    """Lateral position (m, camera frame) of the road centre at depth ``z``."""
    return scene.yaw * z + 0.5 * scene.curvature * z**2 - scene.ego


def render_arrays(scene: _Scene, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(image uint8 [H, W, 3], mask uint8 [H, W], depth float32 [H, W] metres, 0 = none)."""
    h, w = HEIGHT, WIDTH
    ys = np.arange(h, dtype=np.float64)[:, None] + 0.5
    xs = np.arange(w, dtype=np.float64)[None, :] + 0.5
    hz = scene.horizon
    mask = np.full((h, w), SKY, np.uint8)
    depth = np.zeros((h, w), np.float64)
    img = np.zeros((h, w, 3), np.float64)
    t = np.clip(ys / hz, 0, 1)[..., None]
    img[:] = np.asarray(scene.sky_top) * (1 - t) + np.asarray(scene.sky_bottom) * t

    # ground plane
    below = ys > hz + 1e-6
    z = np.where(below, FOCAL * CAM_HEIGHT / np.maximum(ys - hz, 1e-6), np.inf) * np.ones((1, w))
    ground = np.isfinite(z)
    zg = np.where(ground, z, 1.0)
    u = (xs - scene.cx) * zg / FOCAL - _road_x(scene, zg)
    half = scene.lanes * scene.lane_w / 2
    on_road = np.abs(u) <= half
    side_l = (u < -half) & (u >= -half - scene.sidewalk_l)
    side_r = (u > half) & (u <= half + scene.sidewalk_r)
    cls = np.where(on_road, ROAD, np.where(side_l | side_r, SIDEWALK, VEGETATION))
    # markings: boundaries k = 0..lanes at u = -half + k·lane_w; inner ones dashed
    k = np.rint((u + half) / scene.lane_w)
    k_ok = (k >= 0) & (k <= scene.lanes)
    near_line = np.abs(u + half - k * scene.lane_w) <= scene.marking_w / 2
    inner = (k > 0) & (k < scene.lanes)
    dash_on = ((zg + scene.dash_phase) % scene.dash_period) < scene.dash_period / 3
    marking = ground & k_ok & near_line & (~inner | dash_on)
    cls = np.where(marking, MARKING, cls)
    mask[ground] = cls[ground]
    depth[ground] = zg[ground]

    # ground appearance: base colours, distance haze, texture
    tex = rng.standard_normal((h, w))
    road_c = np.array([scene.road_grey, scene.road_grey, scene.road_grey * 1.03])
    colours = {
        ROAD: road_c,
        SIDEWALK: np.array([scene.sidewalk_grey] * 3) * np.array([1.0, 0.97, 0.93]),
        VEGETATION: np.asarray(scene.grass),
        MARKING: np.asarray(scene.marking_colour),
    }
    for c, col in colours.items():
        sel = ground & (mask == c)
        amp = {ROAD: 6.0, SIDEWALK: 8.0, VEGETATION: 18.0, MARKING: 5.0}[c]
        img[sel] = col + amp * tex[sel][:, None]
    haze = np.clip((zg - 20) / 120, 0, 0.5)[..., None]
    img = np.where(ground[..., None], img * (1 - haze) + np.asarray(scene.sky_bottom) * haze, img)

    # tree line closing the view: from its ground row up to a wavy top
    base = hz + FOCAL * CAM_HEIGHT / scene.tree_z
    p1, p2 = scene.tree_phase
    top = hz - (18 + 10 * np.sin(xs / 37 + p1) + 7 * np.sin(xs / 13 + p2) + 4 * np.sin(xs / 5.3 + p1 * 2))
    trees = ((ys >= top) & (ys < base)) | (ground & (zg > scene.tree_z))
    mask[trees] = VEGETATION
    depth[trees] = scene.tree_z
    img[trees] = np.asarray(scene.trees) + 14.0 * tex[trees][:, None]

    # upright objects, far to near
    for ob in sorted(scene.objects, key=lambda o: -o.z):
        if ob.z <= 1.0 or ob.z >= scene.tree_z - 1.0:  # behind the tree line: hidden
            continue
        x_c = scene.cx + FOCAL * (ob.u + _road_x(scene, ob.z)) / ob.z
        y_b = hz + FOCAL * CAM_HEIGHT / ob.z
        half_w = 0.5 * FOCAL * ob.width / ob.z
        top_y = y_b - FOCAL * ob.height / ob.z
        x0, x1 = int(np.floor(x_c - half_w + 0.5)), int(np.floor(x_c + half_w + 0.5))
        y0, y1 = int(np.floor(top_y + 0.5)), int(np.floor(y_b + 0.5))
        x0c, x1c, y0c, y1c = max(x0, 0), min(x1, w), max(y0, 0), min(y1, h)
        if x0c >= x1c or y0c >= y1c:
            continue
        region = (slice(y0c, y1c), slice(x0c, x1c))
        mask[region] = ob.kind
        depth[region] = ob.z
        col = np.asarray(ob.colour)
        img[region] = col + 5.0 * tex[region][..., None]
        if ob.kind == VEHICLE:
            bh = y1 - y0
            # rear window, lights, bumper shadow (appearance only: the mask is the whole box)
            wy0, wy1 = max(y0 + int(0.12 * bh), 0), max(y0 + int(0.45 * bh), 0)
            wx0, wx1 = max(x0 + int(0.12 * (x1 - x0)), 0), min(x1 - int(0.12 * (x1 - x0)), w)
            img[min(wy0, h) : min(wy1, h), wx0:wx1] = (35, 40, 48)
            ly0, ly1 = max(y0 + int(0.55 * bh), 0), max(y0 + int(0.68 * bh), 0)
            lw = max(1, int(0.14 * (x1 - x0)))
            img[min(ly0, h) : min(ly1, h), x0c : min(x0 + lw, w)] = (200, 30, 30)
            img[min(ly0, h) : min(ly1, h), max(x1 - lw, 0) : x1c] = (200, 30, 30)
            img[max(y1 - max(1, int(0.1 * bh)), 0) : y1c, x0c:x1c] = (20, 20, 22)

    # shadows on the ground (appearance only)
    for _ in range(int(rng.integers(0, 3))):
        ya = rng.uniform(hz + 10, h - 20)
        hgt = rng.uniform(8, 60)
        xa, xb = sorted(rng.uniform(0, w, 2))
        sel = (ys >= ya) & (ys < ya + hgt) & (xs >= xa) & (xs < xb + 40) & ground & (mask != VEHICLE)
        img[sel] *= rng.uniform(0.45, 0.75)

    img *= rng.uniform(0.65, 1.25)
    img += rng.uniform(-18, 18) + rng.standard_normal((h, w, 1)) * rng.uniform(2, 7)
    out = np.clip(img, 0, 255).astype(np.uint8)
    if rng.random() < 0.5:
        out = np.asarray(Image.fromarray(out).filter(ImageFilter.BoxBlur(1)))
    depth = np.where(depth <= MAX_DEPTH, depth, 0.0)
    return out, mask, depth.astype(np.float32)


def render_sample(seed: int, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scene ``index`` of ``seed``: (image, mask, depth), fully determined by (seed, index)."""
    rng = np.random.default_rng([seed, index])
    return render_arrays(_sample_scene(rng), rng)


def render_drive_frame(seed: int, t: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Frame ``t`` in [0, 1] of a short drive: one road (fixed by ``seed``) bending smoothly while the
    ego car drifts in its lane, poles passing by and the vehicles ahead slowly pulling away; same
    colours, lighting and noise in every frame."""
    base = _sample_scene(np.random.default_rng([seed, 7919]))
    phase = 2 * np.pi * t
    travelled = 12.0 * t
    objects = []
    for ob in base.objects:
        # poles come closer and reappear in the distance; vehicles ahead drive slightly faster
        z = (ob.z - 6 - travelled) % 39 + 6 if ob.kind == POLE else ob.z + 6.0 * t
        objects.append(replace(ob, z=float(z)))
    scene = replace(
        base,
        yaw=base.yaw + 0.012 * float(np.sin(phase + 1.0)),
        curvature=0.0015 * float(np.sin(0.5 * phase + 0.3)),
        ego=base.ego + 0.3 * float(np.sin(phase)),
        dash_phase=base.dash_phase + travelled,
        objects=objects,
    )
    return render_arrays(scene, np.random.default_rng([seed, 104729]))


def _write_one(root: Path, seed: int, split: str, index: int) -> None:
    image, mask, depth = render_sample(seed, index)
    write_sample(root, split, f"{index:05d}", image, mask, depth)


def generate(root: str | os.PathLike, config: ScenesConfig = ScenesConfig(), workers: int = 0) -> Path:
    """Write the synthetic scenes under ``root`` (skipped when the stamp says they are complete).

    Every sample is a function of (seed, split, index) only: the output does not depend on ``workers``
    (0 = one process per available core).
    """
    from concurrent.futures import ProcessPoolExecutor

    root = Path(root)
    if reuse_generated(root, config.key(), "synthetic scenes dataset"):
        return root
    root.mkdir(parents=True, exist_ok=True)
    write_classes(root, CLASSES)
    if workers <= 0:
        workers = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    with ProcessPoolExecutor(max_workers=workers) as pool:
        for split_id, (split, count) in enumerate((("train", config.train), ("val", config.val))):
            seed = config.seed * 2 + split_id
            list(pool.map(_write_one, [root] * count, [seed] * count, [split] * count, range(count), chunksize=8))
    seal_generated(root, {"key": config.key(), **asdict(config), "version": GENERATOR_VERSION})
    return root


def resolve_data_root(configured: str, synthetic: ScenesConfig, cache_dir: Path) -> tuple[Path, bool]:
    """The scenes folder (``EDGEMATRIX_DATA_ROOT``, then ``data_root``), or the synthetic scenes in the cache."""
    return roots.resolve_data_root(
        configured,
        layout=f"scenes folder ({LAYOUT})",
        synthetic="synthetic scenes",
        generate=lambda: generate(cache_dir / "data" / f"synthetic-scenes-{synthetic.key()}", synthetic),
    )
