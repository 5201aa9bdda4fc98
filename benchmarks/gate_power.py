"""Does the statistical latency gate hold on this machine? Real runs, real noise, known effects.

    PYTHONPATH=src python benchmarks/gate_power.py [--trials 10] [--rounds 60] [--threads 1]

Builds a small convolutional model with ``onnx.helper`` (a few ms per run on ONNX Runtime's CPU
provider) and runs three kinds of trial, each measured with the edgematrix latency harness
(base and candidate interleaved, order alternating every round):

* ``A/A``   — the same model in two sessions as base and candidate: no alarm expected;
* ``+10%``  — an INJECTED slowdown: the candidate session busy-waits, after every run and inside
  the timed call, for 10% of the base median (the median of a 50-run pilot at the start of the
  trial). The slowdown is real and measured, only its cause is artificial. Expected: "regression";
* ``+3%``   — the same with 3%: a real change smaller than the 5% minimum effect. Expected:
  "within noise".

The kinds are interleaved (A/A, +10%, +3%, A/A, ...) so drift of the machine's load lands on all
three. Each trial's verdict uses the default gate (5% minimum effect, 95% confidence); the counts
of the stricter alternative rule (whole CI above 1 + min effect) are printed alongside, which is why
the gate uses the rule it uses (see ``edgematrix.gates.latency``). Exit status 1 when a target is
missed: +10% flagged in >= 90% of trials, A/A without alarm in >= 90%, +3% within noise in >= 90%.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import multiprocessing
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.gates.latency import LatencyVerdict, compare_latency
from edgematrix.measure.harness import LatencyConfig, measure_interleaved

MIN_EFFECT = 0.05
PILOT_RUNS = 50  # base runs whose median sets the injected delay (fewer: one load burst can inflate it)
KINDS = {"A/A": 0.0, "+10%": 0.10, "+3%": 0.03}
EXPECTED = {"A/A": "within noise", "+10%": "regression", "+3%": "within noise"}


def build_model(path: Path, size: int = 96, channels: tuple[int, ...] = (3, 32, 32, 32, 32)) -> Path:
    """A plain Conv-ReLU stack, ``1 x 3 x size x size`` in, random weights (seeded)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits = [], []
    prev = "input"
    for i, (cin, cout) in enumerate(itertools.pairwise(channels)):
        w = (rng.standard_normal((cout, cin, 3, 3)) * (2.0 / (cin * 9)) ** 0.5).astype(np.float32)
        b = np.zeros(cout, dtype=np.float32)
        inits += [numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")]
        nodes.append(helper.make_node("Conv", [prev, f"w{i}", f"b{i}"], [f"c{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        prev = f"r{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [prev], ["output"]))
    graph = helper.make_graph(
        nodes,
        "gate_power_convnet",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, channels[0], size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, channels[-1], 1, 1])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


class SlowedRunner(OnnxrtRunner):
    """ONNX Runtime runner that busy-waits ``delay_s`` after every run (an injected, timed slowdown)."""

    def __init__(self, *args, delay_s: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().infer_impl(feed)
        if self.delay_s > 0:
            end = time.perf_counter() + self.delay_s
            while time.perf_counter() < end:  # busy: the core stays occupied, like slower code would
                pass
        return out


def _bursty_load(stop: Any, seed: int) -> None:
    """A noisy neighbour: busy for 1-20 ms, idle for 1-20 ms, at random, until ``stop`` is set."""
    rng = np.random.default_rng(seed)
    while not stop.is_set():
        end = time.perf_counter() + rng.uniform(0.001, 0.020)
        while time.perf_counter() < end:
            pass
        time.sleep(rng.uniform(0.001, 0.020))


@contextlib.contextmanager
def noisy_neighbours(count: int) -> Iterator[None]:
    """Run ``count`` bursty CPU-load processes for the duration of the block (always stopped)."""
    ctx = multiprocessing.get_context("spawn")
    stop = ctx.Event()
    procs = [ctx.Process(target=_bursty_load, args=(stop, i), daemon=True) for i in range(count)]
    for proc in procs:
        proc.start()
    try:
        yield
    finally:
        stop.set()
        for proc in procs:
            proc.join(timeout=5)
            if proc.is_alive():
                proc.terminate()
                proc.join()


def run_trial(
    model: Path, slowdown: float, feed: dict[str, np.ndarray], rounds: int, threads: int
) -> tuple[LatencyVerdict, float]:
    """One trial: pilot the base median, then base vs candidate interleaved. Returns (verdict, injected ratio)."""
    base = OnnxrtRunner(model, name="base", intra_op_threads=threads)
    cand = SlowedRunner(model, name="candidate", intra_op_threads=threads)
    with base, cand:
        for _ in range(5):
            base.infer(feed)
        pilot = []
        for _ in range(PILOT_RUNS):
            t0 = time.perf_counter()
            base.infer(feed)
            pilot.append(time.perf_counter() - t0)
        cand.delay_s = slowdown * statistics.median(pilot)
        config = LatencyConfig(warmup=5, min_rounds=rounds, max_rounds=rounds, min_time_s=0.0, max_time_s=60.0)
        samples = measure_interleaved({"base": base, "candidate": cand}, feed, config)
    b, c = samples["base"].samples_s, samples["candidate"].samples_s
    injected = 1.0 + cand.delay_s / statistics.median(b)  # the slowdown the delay adds at this trial's base median
    return compare_latency(b, c, min_effect=MIN_EFFECT), injected


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=60)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads per session (default 1)")
    ap.add_argument("--size", type=int, default=96, help="input height/width (default 96)")
    ap.add_argument(
        "--noise",
        type=int,
        default=0,
        help="bursty CPU-load processes running alongside (default 0: the machine as it is)",
    )
    args = ap.parse_args()

    start = time.perf_counter()
    results: dict[str, list[LatencyVerdict]] = {k: [] for k in KINDS}
    injected_by_kind: dict[str, list[float]] = {k: [] for k in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "convnet.onnx", size=args.size)
        feed = {"input": np.random.default_rng(1).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
        with OnnxrtRunner(model, intra_op_threads=args.threads) as probe:
            probe.infer(feed)
            t0 = time.perf_counter()
            for _ in range(20):
                probe.infer(feed)
            print(
                f"model: Conv x4 on 1x3x{args.size}x{args.size}, {(time.perf_counter() - t0) / 20 * 1e3:.2f} ms/run, "
                f"{args.threads} thread(s); {args.rounds} interleaved rounds per trial, min effect {MIN_EFFECT:.0%}"
            )
        if args.noise:
            print(f"with {args.noise} bursty load process(es) alongside (busy/idle 1-20 ms at random)")
        with noisy_neighbours(args.noise):
            for trial in range(args.trials):
                for kind, slowdown in KINDS.items():
                    verdict, injected = run_trial(model, slowdown, feed, args.rounds, args.threads)
                    results[kind].append(verdict)
                    injected_by_kind[kind].append(injected)
                    strict = verdict.ci_low > 1 + MIN_EFFECT
                    print(
                        f"trial {trial + 1:2d} {kind:>5} (injected x{injected:.3f}): {verdict.status:<12} "
                        f"{verdict.message}{'  [strict rule: regression]' if strict else ''}"
                    )

    print()
    ok = True
    n = args.trials
    for kind, verdicts in results.items():
        hits = sum(v.status == EXPECTED[kind] for v in verdicts)
        strict = sum((v.ci_low > 1 + MIN_EFFECT) == (EXPECTED[kind] == "regression") for v in verdicts)
        ratios = [v.ratio for v in verdicts]
        injected = injected_by_kind[kind]
        passed = hits >= 0.9 * n
        ok &= passed
        print(
            f"{kind:>5}: {EXPECTED[kind]!r} in {hits}/{n} (target >= {int(np.ceil(0.9 * n))}) "
            f"{'PASS' if passed else 'MISS'}; injected x{min(injected):.3f}..{max(injected):.3f}, "
            f"measured ratio {min(ratios):.3f}..{max(ratios):.3f}; "
            f"strict rule (ci_low > {1 + MIN_EFFECT:g}) right in {strict}/{n}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
