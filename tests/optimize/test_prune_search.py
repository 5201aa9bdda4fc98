"""The pruning search's decisions where bisection's assumptions fail: a latency that is not monotone
in the pruning ratio, noisy paired measurements, and real ONNX Runtime measurements of tiny models."""

from __future__ import annotations

import copy
import json
import statistics
from pathlib import Path
from typing import Any

import pytest
import torch
from prune_fakes import LAYER4, SHAPE, ArchMeter, example, mac_latency, search, table_latency, tiny

from edgematrix.backends.meter import LocalMeter
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure import harness
from edgematrix.measure.harness import LatencyConfig
from edgematrix.optimize.prune import (
    LatencyCache,
    PruneSettings,
    SearchResult,
    channel_counts,
    paired_speedup,
    prune_model,
    search_pruning_ratio,
)

# Speedup vs the unpruned model by the last stage's width (tiny UFLD, width 32: the stage is 256 wide).
# The trend is (256 / width)^1.5, except around 2×: 160 channels suit the kernels and run faster than
# 152 or 168; 144 and 136 overshoot. Only 160 lands in [2.0, 2.2].
BUMPY = {w: (256 / w) ** 1.5 for w in range(8, 257, 8)} | {
    184: 1.55, 176: 1.62, 168: 1.86, 160: 2.12, 152: 1.93, 144: 2.25, 136: 2.30, 128: 2.6,
}  # fmt: skip


def bisect(model: torch.nn.Module, speedups: dict[int, float], landing: tuple[float, float]) -> tuple[bool, dict]:
    """Plain bisection on the ratio, assuming more pruning is always faster (what monotone searches do)."""
    lo, hi, seen = 0.0, 0.9, {}
    for _ in range(12):
        mid = (lo + hi) / 2
        pruned = prune_model(copy.deepcopy(model), example(), mid, round_to=8, ignored_layers=("pool", "cls"))
        width = channel_counts(pruned)[LAYER4][1]
        if width in seen:
            break  # the bracket holds no other width of the last stage
        seen[width] = speedups[width]
        if landing[0] <= seen[width] <= landing[1]:
            return True, seen
        lo, hi = (mid, hi) if seen[width] < landing[0] else (lo, mid)
    return False, seen


def test_non_monotone_latency_bisection_misses_and_the_search_lands(tmp_path: Path) -> None:
    model = tiny(width=32, aux=False)
    landed, seen = bisect(model, BUMPY, (2.0, 2.2))
    # bisection brackets 2× between 152 (1.93×) and 144 (2.25×) and stops: it never looks at 160
    assert not landed and 160 not in seen and {152, 144} <= set(seen)

    meter = ArchMeter(table_latency(BUMPY))
    res = search(tmp_path, meter, 2.0, model=model, round_to=8, tolerance=0.1, max_probes=8)
    assert res.landed and res.stop == "landed" and res.chosen is not None
    assert res.chosen.speedup == pytest.approx(2.12) and "/160/" in f"{res.chosen.channels}/"
    # it bracketed 2× between 152 and 144 as bisection did, then scanned the architectures the trend
    # puts within reach, although both neighbours on the trend's side (176, 152) measured below
    widths = [int(p.channels.split("/")[3]) for p in res.probes]
    assert widths == [176, 144, 152, 160]
    assert any(p.ratio > res.chosen.ratio and p.speedup < res.chosen.speedup for p in res.probes)
    assert res.measurements == 8 * len(res.probes) + 8  # + the second session of the landing probe


def test_no_width_in_range_is_reported_with_its_neighbours(tmp_path: Path) -> None:
    # the same curve without the kernel-friendly 160: nothing lands between 1.93× and 2.25×
    table = BUMPY | {160: 1.90, 176: 1.78}
    res = search(tmp_path, ArchMeter(table_latency(table)), 2.0, round_to=8, tolerance=0.1, max_probes=12)
    assert not res.landed and res.stop == "exhausted" and len(res.probes) < 12
    reason = res.reason
    assert reason.startswith("not landed: every architecture predicted within reach of 2.00..2.20× was measured")
    assert "nearest below: ratio" in reason and "1.93×" in reason and "nearest above: ratio" in reason
    assert "2.25×" in reason and "largest ratio tried" in reason
    # every width whose trend prediction is within reach was measured, on both sides, and no more
    widths = sorted(int(p.channels.split("/")[3]) for p in res.probes)
    assert widths == [128, 136, 144, 152, 160, 168, 176]
    # the chosen one is the nearest to the range: 1.93× is 3.6% short, 2.25× is 2.3% over
    assert res.chosen is not None and res.chosen.speedup == pytest.approx(2.25)


@pytest.mark.parametrize(
    ("at_160", "at_156", "widths", "chosen"),
    [
        (2.01, 2.09, [176, 152, 160, 156], 2.09),  # 156 lands in the inner half: done
        (2.01, 2.03, [176, 152, 160, 156], 2.03),  # 156 is nearer, still outer; nothing untried is nearer
        (2.19, 2.09, [176, 152, 160, 164], 2.19),  # 164 measures 1.90: 160 stays the nearest landed
    ],
)
def test_a_landing_near_an_edge_keeps_probing_towards_the_centre(
    tmp_path: Path, at_160: float, at_156: float, widths: list[int], chosen: float
) -> None:
    # round_to 4: the last stage steps 164, 160, 156, 152; the range is 2.00..2.20x, its centre 2.10x
    table = {w: (256 / w) ** 1.5 for w in range(4, 257, 4)} | {
        176: 1.70, 164: 1.90, 160: at_160, 156: at_156, 152: 2.3,
    }  # fmt: skip
    res = search(tmp_path, ArchMeter(table_latency(table)), 2.0, round_to=4, tolerance=0.1, max_probes=8)
    # 160 lands, but in the outer half of the range (2.01 or 2.19): the search goes on with the
    # architecture predicted nearer the centre (156 when 160 measured low, 164 when it measured high)
    # until one lands in the inner half or none untried is predicted nearer; the landed probe nearest
    # the centre is chosen
    assert [int(p.channels.split("/")[3]) for p in res.probes] == widths
    assert (
        res.landed and res.stop == "landed" and res.chosen is not None and res.chosen.speedup == pytest.approx(chosen)
    )


def _check_stages(res: SearchResult, cache_path: Path) -> None:
    """Every probe's blocks match its decisions: `pairs` blocks, and one more batch (a session of its
    own) each time the estimate was inside the range and the interval crossed an edge, or landed in
    a first session."""
    s = res.settings
    stored = json.loads(cache_path.read_text())
    for p in res.probes:
        assert p.blocks == s.pairs * (1 + p.remeasured)
        ratios = [b["unpruned_ms"] / b["pruned_ms"] for b in stored[p.arch_key]["blocks"]]
        assert (p.speedup, p.low, p.high) == paired_speedup(ratios[: p.blocks], s.confidence)
        for stage in range(p.remeasured):
            est, low, high = paired_speedup(ratios[: s.pairs * (1 + stage)], s.confidence)
            crosses = low < s.landing[0] or high > s.landing[1]
            assert s.landing[0] <= est <= s.landing[1] and (crosses or stage == 0)


def test_noisy_pairs_land_with_an_interval_inside_the_range(tmp_path: Path) -> None:
    meter = ArchMeter(mac_latency(), noise=0.02, seed=3)  # ±2% per measurement, as on a quiet host
    res = search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=10)
    assert res.landed and res.chosen is not None
    assert 2.0 <= res.chosen.low < res.chosen.speedup < res.chosen.high <= 2.2
    # the architecture it picked really is in the range (the meter's noiseless latency)
    pruned = prune_model(
        copy.deepcopy(tiny(width=32, aux=False)),
        example(),
        res.chosen.ratio,
        round_to=4,
        ignored_layers=("pool", "cls"),
    )
    truth = mac_latency()(channel_counts(tiny(width=32, aux=False))) / mac_latency()(channel_counts(pruned))
    assert 2.0 <= truth <= 2.2
    _check_stages(res, tmp_path / "latency.json")
    assert 0 < res.noise < 0.05 and "landed: ratio" in res.reason


def test_too_noisy_pairs_do_not_land_and_say_so(tmp_path: Path) -> None:
    meter = ArchMeter(mac_latency(), noise=0.2, seed=1)  # a busy host: ±20% per measurement
    res = search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=6)
    assert not res.landed and res.noise > 0.1
    _check_stages(res, tmp_path / "latency.json")
    # probes that measured inside the range were measured again, up to remeasure (2) more batches
    inside = [p for p in res.probes if 2.0 <= p.speedup <= 2.2]
    assert inside and all(p.remeasured == 2 and p.blocks == 24 for p in inside)
    assert res.chosen in inside and res.chosen.verdict == "crosses"
    assert res.reason.startswith(f"not landed: ratio {res.chosen.ratio:.3f} measures {res.chosen.speedup:.2f}×")
    assert "the pairs are too noisy on this machine to tell" in res.reason
    assert f"noise of the pairs ±{res.noise:.1%}" in res.reason


# ------------------------------------------------------------------------------ a busy machine


def test_a_busy_machine_stops_the_search_and_says_so(tmp_path: Path) -> None:
    # the meter reports every measurement as taken on a busy machine (its contention verdict)
    meter = ArchMeter(mac_latency(), busy=lambda call: True)
    res = search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=8)
    # the first probe was measured again twice, stayed busy, and the search stopped there: busy figures
    # would steer it, not only fail to land it
    assert not res.landed and res.stop == "busy" and len(res.probes) == 1 and res.chosen is res.probes[0]
    c = res.chosen
    assert c.contended and c.remeasured == 2 and c.blocks == c.busy_blocks == 24 and c.sessions == 3
    assert res.reason.startswith(f"not landed: the machine was busy: ratio {c.ratio:.3f} measures {c.speedup:.2f}×")
    assert "24 of its 24 blocks ran while other work held the CPUs" in res.reason
    assert "re-run when the machine is quiet" in res.reason
    assert "24 of 24 blocks measured on a busy machine" in res.reason
    # busy blocks are cached with their flag but never reused: a quiet machine measures them again
    quiet = ArchMeter(mac_latency(), busy=lambda call: False)
    again = search(tmp_path, quiet, 2.0, tolerance=0.1, max_probes=8)
    assert again.landed and again.chosen is not None and again.chosen.busy_blocks == 0
    assert all(not p.cached for p in again.probes) and again.measurements == 8 * len(again.probes) + 8


def test_a_busy_burst_is_measured_again_and_passes(tmp_path: Path) -> None:
    # busy during the first probe's first batch only (8 blocks of 2 calls), quiet afterwards
    meter = ArchMeter(mac_latency(), busy=lambda call: call < 16)
    res = search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=8)
    first = res.probes[0]
    # one more batch made the busy blocks a minority (8 of 16): the search went on and landed
    assert first.busy_blocks == 8 and first.blocks == 16 and first.remeasured == 1 and not first.contended
    assert res.landed and res.stop == "landed" and res.chosen is not None and res.chosen.busy_blocks == 0


def test_a_few_busy_blocks_are_reported_but_do_not_refuse(tmp_path: Path) -> None:
    # one measurement in ten on a busy moment: a minority of any probe's blocks
    meter = ArchMeter(mac_latency(), busy=lambda call: call % 10 == 3)
    res = search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=8)
    assert res.landed and res.chosen is not None and not res.chosen.contended
    busy, blocks = res.busy_blocks
    assert 0 < busy < blocks / 2 and f"{busy} of {blocks} blocks measured on a busy machine" in res.reason


# ------------------------------------------------------------------------ real ONNX Runtime


def test_real_onnxruntime_blocks_are_interleaved_and_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgematrix.export.onnx_export import export_onnx

    model = tiny(width=16, aux=False)

    def deploy(m: torch.nn.Module, folder: Path) -> Path:
        path = folder / "fp32.onnx"
        export_onnx(m, SHAPE, path, output_names=("loc_row", "loc_col", "exist_row", "exist_col"))
        return path

    blocks_seen: list[dict[str, Any]] = []
    measure = harness.measure_interleaved

    def spy(runners: Any, feeds: Any, config: Any, progress: Any = None) -> Any:
        out = measure(runners, feeds, config, progress)
        blocks_seen.append({k: v.rounds for k, v in out.items()})
        return out

    monkeypatch.setattr(harness, "measure_interleaved", spy)
    config = LatencyConfig(warmup=1, min_rounds=5, max_rounds=40, min_time_s=0.05, max_time_s=2.0)
    meter = LocalMeter("onnxruntime", config, {"providers": ("CPUExecutionProvider",), "intra_op_threads": 1})
    settings = PruneSettings(speedup=1.3, round_to=4, tolerance=0.5, max_probes=2, pairs=3, remeasure=0)

    def run() -> SearchResult:
        return search_pruning_ratio(
            model, input_shape=SHAPE, settings=settings, meter=meter, deploy=deploy,
            cache=LatencyCache(tmp_path / "latency.json"), work_dir=tmp_path / "work", backend="onnxruntime",
            precision="fp32",
        )  # fmt: skip

    res = run()
    assert 1 <= len(res.probes) <= 2 and res.measurements == 3 * len(res.probes)
    # every block: both models in the same interleaved rounds, 5 to 40 of them
    assert len(blocks_seen) == res.measurements
    assert all(
        set(b) == {"unpruned", "pruned"} and b["unpruned"] == b["pruned"] and 5 <= b["pruned"] <= 40
        for b in blocks_seen
    )
    stored = json.loads((tmp_path / "latency.json").read_text())
    for p in res.probes:
        blocks = stored[p.arch_key]["blocks"]
        assert len(blocks) == 3 and all(b["unpruned_ms"] > 0 and b["pruned_ms"] > 0 for b in blocks)
        assert p.speedup == pytest.approx(statistics.median(b["unpruned_ms"] / b["pruned_ms"] for b in blocks))
        assert p.latency_ms == pytest.approx(statistics.median(b["pruned_ms"] for b in blocks))
        assert p.low <= p.speedup <= p.high and p.params < sum(x.numel() for x in model.parameters())
        assert stored[p.arch_key]["channels"] == channel_counts(
            prune_model(copy.deepcopy(model), example(), p.ratio, round_to=4, ignored_layers=("pool", "cls"))
        )
    assert res.chosen is not None and res.reason
    # every block carries the harness's contention verdict for its rounds
    assert all(isinstance(b["busy"], bool) for p in res.probes for b in stored[p.arch_key]["blocks"])
    # the same search again: the first probe is the same architecture; its quiet blocks come from the
    # cache and only its busy ones (if this machine was busy) are measured again
    first = res.probes[0]
    quiet = [b for b in stored[first.arch_key]["blocks"] if not b["busy"]]
    blocks_seen.clear()
    again = run()
    assert again.probes[0].arch_key == first.arch_key
    assert json.loads((tmp_path / "latency.json").read_text())[first.arch_key]["blocks"][: len(quiet)] == quiet
    assert again.probes[0].cached == (len(quiet) == 3)
    assert len(blocks_seen) == again.measurements >= 3 - len(quiet)


def test_real_contention_refuses_to_land(tmp_path: Path) -> None:
    """One CPU-bound process per CPU beside the search: the harness's contention record marks the
    blocks busy, and the probe is refused although its interval sits in a wide landing range."""
    import os
    import subprocess
    import sys

    from edgematrix.export.onnx_export import export_onnx

    model = tiny(width=16, aux=False)

    def deploy(m: torch.nn.Module, folder: Path) -> Path:
        path = folder / "fp32.onnx"
        export_onnx(m, SHAPE, path, output_names=("loc_row", "loc_col", "exist_row", "exist_col"))
        return path

    config = LatencyConfig(warmup=1, min_rounds=5, max_rounds=40, min_time_s=0.3, max_time_s=3.0)
    meter = LocalMeter("onnxruntime", config, {"providers": ("CPUExecutionProvider",), "intra_op_threads": 1})
    settings = PruneSettings(
        speedup=1.2, bound="nearest", tolerance=0.9, round_to=4, max_probes=1, pairs=3, remeasure=1
    )
    hogs = [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 1)
    ]  # fmt: skip
    try:
        res = search_pruning_ratio(
            model, input_shape=SHAPE, settings=settings, meter=meter, deploy=deploy,
            cache=LatencyCache(tmp_path / "latency.json"), work_dir=tmp_path / "work", backend="onnxruntime",
            precision="fp32",
        )  # fmt: skip
    finally:
        for hog in hogs:
            hog.kill()
            hog.wait()
    (p,) = res.probes
    assert 0.12 <= p.speedup <= 2.28 and p.contended and p.busy_blocks == p.blocks == 6 and p.remeasured == 1
    assert res.stop == "busy" and not res.landed and res.reason.startswith("not landed: the machine was busy")
    assert "limit" in p.machine  # the contention record's reasons, e.g. "other processes' CPU 95% (limit 25%)"


def test_rounds_run_the_companions_in_order_and_key_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search told to measure as the check does: the FP32 reference in every round, before the pair."""
    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.optimize.prune import RoundMember

    model = tiny(width=16, aux=False)
    outputs = ("loc_row", "loc_col", "exist_row", "exist_col")

    def deploy(m: torch.nn.Module, folder: Path) -> Path:
        path = folder / "fp32.onnx"
        export_onnx(m, SHAPE, path, output_names=outputs)
        return path

    reference = tmp_path / "reference.onnx"
    export_onnx(model, SHAPE, reference, output_names=outputs)
    opts = {"providers": ("CPUExecutionProvider",), "intra_op_threads": 1}
    rounds = [
        RoundMember("reference", "onnxruntime", reference, opts),
        RoundMember("candidate", "onnxruntime", "probe", opts),
        RoundMember("unpruned", "onnxruntime", "unpruned", opts),
    ]
    orders: list[list[str]] = []
    measure = harness.measure_interleaved

    def spy(runners: Any, feeds: Any, config: Any, progress: Any = None) -> Any:
        orders.append(list(runners))
        return measure(runners, feeds, config, progress)

    monkeypatch.setattr(harness, "measure_interleaved", spy)
    config = LatencyConfig(warmup=1, min_rounds=5, max_rounds=40, min_time_s=0.05, max_time_s=2.0)
    meter = LocalMeter("onnxruntime", config, opts)
    settings = PruneSettings(speedup=1.3, round_to=4, tolerance=0.5, max_probes=1, pairs=3, remeasure=0)

    def run(members: list[RoundMember], feed: dict[str, Any] | None = None) -> SearchResult:
        return search_pruning_ratio(
            model, input_shape=SHAPE, settings=settings, meter=meter, deploy=deploy,
            cache=LatencyCache(tmp_path / "latency.json"), work_dir=tmp_path / "work", backend="onnxruntime",
            precision="fp32", rounds=members, feed=feed,
        )  # fmt: skip

    with_reference = run(rounds)
    assert orders == [["reference", "candidate", "unpruned"]] * 3 and with_reference.measurements == 3
    # the same probe measured as a pair alone is another measurement: what runs beside it is in the key
    orders.clear()
    alone = run([])
    assert orders == [["unpruned", "pruned"]] * 3 and alone.measurements == 3
    assert alone.probes[0].ratio == with_reference.probes[0].ratio
    assert alone.probes[0].arch_key != with_reference.probes[0].arch_key
    # so is the input the rounds run: a given frame (as the check runs it) is another key again
    frame = {"input": example().numpy()}
    on_frame = run(rounds, frame)
    assert on_frame.measurements == 3
    assert on_frame.probes[0].arch_key not in {alone.probes[0].arch_key, with_reference.probes[0].arch_key}
    # the same frame again: from the cache (but for blocks measured on a busy machine, which are redone)
    stored = json.loads((tmp_path / "latency.json").read_text())[on_frame.probes[0].arch_key]["blocks"]
    assert run(rounds, {"input": example().numpy()}).measurements == sum(1 for b in stored if b["busy"])
    with pytest.raises(EdgeMatrixError, match="need an 'unpruned' and a 'probe' member"):
        run(rounds[:2])
    with pytest.raises(EdgeMatrixError, match="does not exist"):
        run([RoundMember("reference", "onnxruntime", tmp_path / "missing.onnx", opts), *rounds[1:]])
    with pytest.raises(EdgeMatrixError, match="rounds and feed need a LocalMeter"):
        search(tmp_path, ArchMeter(mac_latency()), 2.0, rounds=rounds)
