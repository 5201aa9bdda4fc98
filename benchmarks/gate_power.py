"""Does the statistical latency gate keep its promise on this machine? Real samples, known effects.

    PYTHONPATH=src python benchmarks/gate_power.py [halves] [BENCH.json ...] [--trials 10]
    PYTHONPATH=src python benchmarks/gate_power.py record OUT.json [--busy 2] [--rounds 120]
    PYTHONPATH=src python benchmarks/gate_power.py probe [--repeats 4]
    PYTHONPATH=src python benchmarks/gate_power.py live [--trials 10] [--rounds 60]

``halves`` (default) — the gate on a real cell run's per-round samples, every benchmark of it at
once, exactly as ``edgematrix gate compare`` judges them. Input: ``benchmark.json`` files of cell
runs (default ``results/x86_cpu_int8/benchmark.json``; ``record`` makes cell-like ones). Each trial
splits the run's rounds into two halves, writes them as two ``benchmark.json`` files (base and
candidate) and runs :func:`edgematrix.gates.compare.compare_benchmark_files` on them; the trial is
"flagged" when ANY benchmark's latency verdict is a regression. Kinds of trial:

* ``A/A``  — the halves as they are: no alarm expected;
* ``+3%``  — every candidate-half round of every benchmark x1.03, below the 5% minimum effect:
  "within noise" expected (every benchmark gets a chance to cross: the hard case for false alarms);
* ``+10%`` — every candidate-half round of every benchmark x1.10: a regression expected.

Two stress tests are printed without a target: ``+10% cand`` slows only the benchmarks whose
``extra_info.role`` is ``candidate`` (what a slower candidate model does), ``+10% one`` a single
benchmark, a different one each trial — one chance against the family-wise interval of all; it
misses where that benchmark's own rounds cannot resolve 10% (a 3 ms OpenVINO INT8 model whose
rounds spread by 15-25% here).

How the rounds are split: *stratified random halves*. The harness alternates the runners' order
every round (AB, BA, AB, ...), so rounds ``4j`` and ``4j+2`` run in one order, ``4j+1`` and
``4j+3`` in the other; each trial assigns one of each such pair to each half, at random (seeded
by the trial). Consecutive halves (first vs second) are not used: slow drift of the machine
(another job starting, thermal state) makes them differ by 2-3% in A/A on real runs, a difference
no later run would share. Even vs odd rounds are not used either: they differ in the runners'
order, which shifted medians by up to 2.5% on the 5-benchmark prune cell run
(``docs/results/prune-x2-int8``). Stratified random halves share every stretch of four rounds and
both orders equally, and differ between trials, so ten trials are ten different splits of one run.
Both figures are printed for comparison, with the previous rule's counts (significant + point
estimate beyond the minimum effect, each benchmark alone).

``record`` — makes a realistic cell-like ``benchmark.json`` with the real harness: an FP32 conv net
(reference) and its INT8 QDQ model (candidate) on ONNX Runtime and OpenVINO, plus a wider INT8
model (``unpruned``) on ONNX Runtime — five benchmarks measured interleaved in the same rounds,
threads = physical cores, for as long as a cell measures by default (at least 50 rounds and 10 s),
as ``x86_cpu`` cells do. ``machine_info["latency_contention"]`` holds
the contention record. ``--busy N`` starts N ``while True: pass`` processes beside it.

``probe`` — the experiment behind :data:`edgematrix.measure.contention.THRESHOLDS`: the same
five-model measurement, alternately with 0, 2 and 1 CPU-bound processes beside it, printing every
contention signal and the per-round ratios of both backends (same-run ratio vs quiet).

``live`` — the earlier live-injection check: base and candidate sessions of one model, the
candidate busy-waiting an injected 0/+3/+10% after each run, measured interleaved; one benchmark
per trial (``comparisons=1``).

Exit status 1 when a target is missed: A/A quiet, +3% within noise and +10% flagged each in at
least 90% of the trials.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.onnxruntime.runner import OnnxrtRunner
from edgematrix.core.results import BenchmarkEntry, read_benchmark_json, write_benchmark_json
from edgematrix.gates.compare import CONTENTION_KEY, compare_benchmark_files
from edgematrix.gates.latency import LatencyVerdict, compare_latency
from edgematrix.measure.contention import THRESHOLDS, Contention
from edgematrix.measure.harness import LatencyConfig, Measurement, measure_interleaved

MIN_EFFECT = 0.05
TARGET = 0.9
DEFAULT_INPUT = Path("results/x86_cpu_int8/benchmark.json")
SPINNER = ("timeout", "300", sys.executable, "-c", "while True: pass")


# -- models -------------------------------------------------------------------------------------


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


def cell_like_runners(folder: Path, size: int) -> tuple[dict[str, Any], dict[str, np.ndarray], dict[str, Path]]:
    """The five runners of a cell-like measurement (see ``record``), their feed and model files."""
    from edgematrix.backends.openvino.runner import OpenvinoRunner
    from edgematrix.optimize.quantize import quantize_static_qdq

    rng = np.random.default_rng(0)
    calibration = [rng.standard_normal((1, 3, size, size)).astype(np.float32) for _ in range(8)]
    fp32 = build_model(folder / "fp32.onnx", size=size, channels=(3, 32, 48, 48, 64, 64))
    wide = build_model(folder / "wide.onnx", size=size, channels=(3, 48, 64, 64, 96, 96))
    int8 = quantize_static_qdq(fp32, folder / "int8.onnx", calibration, input_name="input").path
    wide8 = quantize_static_qdq(wide, folder / "wide-int8.onnx", calibration, input_name="input").path
    models = {"reference": fp32, "candidate": int8, "unpruned": wide8}
    runners: dict[str, Any] = {
        "reference": OnnxrtRunner(fp32, name="reference", intra_op_threads=0),
        "candidate": OnnxrtRunner(int8, name="candidate", intra_op_threads=0),
        "unpruned": OnnxrtRunner(wide8, name="unpruned", intra_op_threads=0),
        "reference@openvino": OpenvinoRunner(fp32, name="reference@openvino", intra_op_threads=0, exact_fp32=True),
        "candidate@openvino": OpenvinoRunner(int8, name="candidate@openvino", intra_op_threads=0, exact_fp32=True),
    }
    return runners, {"input": calibration[0]}, models


#: a neighbour busy for ``duty`` of every 20 ms, idle for the rest (duty 1: ``while True: pass``)
NEIGHBOUR = (
    "import sys, time\n"
    "duty = float(sys.argv[1])\n"
    "while True:\n"
    "    end = time.perf_counter() + 0.02 * duty\n"
    "    while time.perf_counter() < end:\n"
    "        pass\n"
    "    if duty < 1:\n"
    "        time.sleep(0.02 * (1 - duty))\n"
)


@contextlib.contextmanager
def spinners(count: int, duty: float = 1.0) -> Iterator[None]:
    """``count`` CPU-bound processes beside the block, busy ``duty`` of the time (each stopped by its pid)."""
    cmd = SPINNER if duty >= 1 else ("timeout", "300", sys.executable, "-c", NEIGHBOUR, str(duty))
    procs = [subprocess.Popen(cmd) for _ in range(count)]
    try:
        if procs:
            time.sleep(0.5)  # let the scheduler see them
        yield
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait()


def measure_cell_like(
    runners: dict[str, Any], feed: dict[str, np.ndarray], rounds: int, min_time_s: float = 0.0
) -> Measurement:
    """``rounds`` rounds exactly, or (``min_time_s`` > 0) a cell's rule: at least ``rounds`` and ``min_time_s``."""
    most = rounds if min_time_s <= 0 else 100_000
    config = LatencyConfig(warmup=10, min_rounds=rounds, max_rounds=most, min_time_s=min_time_s, max_time_s=300.0)
    return measure_interleaved(runners, feed, config)


# -- record -------------------------------------------------------------------------------------


def cmd_record(args: argparse.Namespace) -> int:
    from edgematrix.measure.environment import capture_environment

    with tempfile.TemporaryDirectory() as tmp:
        runners, feed, models = cell_like_runners(Path(tmp), args.size)
        with contextlib.ExitStack() as stack:
            for runner in runners.values():
                stack.enter_context(runner)
            with spinners(args.busy):
                measured = measure_cell_like(runners, feed, args.rounds, args.min_time)
            facts = {key: runner.facts() for key, runner in runners.items()}
        entries = []
        for key, samples in measured.items():
            role, _, backend = key.partition("@")
            backend = backend or "onnxruntime"
            extra: dict[str, float | int | str] = {
                "role": role,
                "backend": backend,
                "backend_version": str(facts[key].get("version", "")),
                "precision": "fp32" if role == "reference" else "int8",
                "model_bytes": models[role].stat().st_size,
                "p50_ms": round(samples.p50_ms, 4),
                **measured.contention.extra_info(key),
            }
            entries.append(BenchmarkEntry(f"gate_power_cell[{key}]", "gate_power_cell", samples.samples_s, extra))
        env = capture_environment({CONTENTION_KEY: measured.contention.as_dict()})
        write_benchmark_json(args.out, entries, machine_extra=env)
    rounds = measured.contention.rounds
    print(f"{args.out}: {len(entries)} benchmarks x {rounds} rounds, {args.busy} spinner(s) beside it")
    print(f"machine: {measured.contention.summary()}")
    for key, samples in measured.items():
        print(f"  {key:<20} p50 {samples.p50_ms:7.3f} ms  spread {measured.contention.spread[key]:.3f}")
    return 0


# -- probe --------------------------------------------------------------------------------------


def _ratio(m: Measurement, cand: str, ref: str) -> float:
    return float(np.median(np.asarray(m[cand].samples_s) / np.asarray(m[ref].samples_s)))


#: probe conditions: (label, neighbours, duty of each)
CONDITIONS = (
    ("quiet", 0, 1.0),
    ("2 x while-True", 2, 1.0),
    ("1 x while-True", 1, 1.0),
    ("1 x 10% duty", 1, 0.10),
    ("1 x 25% duty", 1, 0.25),
    ("1 x 50% duty", 1, 0.50),
)


def cmd_probe(args: argparse.Namespace) -> int:
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        runners, feed, _ = cell_like_runners(Path(tmp), args.size)
        with contextlib.ExitStack() as stack:
            for runner in runners.values():
                stack.enter_context(runner)
            for rep in range(args.repeats):
                for label, count, duty in CONDITIONS:
                    with spinners(count, duty):
                        m = measure_cell_like(runners, feed, args.rounds)
                    c = m.contention
                    row: dict[str, Any] = {
                        "condition": label,
                        **c.shares(),
                        "pressure_share": c.pressure_share,
                        "spread": max(c.spread.values()),
                        "ort": _ratio(m, "candidate", "reference"),
                        "ov": _ratio(m, "candidate@openvino", "reference@openvino"),
                        "busy": c.busy,
                    }
                    rows.append(row)
                    print(f"rep {rep + 1} {label:<15} INT8/FP32 ORT {row['ort']:.3f} OV {row['ov']:.3f}; {c.summary()}")
    # the reference ratios: runs of the quiet condition that the record itself judged quiet
    quiet = [r for r in rows if r["condition"] == "quiet" and not r["busy"]]
    if not quiet:
        print("no quiet run: the machine was busy throughout; run the probe again later")
        return 1
    ref = {k: float(np.median([r[k] for r in quiet])) for k in ("ort", "ov")}
    print(f"\nquiet INT8/FP32 ratios (median of {len(quiet)} quiet runs): ORT {ref['ort']:.3f}, OV {ref['ov']:.3f}")
    keys = ("other_cpu_share", "own_wait_share", "steal_share", "pressure_share", "runnable_per_cpu", "spread")
    for label, _, _ in CONDITIONS:
        sel = [r for r in rows if r["condition"] == label]
        span = ", ".join(
            f"{k} {min(r[k] for r in sel):.3f}..{max(r[k] for r in sel):.3f}" for k in keys if sel[0][k] is not None
        )
        shift = [abs(r[k] / ref[k] - 1) for r in sel for k in ("ort", "ov")]
        print(
            f"{label:<15} {len(sel)} runs: {span}; INT8/FP32 ratios off the quiet ones by up to {max(shift):.1%}; "
            f"judged busy {sum(r['busy'] for r in sel)}/{len(sel)}"
        )
    print(f"thresholds: {THRESHOLDS}")
    return 0


# -- halves -------------------------------------------------------------------------------------


def stratified_halves(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Round indices of two halves: of rounds 4j, 4j+2 (one order) and 4j+1, 4j+3 (the other), one each."""
    first, second = [], []
    for start in range(0, n - 3, 4):
        for pair in ((start, start + 2), (start + 1, start + 3)):
            a, b = pair if rng.random() < 0.5 else pair[::-1]
            first.append(a)
            second.append(b)
    return np.sort(first), np.sort(second)


def consecutive_halves(n: int) -> tuple[np.ndarray, np.ndarray]:
    half = n // 2
    return np.arange(half), np.arange(half, 2 * half)


def _entries(doc: dict[str, Any], idx: np.ndarray, scale: dict[str, float]) -> list[BenchmarkEntry]:
    out = []
    for bench in doc["benchmarks"]:
        data = np.asarray(bench["stats"]["data"], dtype=np.float64)[idx] * scale.get(bench["name"], 1.0)
        out.append(BenchmarkEntry(bench["name"], bench.get("group") or "", data.tolist(), dict(bench["extra_info"])))
    return out


def _old_rule(base: list[float], cand: list[float]) -> bool:
    """The previous rule: significant at 95% and a point estimate beyond the minimum effect, alone."""
    v = compare_latency(base, cand, min_effect=MIN_EFFECT, comparisons=1)
    return v.significant and v.ratio > 1 + MIN_EFFECT


def half_trial(
    doc: dict[str, Any], halves: tuple[np.ndarray, np.ndarray], scale: dict[str, float], folder: Path
) -> tuple[bool, bool, list[str], dict[str, float]]:
    """(new rule flagged any, old rule flagged any, flagged names, interval half-width by name) for one trial."""
    base_path, cand_path = folder / "base.json", folder / "cand.json"
    base_entries = _entries(doc, halves[0], {})
    cand_entries = _entries(doc, halves[1], scale)
    write_benchmark_json(base_path, base_entries)
    write_benchmark_json(cand_path, cand_entries)
    result = compare_benchmark_files(base_path, cand_path, min_effect=MIN_EFFECT)
    flagged = [row.name for row in result.rows if row.latency.failed]
    old = any(_old_rule(b.samples_s, c.samples_s) for b, c in zip(base_entries, cand_entries, strict=True))
    widths = {row.name: (row.latency.ci_high - row.latency.ci_low) / 2 for row in result.rows}
    return bool(flagged), old, flagged, widths


def _truncate(doc: dict[str, Any]) -> tuple[dict[str, Any], int]:
    """A copy whose benchmarks all hold the same number of rounds (the first n: the shared rounds)."""
    doc = copy.deepcopy(doc)
    n = min(len(b["stats"]["data"]) for b in doc["benchmarks"])
    for bench in doc["benchmarks"]:
        bench["stats"]["data"] = bench["stats"]["data"][:n]
    return doc, n


#: kinds of trial: (name, "flagged" expected, counts towards the exit status)
KINDS = (
    ("A/A", False, True),
    ("+3%", False, True),
    ("+10%", True, True),
    ("+10% cand", True, False),
    ("+10% one", True, False),
)


def injection(kind: str, doc: dict[str, Any], trial: int) -> dict[str, float]:
    """Slowdown factor per benchmark name of the candidate half for one kind of trial."""
    names = [b["name"] for b in doc["benchmarks"]]
    if kind == "+3%":
        return dict.fromkeys(names, 1.03)
    if kind == "+10%":
        return dict.fromkeys(names, 1.10)
    if kind == "+10% cand":  # what a slower candidate model does: its benchmarks on every backend
        return {b["name"]: 1.10 for b in doc["benchmarks"] if b.get("extra_info", {}).get("role") == "candidate"}
    if kind == "+10% one":
        return {names[trial % len(names)]: 1.10}  # a different benchmark each trial
    return {}


def cmd_halves(args: argparse.Namespace) -> int:
    paths = [Path(p) for p in args.inputs] or [DEFAULT_INPUT]
    if not args.inputs and not DEFAULT_INPUT.is_file():
        print(
            f"no {DEFAULT_INPUT}: run the cell (nox -s x86_cpu_int8), or record cell-like samples with "
            "`benchmarks/gate_power.py record OUT.json`, and pass the benchmark.json files",
            file=sys.stderr,
        )
        return 2
    ok = True
    start = time.perf_counter()
    for path in paths:
        doc, n = _truncate(read_benchmark_json(path))
        names = [b["name"] for b in doc["benchmarks"]]
        record = doc["machine_info"].get(CONTENTION_KEY)
        busy = record is not None and Contention.from_dict(record).busy
        state = Contention.from_dict(record).summary() if record else "no contention record"
        print(f"{path}: {len(names)} benchmarks x {n} rounds; machine during the run: {state}")
        if busy:
            print("  a busy run: its figures are shown, not held to the targets (its verdicts would be inconclusive)")
        spreads = []
        for b in doc["benchmarks"]:
            q25, q50, q75 = np.percentile(b["stats"]["data"], [25, 50, 75])
            spreads.append(f"{b['name']} {(q75 - q25) / q50:.3f}")
        print("  round spread (IQR/median): " + ", ".join(spreads))
        expected = {kind: flagged for kind, flagged, _ in KINDS}
        counted = {kind for kind, _, counts in KINDS if counts}
        with tempfile.TemporaryDirectory() as tmp:
            for split_name, split in (("stratified random halves", "random"), ("consecutive halves", "consecutive")):
                if split == "consecutive" and not args.consecutive:
                    continue
                counts = {k: [0, 0] for k in expected}  # [new right, old right]
                widths: dict[str, list[float]] = {name: [] for name in names}
                trials = args.trials if split == "random" else 1
                for t in range(trials):
                    halves = (
                        stratified_halves(n, np.random.default_rng(t)) if split == "random" else consecutive_halves(n)
                    )
                    line = []
                    for kind in expected:
                        new, old, flagged, width = half_trial(doc, halves, injection(kind, doc, t), Path(tmp))
                        if kind == "A/A":
                            for name, w in width.items():
                                widths[name].append(w)
                        counts[kind][0] += new == expected[kind]
                        counts[kind][1] += old == expected[kind]
                        shown = ",".join(f.split("[")[-1].rstrip("]") for f in flagged) or "-"
                        line.append(f"{kind} {'FLAGGED' if new else 'quiet'}({shown}) old:{'F' if old else 'q'}")
                    print(f"  {split_name} trial {t + 1:2d}: " + "; ".join(line))
                print(f"  {split_name}, {trials} trial(s), {len(names)} benchmarks per comparison:")
                half = ", ".join(f"{name.split('[')[-1].rstrip(']')} {np.median(w):.1%}" for name, w in widths.items())
                print(f"    interval half-width (A/A, median over trials): {half}")
                for kind, (new_right, old_right) in counts.items():
                    want = "flagged" if expected[kind] else "quiet (within noise)"
                    hit = new_right >= TARGET * trials
                    if split == "random" and kind in counted and not args.informational and not busy:
                        ok &= hit
                    target = f"{'PASS' if hit else 'MISS'} (target >= {int(np.ceil(TARGET * trials))})"
                    print(
                        f"    {kind:>9}: {want} in {new_right}/{trials} "
                        f"{target if kind in counted else '(stress test, no target)'}; "
                        f"previous rule {old_right}/{trials}"
                    )
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


# -- live ---------------------------------------------------------------------------------------

PILOT_RUNS = 50  # base runs whose median sets the injected delay (fewer: one load burst can inflate it)
LIVE_KINDS = {"A/A": 0.0, "+10%": 0.10, "+3%": 0.03}
LIVE_EXPECTED = {"A/A": "within noise", "+10%": "regression", "+3%": "within noise"}


class SlowedRunner(OnnxrtRunner):
    """ONNX Runtime runner that busy-waits ``delay_s`` after every run (an injected, timed slowdown)."""

    def __init__(self, *args: Any, delay_s: float = 0.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.delay_s = delay_s

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = super().infer_impl(feed)
        if self.delay_s > 0:
            end = time.perf_counter() + self.delay_s
            while time.perf_counter() < end:  # busy: the core stays occupied, like slower code would
                pass
        return out


def live_trial(
    model: Path, slowdown: float, feed: dict[str, np.ndarray], rounds: int, threads: int
) -> tuple[LatencyVerdict, float, Contention]:
    """One trial: pilot the base median, then base vs candidate interleaved."""
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
        m = measure_interleaved({"base": base, "candidate": cand}, feed, config)
    b, c = m["base"].samples_s, m["candidate"].samples_s
    injected = 1.0 + cand.delay_s / statistics.median(b)
    verdict = compare_latency(b, c, min_effect=MIN_EFFECT, busy=m.contention.reasons())
    return verdict, injected, m.contention


def cmd_live(args: argparse.Namespace) -> int:
    start = time.perf_counter()
    results: dict[str, list[LatencyVerdict]] = {k: [] for k in LIVE_KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        model = build_model(Path(tmp) / "convnet.onnx", size=args.size)
        feed = {"input": np.random.default_rng(1).standard_normal((1, 3, args.size, args.size)).astype(np.float32)}
        print(f"model: Conv x4 on 1x3x{args.size}x{args.size}, {args.threads} thread(s), {args.rounds} rounds a trial")
        with spinners(args.busy):
            for trial in range(args.trials):
                for kind, slowdown in LIVE_KINDS.items():
                    verdict, injected, state = live_trial(model, slowdown, feed, args.rounds, args.threads)
                    results[kind].append(verdict)
                    print(f"trial {trial + 1:2d} {kind:>5} (x{injected:.3f}): {verdict.status:<12} {verdict.message}")
                    if state.busy:
                        print(f"    machine {state.summary()}")
    print()
    ok = True
    for kind, verdicts in results.items():
        judged = [v for v in verdicts if not v.inconclusive]
        hits = sum(v.status == LIVE_EXPECTED[kind] for v in judged)
        passed = bool(judged) and hits >= TARGET * len(judged)
        ok &= passed
        print(
            f"{kind:>5}: {LIVE_EXPECTED[kind]!r} in {hits}/{len(judged)} judged trials "
            f"({len(verdicts) - len(judged)} inconclusive: machine busy) {'PASS' if passed else 'MISS'}"
        )
    print(f"total {time.perf_counter() - start:.0f} s")
    return 0 if ok else 1


# -- main ---------------------------------------------------------------------------------------


def parse(argv: Sequence[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    sub = ap.add_subparsers(dest="mode")
    h = sub.add_parser("halves", help="split real per-round samples into halves (default)")
    h.add_argument("inputs", nargs="*", help=f"benchmark.json files (default {DEFAULT_INPUT})")
    h.add_argument("--trials", type=int, default=10)
    h.add_argument("--consecutive", action="store_true", help="also show first-vs-second-half trials")
    h.add_argument(
        "--informational", action="store_true", help="exit 0 whatever the counts (for runs that are busy on purpose)"
    )
    r = sub.add_parser("record", help="measure a cell-like benchmark.json with the real harness")
    r.add_argument("out", type=Path)
    r.add_argument("--rounds", type=int, default=50, help="at least this many rounds (a cell's min_rounds)")
    r.add_argument("--min-time", type=float, default=10.0, help="and at least this long (a cell's min_time_s)")
    r.add_argument("--size", type=int, default=224)
    r.add_argument("--busy", type=int, default=0, help="CPU-bound processes beside the measurement")
    p = sub.add_parser("probe", help="contention signals with 0 / 2 / 1 CPU-bound processes beside")
    p.add_argument("--repeats", type=int, default=4)
    p.add_argument("--rounds", type=int, default=100)
    p.add_argument("--size", type=int, default=112)
    live = sub.add_parser("live", help="live injection into a second session of one model")
    live.add_argument("--trials", type=int, default=10)
    live.add_argument("--rounds", type=int, default=60)
    live.add_argument("--threads", type=int, default=1)
    live.add_argument("--size", type=int, default=96)
    live.add_argument("--busy", type=int, default=0)
    argv = list(argv)
    if not argv or argv[0] not in {"halves", "record", "probe", "live", "-h", "--help"}:
        argv = ["halves", *argv]
    return ap.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    return {"halves": cmd_halves, "record": cmd_record, "probe": cmd_probe, "live": cmd_live}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
