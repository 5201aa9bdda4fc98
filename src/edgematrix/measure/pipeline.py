"""Throughput of a frame stream through a split model: sequential vs a 2-stage pipeline.

- **sequential**: one thread runs encoder(t), heads(t), encoder(t+1), heads(t+1) ...
- **pipelined**: a stage-1 thread runs the encoder of frame t+1 while a stage-2 thread runs the
  heads of frame t; the stages hand features over through a bounded queue (depth 1-2), so the
  encoder runs at most ``queue_depth`` frames ahead. ONNX Runtime releases the GIL inside
  ``run()``, so the two stages really overlap on two cores.
- **whole** (optional): the unsplit model, sequential, as the baseline the split must not lose to.

Every mode streams the same frames, in rounds that alternate the order of the modes (AB, BA, ...)
so slow drift of a shared machine lands on all of them; FPS is the median over rounds and the
speedup the median of the per-round ratios.

What bounds the speedup. With stage times ``t_enc`` and ``t_heads`` per frame, sequential FPS is
``1 / (t_enc + t_heads)`` and a 2-stage pipeline at best ``1 / max(t_enc, t_heads)``, so

    speedup ≤ (t_enc + t_heads) / max(t_enc, t_heads)  ≤ 2,

reached only when the stages are balanced: an encoder taking 80% of the frame caps the gain at
1 / 0.8 = 1.25×. On a CPU the stages also share the cores: a pipeline of two 1-thread stages on 2
cores competes with a sequential run whose subgraphs use 2 intra-op threads each, so the pipeline
only wins by what intra-op threading loses (synchronisation, small ops, memory bandwidth). On
Orin the stages sit on different engines (GPU, DLA0, DLA1) and do not compete. The report gives the
stage times measured inside each mode, the bound computed from them (``balance_bound``) and the
bottleneck stage, so a missed target comes with its measured reason.
"""

from __future__ import annotations

import queue
import statistics
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import numpy as np

from edgematrix.errors import BackendError, EdgeMatrixError
from edgematrix.measure.harness import Runner

Feed = Mapping[str, np.ndarray]
Outputs = dict[str, np.ndarray]
_STOP = object()


class StagedRunner(Protocol):
    """A runner whose inference is two stages (the ``split`` backend's :class:`SplitRunner`)."""

    name: str
    is_active: bool

    def run_encoder(self, feed: Feed) -> dict[str, np.ndarray]: ...

    def run_heads(self, features: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...


@dataclass(frozen=True)
class StreamRun:
    """One pass of every frame through one mode."""

    wall_s: float
    stage_s: dict[str, float]  # summed busy time per stage ("encoder", "heads"; "whole")
    frames: int

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else float("inf")

    def per_frame_ms(self, stage: str) -> float:
        return self.stage_s[stage] / self.frames * 1e3


@dataclass(frozen=True)
class PipelineReport:
    frames: int
    rounds: int
    queue_depth: int
    runs: dict[str, list[StreamRun]] = field(repr=False)  # mode -> one StreamRun per round

    def fps(self, mode: str) -> float:
        return statistics.median(r.fps for r in self.runs[mode])

    def stage_ms(self, mode: str, stage: str) -> float:
        """Median over rounds of the per-frame busy time of ``stage`` in ``mode``."""
        return statistics.median(r.per_frame_ms(stage) for r in self.runs[mode])

    @property
    def sequential_fps(self) -> float:
        return self.fps("sequential")

    @property
    def pipelined_fps(self) -> float:
        return self.fps("pipelined")

    @property
    def whole_fps(self) -> float | None:
        return self.fps("whole") if "whole" in self.runs else None

    def ratio(self, mode: str, baseline: str = "sequential") -> float:
        """Median over rounds of ``mode``'s FPS / ``baseline``'s FPS in the same round (paired)."""
        return statistics.median(a.fps / b.fps for a, b in zip(self.runs[mode], self.runs[baseline], strict=True))

    @property
    def speedup(self) -> float:
        """Pipelined FPS / sequential FPS: the median of the per-round ratios (each round's pair ran back to
        back, so load that changes between rounds cancels)."""
        return self.ratio("pipelined")

    @property
    def bottleneck(self) -> str:
        """The slower stage inside the pipeline."""
        enc, heads = self.stage_ms("pipelined", "encoder"), self.stage_ms("pipelined", "heads")
        return "encoder" if enc >= heads else "heads"

    @property
    def balance_bound(self) -> float:
        """(t_enc + t_heads) / max(t_enc, t_heads) from the sequential run's stage times: the best a
        2-stage pipeline could do with those stage times."""
        enc, heads = self.stage_ms("sequential", "encoder"), self.stage_ms("sequential", "heads")
        return (enc + heads) / max(enc, heads)

    @property
    def contention_bound(self) -> float:
        """Sequential frame time / the pipeline's slower stage as measured inside the pipeline: the
        bound once the stages' slowdown from sharing the cores is counted."""
        seq = self.stage_ms("sequential", "encoder") + self.stage_ms("sequential", "heads")
        return seq / max(self.stage_ms("pipelined", "encoder"), self.stage_ms("pipelined", "heads"))

    @property
    def pipelined_frame_ms(self) -> float:
        """Median over rounds of the pipelined run's wall time per frame."""
        return statistics.median(r.wall_s / r.frames * 1e3 for r in self.runs["pipelined"])

    @property
    def handoff_overhead(self) -> float:
        """Pipelined wall time per frame / the slower stage's busy time per frame: 1.0 when the slower
        stage never waited; above it, time lost to the hand-off, the GIL or the OS scheduler."""
        slower = max(self.stage_ms("pipelined", "encoder"), self.stage_ms("pipelined", "heads"))
        return self.pipelined_frame_ms / slower

    @property
    def overlap_slowdown(self) -> float:
        """(encoder + heads busy time inside the pipeline) / (the same in the sequential run).

        Meaningful when both modes use the same runner (same threads): about 1 when the two stages
        had a core each, about 2 when they shared one core's worth of CPU (a busy machine)."""
        seq = self.stage_ms("sequential", "encoder") + self.stage_ms("sequential", "heads")
        return (self.stage_ms("pipelined", "encoder") + self.stage_ms("pipelined", "heads")) / seq

    def reason(self) -> str:
        """One sentence: what the measured stage times allow, and which stage bounds it."""
        enc, heads = self.stage_ms("sequential", "encoder"), self.stage_ms("sequential", "heads")
        share = max(enc, heads) / (enc + heads)
        slower = "encoder" if enc >= heads else "heads"
        pe, ph = self.stage_ms("pipelined", "encoder"), self.stage_ms("pipelined", "heads")
        return (
            f"sequential stage times encoder {enc:.2f} ms + heads {heads:.2f} ms per frame: the {slower} stage is "
            f"{share:.0%} of the frame, so a 2-stage pipeline is capped at 1/{share:.2f} = {self.balance_bound:.2f}x; "
            f"inside the pipeline the stages took encoder {pe:.2f} ms and heads {ph:.2f} ms (sharing the cores), "
            f"which caps it at {self.contention_bound:.2f}x; the pipeline took {self.pipelined_frame_ms:.2f} ms per frame, "
            f"{self.handoff_overhead:.2f}x its slower stage (hand-off / GIL / scheduling); measured {self.speedup:.2f}x "
            f"(bottleneck: {self.bottleneck})"
        )

    def summary(self) -> dict[str, float | int | str]:
        out: dict[str, float | int | str] = {
            "frames": self.frames,
            "rounds": self.rounds,
            "queue_depth": self.queue_depth,
            "sequential_fps": self.sequential_fps,
            "pipelined_fps": self.pipelined_fps,
            "pipeline_speedup": self.speedup,
            "balance_bound": self.balance_bound,
            "contention_bound": self.contention_bound,
            "overlap_slowdown": self.overlap_slowdown,
            "pipelined_frame_ms": self.pipelined_frame_ms,
            "handoff_overhead": self.handoff_overhead,
            "bottleneck": self.bottleneck,
        }
        for mode in ("sequential", "pipelined"):
            for stage in ("encoder", "heads"):
                out[f"{mode}_{stage}_ms"] = self.stage_ms(mode, stage)
        if self.whole_fps is not None:
            out["whole_fps"] = self.whole_fps
            out["pipelined_vs_whole"] = self.ratio("pipelined", "whole")
        return out


def run_sequential(runner: StagedRunner, frames: Sequence[Feed]) -> tuple[list[Outputs], StreamRun]:
    """Every frame through encoder then heads in this thread."""
    clock = time.perf_counter
    outputs: list[Outputs] = []
    enc_s = heads_s = 0.0
    start = clock()
    for feed in frames:
        t0 = clock()
        features = runner.run_encoder(feed)
        t1 = clock()
        outputs.append(runner.run_heads(features))
        t2 = clock()
        enc_s += t1 - t0
        heads_s += t2 - t1
    wall = clock() - start
    return outputs, StreamRun(wall_s=wall, stage_s={"encoder": enc_s, "heads": heads_s}, frames=len(frames))


def run_pipelined(
    runner: StagedRunner, frames: Sequence[Feed], *, queue_depth: int = 1
) -> tuple[list[Outputs], StreamRun]:
    """Encoder in this thread, heads in a second one, features handed over through a bounded queue.

    Outputs come back in frame order. An exception in either stage stops both and is re-raised here.
    """
    if queue_depth < 1:
        raise EdgeMatrixError(f"queue_depth must be >= 1, got {queue_depth}")
    clock = time.perf_counter
    handoff: queue.Queue[object] = queue.Queue(maxsize=queue_depth)
    results: list[Outputs | None] = [None] * len(frames)
    heads_busy = [0.0]
    failure: list[BaseException] = []

    def stage2() -> None:
        while True:
            item = handoff.get()
            if item is _STOP:
                return
            if failure:
                continue  # drain: stage 1 stops at its next put
            index, features = cast(tuple[int, dict[str, np.ndarray]], item)
            t0 = clock()
            try:
                results[index] = runner.run_heads(features)
            except BaseException as exc:  # re-raised in the caller's thread
                failure.append(exc)
            heads_busy[0] += clock() - t0

    worker = threading.Thread(target=stage2, name=f"{runner.name}-heads", daemon=True)
    enc_s = 0.0
    start = clock()
    worker.start()
    try:
        for index, feed in enumerate(frames):
            if failure:
                break
            t0 = clock()
            features = runner.run_encoder(feed)
            enc_s += clock() - t0
            handoff.put((index, features))
    finally:
        handoff.put(_STOP)
        worker.join()
    wall = clock() - start
    if failure:
        raise failure[0]
    if any(r is None for r in results):  # a stage returned without output: a bug, not user input
        raise BackendError(f"runner {runner.name!r}: the pipeline lost frames")
    outputs = [r for r in results if r is not None]
    return outputs, StreamRun(wall_s=wall, stage_s={"encoder": enc_s, "heads": heads_busy[0]}, frames=len(frames))


def run_whole(runner: Runner, frames: Sequence[Feed]) -> tuple[list[Outputs], StreamRun]:
    """The unsplit model over the same frames (sequential baseline)."""
    clock = time.perf_counter
    outputs = []
    start = clock()
    for feed in frames:
        outputs.append(runner.infer(feed))
    wall = clock() - start
    return outputs, StreamRun(wall_s=wall, stage_s={"whole": wall}, frames=len(frames))


def measure_pipeline(
    sequential: StagedRunner,
    frames: Sequence[Feed],
    *,
    pipelined: StagedRunner | None = None,
    whole: Runner | None = None,
    rounds: int = 3,
    queue_depth: int = 1,
    warmup_frames: int = 4,
    progress: Callable[[int, dict[str, StreamRun]], None] | None = None,
) -> PipelineReport:
    """Sequential vs pipelined (vs whole) FPS over ``frames``, alternating the modes' order each round.

    ``sequential`` runs the sequential mode; ``pipelined`` (default: the same runner) the
    pipelined one, so each can have its own threads (e.g. 2 intra-op threads sequential, 1 per
    stage pipelined). Runners must be active (``with runner:``).
    """
    if rounds < 1:
        raise EdgeMatrixError(f"rounds must be >= 1, got {rounds}")
    if not frames:
        raise EdgeMatrixError("frames is empty; stream at least one frame")
    if warmup_frames < 0:
        raise EdgeMatrixError(f"warmup_frames must be >= 0, got {warmup_frames}")
    pipe = pipelined or sequential
    for each in (sequential, pipe, whole):
        if each is not None and not each.is_active:
            raise BackendError(f"runner {each.name!r} is not active; enter it (`with runner:`) before measuring")
    frames = list(frames)
    warm = frames[: max(warmup_frames, 0)]
    modes: dict[str, Callable[[], tuple[list[Outputs], StreamRun]]] = {
        "sequential": lambda: run_sequential(sequential, frames),
        "pipelined": lambda: run_pipelined(pipe, frames, queue_depth=queue_depth),
    }
    if whole is not None:
        modes["whole"] = lambda: run_whole(whole, frames)
    if warm:
        run_sequential(sequential, warm)
        run_pipelined(pipe, warm, queue_depth=queue_depth)
        if whole is not None:
            run_whole(whole, warm)
    runs: dict[str, list[StreamRun]] = {m: [] for m in modes}
    order = list(modes)
    for r in range(rounds):
        this_round: dict[str, StreamRun] = {}
        for mode in order if r % 2 == 0 else order[::-1]:
            _, run = modes[mode]()
            runs[mode].append(run)
            this_round[mode] = run
        if progress is not None:
            progress(r + 1, this_round)
    return PipelineReport(frames=len(frames), rounds=rounds, queue_depth=queue_depth, runs=runs)
