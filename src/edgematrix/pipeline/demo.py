"""``edgematrix demo``: a short synthetic drive with the FP32 reference and the candidate side by side.

For a cell that has run (``results/<cell>/config.json`` + ``artifacts.json``): the cell's task adapter
renders a drive at the model's input size (:meth:`TaskAdapter.drive`), both ONNX models run on every
frame with ONNX Runtime (batch 1, spinning off, alternating which goes first), the adapter draws each
model's decoded outputs (:meth:`TaskAdapter.overlay`), and the two panels are composed with a caption
bar (model, "FP32" / candidate precision, per-frame latency and running mean, frame counter):

    +--------------------------------------------------------------+
    | cell: model                                       frame 7/48 |
    |  FP32 reference                 INT8 candidate               |
    |  [ panel ]                      [ panel ]                    |
    |  12.1 ms (mean 11.8 ms)         4.2 ms (mean 4.3 ms)         |
    +--------------------------------------------------------------+

Written as an animated GIF (Pillow) or, for a ``.mp4`` path, H.264 through the ffmpeg binary that
the ``imageio-ffmpeg`` wheel bundles (the ``demo`` extra). Frames narrower than
:data:`MIN_PANEL_WIDTH` are upscaled by an integer factor before the outputs are drawn on them (the
adapters scale their drawing to the frame they get), so the result is watchable (≥ 960 px wide).
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError

MIN_PANEL_WIDTH = 480
MARGIN = 16  # around and between the panels
MAX_FRAMES = 2000
FORMATS = (".gif", ".mp4")
_BG = (24, 26, 30)
_FG = (235, 235, 235)
_DIM = (160, 166, 176)
_REF_COLOUR = (110, 170, 255)
_CAND_COLOUR = (255, 140, 90)


@dataclass
class DemoResult:
    path: Path
    frames: int
    size: tuple[int, int]  # (width, height) of the video
    panel_size: tuple[int, int]  # (width, height) of one panel, after upscaling
    panel_origins: tuple[tuple[int, int], tuple[int, int]]  # top-left (x, y) of the reference / candidate panel
    reference_ms: list[float] = field(default_factory=list)  # per-frame inference wall time
    candidate_ms: list[float] = field(default_factory=list)
    labels: tuple[str, str] = ("FP32", "INT8")
    seconds: float = 0.0

    @property
    def reference_mean_ms(self) -> float:
        return float(np.mean(self.reference_ms))

    @property
    def candidate_mean_ms(self) -> float:
        return float(np.mean(self.candidate_ms))


def run_demo(
    results_dir: Path,
    cell: str,
    *,
    frames: int = 48,
    fps: float = 12.0,
    out: Path | None = None,
    seed: int = 0,
    cache_dir: Path | None = None,
    log: Callable[[str], None] | None = None,
) -> DemoResult:
    """Render the demo of ``cell`` to ``out`` (default ``results/<cell>/demo.gif``); see the module docstring.

    ``cache_dir``: the host's cache, for results of a ``--runner docker`` run (container paths map to it).
    """
    if isinstance(frames, bool) or not isinstance(frames, int) or not 1 <= frames <= MAX_FRAMES:
        raise EdgeMatrixError(f"--frames must be an integer in 1..{MAX_FRAMES}; got {frames!r}")
    if not (math.isfinite(fps) and 0.5 <= fps <= 60):
        raise EdgeMatrixError(f"--fps must be between 0.5 and 60; got {fps!r}")
    from edgematrix.pipeline.sweep import artifact_kind, load_cell_results, resolve_model_path

    folder, config, artifacts = load_cell_results(Path(results_dir), cell)
    target = Path(out) if out is not None else folder / "demo.gif"
    if target.suffix.lower() not in FORMATS:
        raise EdgeMatrixError(f"--out {target}: the demo is written as {' or '.join(FORMATS)}; got {target.suffix!r}")
    if target.suffix.lower() == ".mp4":
        _require_ffmpeg()
    ref = resolve_model_path(artifacts["reference"], cache_dir)
    cand = resolve_model_path(artifacts["candidate"], cache_dir)
    for role, path in (("reference", ref), ("candidate", cand)):
        if not path.is_file():
            raise EdgeMatrixError(
                f"{cell}: the {role} model {path} (from {folder / 'artifacts.json'}) is gone, e.g. the cache was "
                f"cleared; run the cell again (`nox -s {cell}`)"
            )
    kinds = {role: artifact_kind(artifacts, role) for role in ("reference", "candidate")}
    return _run_demo_impl(cell, folder, config, ref, cand, kinds, target, frames, fps, seed, log or (lambda _m: None))


def _require_ffmpeg() -> None:
    try:
        import imageio_ffmpeg

        imageio_ffmpeg.get_ffmpeg_exe()
    except (ImportError, RuntimeError) as e:
        raise EdgeMatrixError(
            f"writing .mp4 needs the imageio-ffmpeg package, which bundles an ffmpeg binary ({e}); install the "
            "`demo` extra (pip install 'edgematrix[demo]') or `pip install imageio-ffmpeg`, or write a .gif"
        ) from None


def _model_config(cell: str, config: dict[str, Any]) -> Any:
    from pydantic import ValidationError

    from edgematrix.matrix.schema import Model

    raw = dict(config.get("model") or {})
    raw.pop("name", None)
    try:
        return Model.model_validate(raw)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "model"
        raise EdgeMatrixError(
            f"{cell}: the model section of its config.json does not match this version of edgematrix "
            f"({e.error_count()} error(s), first: model.{where}: {first['msg']}); run the cell again "
            f"(`nox -s {cell}`)"
        ) from None


def _run_demo_impl(
    cell: str,
    results_folder: Path,
    config: dict[str, Any],
    ref_path: Path,
    cand_path: Path,
    kinds: dict[str, str],
    target: Path,
    frames: int,
    fps: float,
    seed: int,
    log: Callable[[str], None],
) -> DemoResult:
    from edgematrix.backends.base import create_runner
    from edgematrix.core.registries import backends
    from edgematrix.models.sources import build_module
    from edgematrix.pipeline.sweep import sweep_backend
    from edgematrix.tasks.base import get_task

    t_start = time.perf_counter()
    model_cfg = _model_config(cell, config)
    model_name = str((config.get("model") or {}).get("name", model_cfg.origin))
    adapter = get_task(model_cfg.task)
    # geometry only (no weights): a family's or a factory's module; an ONNX model has none
    model = build_module(model_cfg) if model_cfg.source != "onnx" else None
    precision = str((config.get("recipe") or {}).get("precision", "candidate")).upper()
    same = ref_path.resolve() == cand_path.resolve()
    labels = ("FP32 reference", "FP32 candidate (= reference)" if same else f"{precision} candidate")

    drive = np.asarray(adapter.drive(model_cfg, frames, seed))
    h, w = int(model_cfg.input_shape[2]), int(model_cfg.input_shape[3])
    if drive.dtype != np.uint8 or drive.shape != (frames, h, w, 3):
        raise EdgeMatrixError(
            f"task {model_cfg.task!r}: drive() gave {drive.dtype}{list(drive.shape)}; expected uint8[{frames}, {h}, "
            f"{w}, 3] (a bug in the task adapter)"
        )
    log(f"{cell}: {frames} frames of a synthetic {model_cfg.task} drive at {w}x{h}")
    target_cfg = config.get("target") or {}
    threads = int(target_cfg.get("threads", 0))
    backend, why = sweep_backend(results_folder, target_cfg)
    log(f"backend: {backend} ({why})")
    runner_cls = backends.get(backend)

    def open_runner(role: str, path: Path) -> Any:
        if kinds[role] == "split":  # a split candidate (manifest): encoder → heads, each on the backend
            return create_runner("split", path=path, name=role, inner_backend=backend, intra_op_threads=threads)
        role_precision = "fp32" if role == "reference" else precision.lower()
        return create_runner(
            backend, path=path, name=role, **runner_cls.options_for(target_cfg, role=role, precision=role_precision)
        )

    runners = {role: open_runner(role, path) for role, path in (("reference", ref_path), ("candidate", cand_path))}
    scale = max(1, math.ceil(MIN_PANEL_WIDTH / w))
    canvas = _Canvas(w * scale, h * scale, title=f"{cell}: {model_name}", labels=labels)
    times: dict[str, list[float]] = {"reference": [], "candidate": []}
    composed: list[np.ndarray] = []
    with contextlib.ExitStack() as stack:
        for r in runners.values():
            stack.enter_context(r)
        input_name = next(iter(runners["reference"].input_metadata()))
        warm = {input_name: adapter.preprocess(drive[:1])}
        for r in runners.values():  # the first runs of a session allocate; keep them out of the captions
            for _ in range(2):
                r.infer(warm)
        for t in range(frames):
            feed = {input_name: adapter.preprocess(drive[t : t + 1])}
            order = ("reference", "candidate") if t % 2 == 0 else ("candidate", "reference")
            frame = upscale(drive[t], scale)  # drawn at display size (adapters scale to the frame they get)
            drawn: dict[str, np.ndarray] = {}
            for role in order:
                t0 = time.perf_counter()
                outputs = runners[role].infer(feed)
                times[role].append((time.perf_counter() - t0) * 1e3)
                drawn[role] = np.asarray(adapter.overlay(frame.copy(), outputs, model))
            composed.append(canvas.compose(drawn["reference"], drawn["candidate"], t, frames, times))
    _write_video(composed, target, fps)
    size = (composed[0].shape[1], composed[0].shape[0])
    result = DemoResult(
        target,
        frames,
        size,
        (w * scale, h * scale),
        ((canvas.x[0], canvas.y), (canvas.x[1], canvas.y)),
        times["reference"],
        times["candidate"],
        (labels[0].split()[0], labels[1].split()[0]),
        time.perf_counter() - t_start,
    )
    log(
        f"{target}: {frames} frames, {size[0]}x{size[1]}; mean inference FP32 {result.reference_mean_ms:.2f} ms, "
        f"{result.labels[1]} {result.candidate_mean_ms:.2f} ms; {result.seconds:.1f} s"
    )
    return result


def upscale(frame: np.ndarray, scale: int) -> np.ndarray:
    """``frame`` (uint8 [H, W, 3]) enlarged ``scale`` times (Lanczos); itself when ``scale`` is 1."""
    if scale == 1:
        return frame
    from PIL import Image

    h, w = frame.shape[:2]
    return np.asarray(
        Image.fromarray(np.ascontiguousarray(frame)).resize((w * scale, h * scale), Image.Resampling.LANCZOS)
    )


class _Canvas:
    """Lays out one video frame: caption bar, two labelled panels, per-panel latency line."""

    def __init__(self, panel_w: int, panel_h: int, *, title: str, labels: tuple[str, str]) -> None:
        from PIL import ImageFont

        self.pw, self.ph, self.title, self.labels = panel_w, panel_h, title, labels
        size = max(14, min(26, panel_w // 28))
        self.font = ImageFont.load_default(size=size)
        self.small = ImageFont.load_default(size=max(12, size - 4))
        self.bar = size + 2 * 8  # caption bar
        self.label_h = size + 10
        self.foot_h = size + 12
        width = 2 * panel_w + 3 * MARGIN
        height = self.bar + self.label_h + panel_h + self.foot_h + MARGIN // 2
        # H.264 (yuv420p) wants sizes divisible by 16: the rest goes to the right / bottom background
        self.width, self.height = width + (-width) % 16, height + (-height) % 16
        self.x = (MARGIN, 2 * MARGIN + panel_w)
        self.y = self.bar + self.label_h

    def compose(
        self, left: np.ndarray, right: np.ndarray, t: int, total: int, times: dict[str, list[float]]
    ) -> np.ndarray:
        from PIL import Image, ImageDraw

        img = Image.new("RGB", (self.width, self.height), _BG)
        draw = ImageDraw.Draw(img)
        draw.text((MARGIN, 8), self.title, font=self.font, fill=_FG)
        counter = f"frame {t + 1}/{total}"
        draw.text((self.width - MARGIN, 8), counter, font=self.font, fill=_FG, anchor="ra")
        for i, (panel, role, colour) in enumerate(
            ((left, "reference", _REF_COLOUR), (right, "candidate", _CAND_COLOUR))
        ):
            x = self.x[i]
            draw.text((x, self.bar), self.labels[i], font=self.font, fill=colour)
            pil = Image.fromarray(np.ascontiguousarray(panel))
            if pil.size != (self.pw, self.ph):
                pil = pil.resize((self.pw, self.ph), Image.Resampling.LANCZOS)
            img.paste(pil, (x, self.y))
            draw.rectangle([x - 1, self.y - 1, x + self.pw, self.y + self.ph], outline=colour)
            ms = times[role]
            draw.text(
                (x, self.y + self.ph + 6),
                f"{ms[-1]:.1f} ms   (running mean {float(np.mean(ms)):.1f} ms)",
                font=self.small,
                fill=_DIM,
            )
        return np.asarray(img)


def _write_video(frames: list[np.ndarray], target: Path, fps: float) -> None:
    """Write ``frames`` (uint8 [H, W, 3]) atomically as GIF or MP4, by ``target``'s suffix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=target.suffix, dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        if target.suffix.lower() == ".mp4":
            _write_mp4(frames, tmp, fps)
        else:
            from PIL import Image

            images = [Image.fromarray(f) for f in frames]
            images[0].save(
                tmp,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(20, round(1000 / fps)),
                loop=0,
                optimize=False,
            )
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise


def _write_mp4(frames: list[np.ndarray], path: Path, fps: float) -> None:
    import imageio_ffmpeg

    h, w = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        str(path),
        (w, h),
        fps=fps,
        codec="libx264",
        pix_fmt_in="rgb24",
        pix_fmt_out="yuv420p",
        quality=7,
        macro_block_size=16,
        ffmpeg_log_level="error",
    )
    writer.send(None)  # start ffmpeg
    try:
        for f in frames:
            writer.send(np.ascontiguousarray(f))
    finally:
        writer.close()
