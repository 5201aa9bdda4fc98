"""Structured pruning (torch-pruning), the candidate architectures, the sealed latency cache and the search
on a monotone latency model (fake meter). Non-monotone tables, noise and real ONNX Runtime runs: test_prune_search.py."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from prune_fakes import SHAPE, ArchMeter, example, mac_latency, search, tiny

from edgematrix.core.cache import SEAL_SUFFIX
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.meter import LatencyMeter
from edgematrix.optimize.prune import (
    LatencyCache,
    PruneSettings,
    architecture_key,
    candidate_ratios,
    channel_counts,
    paired_speedup,
    prune_model,
)


def test_prune_rounds_channels_and_keeps_ignored_layers() -> None:
    model = tiny()
    before = channel_counts(model)
    cls_weight = model.cls[2].weight.detach().clone()
    pruned = prune_model(copy.deepcopy(model), example(), 0.4, round_to=8, ignored_layers=("pool", "cls"))
    after = channel_counts(pruned)
    convs = [n for n in after if n.startswith("backbone") and "downsample" not in n]
    assert all(after[n][1] % 8 == 0 for n in convs)
    assert all(after[n][1] < before[n][1] for n in convs)
    # 40% of 16/32/64/128 channels, rounded to multiples of 8
    assert after["backbone.conv1"][1] == 8 and after["backbone.layer4.1.conv2"][1] == 72
    # the ignored head keeps its outputs and its weights; the pool keeps its 8 output channels
    assert after["pool"][1] == before["pool"][1] == 8
    assert after["cls.2"] == before["cls.2"] and torch.equal(pruned.cls[2].weight, cls_weight)
    assert after["pool"][0] == after["backbone.layer4.1.conv2"][1]  # the pool's input follows the backbone
    # outputs keep their shapes in eval and training mode (the auxiliary branch was pruned consistently)
    x = example()
    with torch.no_grad():
        ref = model(x)
        out = pruned(x)
        pruned.train()
        train_out = pruned(x)
    assert [o.shape for o in out] == [o.shape for o in ref]
    assert len(train_out) == 5 and train_out[4].shape[1] == 5


def test_round_to_is_configurable_and_zero_ratio_is_identity() -> None:
    pruned = prune_model(tiny(), example(), 0.3, round_to=4, ignored_layers=("pool", "cls"))
    widths = {c[1] for n, c in channel_counts(pruned).items() if n.startswith("backbone")}
    assert all(w % 4 == 0 for w in widths) and any(w % 8 for w in widths)  # 12 = 16 * 0.7 rounded to 4
    model = tiny()
    assert channel_counts(prune_model(model, example(), 0.0)) == channel_counts(tiny())


def test_pruning_does_not_move_batchnorm_statistics() -> None:
    model = tiny()
    bn = model.backbone.layer1[0].bn1
    bn.running_mean.uniform_(-1, 1)
    means = bn.running_mean.clone()
    pruned = prune_model(model, example(), 0.5, round_to=4, ignored_layers=("pool", "cls"))
    kept = pruned.backbone.layer1[0].bn1.running_mean
    # every kept channel's statistic is one of the originals (selected, not updated), momentum restored
    assert all(any(torch.isclose(v, means).tolist()) for v in kept)
    assert pruned.backbone.layer1[0].bn1.momentum == 0.1


def test_unknown_ignored_layer_names_the_modules() -> None:
    with pytest.raises(EdgeMatrixError, match=r"'head'.*backbone, pool, cls"):
        prune_model(tiny(), example(), 0.3, ignored_layers=("head",))
    with pytest.raises(EdgeMatrixError, match="ratio"):
        prune_model(tiny(), example(), 1.0)


def test_architecture_key_covers_what_determines_latency() -> None:
    counts = channel_counts(tiny())
    key = architecture_key(counts, SHAPE, "onnxruntime", "int8", "m")
    assert key == architecture_key(json.loads(json.dumps(counts)), list(SHAPE), "onnxruntime", "int8", "m")
    others = [
        architecture_key(counts, (1, 3, 64, 192), "onnxruntime", "int8", "m"),
        architecture_key(counts, SHAPE, "openvino", "int8", "m"),
        architecture_key(counts, SHAPE, "onnxruntime", "fp32", "m"),
        architecture_key(counts, SHAPE, "onnxruntime", "int8", "other-host"),
        architecture_key(channel_counts(tiny(width=8)), SHAPE, "onnxruntime", "int8", "m"),
    ]
    assert len({key, *others}) == 6


# ------------------------------------------------------------------------------ candidates


def test_candidates_are_exactly_the_architectures_of_the_ratios() -> None:
    model = tiny(width=16, aux=False)
    cands = candidate_ratios(model, round_to=8, ignored_layers=("pool", "cls"), max_ratio=0.9)
    assert cands == sorted(cands) and cands[0] > 0 and cands[-1] < 0.9
    # the widest stage (128) changes width every 8/128 of the ratio: 14 steps below 0.9, plus the interval up to it
    assert len(cands) == 15

    def arch(ratio: float) -> str:
        pruned = prune_model(copy.deepcopy(model), example(), ratio, round_to=8, ignored_layers=("pool", "cls"))
        return json.dumps(channel_counts(pruned), sort_keys=True)

    # one candidate per architecture: all distinct ...
    by_candidate = [arch(r) for r in cands]
    assert len(set(by_candidate)) == len(cands)
    # ... and every ratio on a grid gives one of them (torch-pruning's rounding, predicted exactly)
    grid = {arch(r) for r in [i / 25 for i in range(1, 23)]}
    assert grid <= set(by_candidate)
    with pytest.raises(EdgeMatrixError, match="round_to"):
        candidate_ratios(model, round_to=0)
    assert (
        candidate_ratios(model, round_to=128, ignored_layers=("pool", "cls")) == []
    )  # no layer can lose 128 channels and keep any


def test_ignored_layers_add_no_candidates() -> None:
    model = tiny(width=32, aux=False)
    everything = candidate_ratios(model, round_to=8, ignored_layers=(), max_ratio=0.9)
    kept_head = candidate_ratios(model, round_to=8, ignored_layers=("pool", "cls"), max_ratio=0.9)
    # cls.0 (Linear, 32 outputs) and cls.2 add steps of their own when they are not ignored
    assert set(kept_head) != set(everything) and len(everything) > len(kept_head)


# ------------------------------------------------------------------------------ paired speedup


def test_paired_speedup_is_the_median_with_a_bootstrap_interval() -> None:
    est, low, high = paired_speedup([2.0] * 6, 0.9)
    assert est == pytest.approx(2.0) and low == pytest.approx(2.0) and high == pytest.approx(2.0)
    ratios = [1.9, 2.0, 2.05, 2.1, 2.2, 2.4]
    est, low, high = paired_speedup(ratios, 0.9)
    assert est == pytest.approx((2.05 * 2.1) ** 0.5)  # median of the logs: the geometric middle
    assert 1.9 <= low < est < high <= 2.4
    assert paired_speedup(ratios, 0.9) == (est, low, high)  # seeded by the data: reproducible
    wide = paired_speedup(ratios, 0.99)
    assert wide[1] <= low and wide[2] >= high
    with pytest.raises(EdgeMatrixError, match="positive, finite"):
        paired_speedup([2.0, 0.0, 1.0])


# ------------------------------------------------------------------------------ search, monotone


def test_fake_meter_is_a_latency_meter() -> None:
    assert isinstance(ArchMeter(mac_latency()), LatencyMeter)


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_search_lands_within_tolerance_and_records_every_probe(tmp_path: Path, speedup: float) -> None:
    meter = ArchMeter(mac_latency())
    res = search(tmp_path, meter, speedup, tolerance=0.1, max_probes=8)
    assert res.landed and res.stop == "landed" and res.chosen is not None
    # bound "at_least" (the default): N× is a floor, the landing range is [N, N × 1.1], and the whole
    # interval is inside it (a noiseless meter: the interval is the point)
    assert speedup <= res.chosen.low <= res.chosen.speedup <= res.chosen.high <= speedup * 1.1
    assert res.chosen.verdict == "inside" and res.reason.startswith("landed: ratio")
    # the chosen probe's speedup is what the meter says for that architecture
    assert res.chosen.speedup == pytest.approx(res.chosen.baseline_ms / res.chosen.latency_ms)
    assert res.baseline_ms == pytest.approx(mac_latency()(channel_counts(tiny(width=32, aux=False))))
    assert 1 <= len(res.probes) <= 8 and res.chosen is res.probes[-1]
    # every probe: `pairs` blocks of two calls, unpruned and pruned alternating their order (AB, BA, ...)
    # (the landing one twice: a second session, fresh runners, confirms it)
    assert all(p.blocks == 8 and p.remeasured == 0 and not p.cached for p in res.probes[:-1])
    assert res.chosen.blocks == 16 and res.chosen.remeasured == 1 and res.chosen.sessions == 2
    assert len(meter.calls) == 2 * res.measurements == 2 * 8 * (len(res.probes) + 1)
    first = [c.parent.name == "unpruned" for c in meter.calls[:16]]
    assert first == [True, False, False, True] * 4
    # no architecture twice, more pruning is more speed on a monotone meter
    assert len({p.arch_key for p in res.probes}) == len(res.probes)
    ordered = sorted(res.probes, key=lambda p: p.ratio)
    assert all(a.speedup <= b.speedup for a, b in itertools.pairwise(ordered))
    saved = res.as_dict()
    assert saved["landed"] and len(saved["probes"]) == len(res.probes) and saved["reason"] == res.reason
    assert saved["landing"] == [speedup, pytest.approx(speedup * 1.1)]


def test_nearest_bound_lands_on_either_side(tmp_path: Path) -> None:
    settings = PruneSettings(speedup=2.0, tolerance=0.1, bound="nearest")
    assert settings.landing == (pytest.approx(1.8), pytest.approx(2.2))
    assert PruneSettings(speedup=2.0, tolerance=0.1).landing == (2.0, pytest.approx(2.2))
    # what the search aims at: the request for nearest, the log-middle of [N, N(1 + tol)] for at_least
    assert PruneSettings(speedup=1.2, tolerance=0.9, bound="nearest").centre == 1.2
    assert PruneSettings(speedup=2.0, tolerance=0.1).centre == pytest.approx((2.0 * 2.2) ** 0.5)
    res = search(tmp_path, ArchMeter(mac_latency()), 2.0, tolerance=0.1, bound="nearest")
    assert res.landed and res.chosen is not None and 1.8 <= res.chosen.low <= res.chosen.high <= 2.2
    with pytest.raises(EdgeMatrixError, match="bound must be 'at_least' or 'nearest'"):
        search(tmp_path, ArchMeter(mac_latency()), 2.0, bound="floor")


def test_unreachable_speedup_says_the_largest_ratio_and_its_speedup(tmp_path: Path) -> None:
    meter = ArchMeter(mac_latency(overhead_ms=50.0))  # overhead dominates: 10x is out of reach
    res = search(tmp_path, meter, 10.0, max_probes=8, max_ratio=0.8)
    assert not res.landed and res.stop == "unreachable" and len(res.probes) < 8
    largest = max(res.probes, key=lambda p: p.ratio)
    # the most pruned candidate was measured to be sure, and it is the one chosen (nearest the range)
    assert (
        largest.ratio
        == candidate_ratios(tiny(width=32, aux=False), round_to=4, ignored_layers=("pool", "cls"), max_ratio=0.8)[-1]
    )
    assert res.chosen is largest and largest.speedup < 2
    assert (
        f"10× is out of reach within max_ratio 0.8: the most pruned architecture measures {largest.speedup:.2f}×"
        in (res.reason)
    )
    assert f"largest ratio tried {largest.ratio:.3f}" in res.reason and "noise of the pairs ±0.0%" in res.reason


def test_search_validates_settings(tmp_path: Path) -> None:
    meter = ArchMeter(mac_latency())
    with pytest.raises(EdgeMatrixError, match="speedup must be > 1"):
        search(tmp_path, meter, 1.0)
    with pytest.raises(EdgeMatrixError, match="tolerance"):
        search(tmp_path, meter, 2.0, tolerance=1.5)
    with pytest.raises(EdgeMatrixError, match="pairs must be >= 3"):
        search(tmp_path, meter, 2.0, pairs=2)
    with pytest.raises(EdgeMatrixError, match="confidence"):
        search(tmp_path, meter, 2.0, confidence=1.0)
    with pytest.raises(EdgeMatrixError, match="ignored_layers names 'nope'"):
        search(tmp_path, meter, 2.0, ignored_layers=("nope",))
    with pytest.raises(EdgeMatrixError, match="nothing to prune"):
        search(tmp_path, meter, 2.0, round_to=512)
    assert meter.calls == []


# ------------------------------------------------------------------------------ the cache


def test_cache_hits_do_not_remeasure(tmp_path: Path) -> None:
    first = ArchMeter(mac_latency())
    res1 = search(tmp_path, first, 2.0)
    assert len(first.calls) == 2 * res1.measurements > 0 and not res1.baseline_cached
    second = ArchMeter(mac_latency())
    res2 = search(tmp_path, second, 2.0)
    assert second.calls == [] and res2.measurements == 0
    assert res2.baseline_cached and all(p.cached for p in res2.probes)
    assert res2.chosen is not None and res1.chosen is not None and res2.chosen.ratio == res1.chosen.ratio
    assert [p.arch_key for p in res2.probes] == [p.arch_key for p in res1.probes]  # the same decisions
    # another target on the same cache reuses the architectures both searches probe
    third = ArchMeter(mac_latency())
    res3 = search(tmp_path, third, 3.0)
    assert len(third.calls) == 2 * sum(p.blocks for p in res3.probes if not p.cached) > 0
    # a sealed entry of raw blocks; the speedup is recomputed from them, never stored
    path = tmp_path / "latency.json"
    assert (tmp_path / f"latency.json{SEAL_SUFFIX}").is_file()
    stored = json.loads(path.read_text())
    assert len(stored) == len(LatencyCache(path))
    assert all({"channels", "input", "backend", "precision", "meter", "blocks"} <= set(r) for r in stored.values())
    for p in res1.probes:
        blocks = stored[p.arch_key]["blocks"]
        assert len(blocks) == p.blocks and [b["session"] for b in blocks] == [i // 8 for i in range(p.blocks)]
        assert p.speedup == pytest.approx(blocks[0]["unpruned_ms"] / blocks[0]["pruned_ms"])


def test_more_pairs_measure_only_the_missing_blocks(tmp_path: Path) -> None:
    res1 = search(tmp_path, ArchMeter(mac_latency()), 2.0, pairs=3)
    before = json.loads((tmp_path / "latency.json").read_text())
    meter = ArchMeter(mac_latency())
    res2 = search(tmp_path, meter, 2.0, pairs=5)
    shared = {p.arch_key for p in res1.probes} & {p.arch_key for p in res2.probes}
    assert shared and all(p.blocks >= 5 for p in res2.probes)
    had = {k: len(before[k]["blocks"]) if k in before else 0 for k in (p.arch_key for p in res2.probes)}
    new = sum(max(0, p.blocks - had[p.arch_key]) for p in res2.probes)
    assert res2.measurements == new and len(meter.calls) == 2 * new
    # a probe measured in 3 blocks before was topped up to 5, not measured again
    assert any(had[p.arch_key] == 3 and p.blocks == 5 and not p.cached for p in res2.probes)


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda p: p.write_text(p.read_text()[:40]), "bytes, sealed with"),
        (lambda p: p.write_text(p.read_text().replace('"blocks"', '"blocks"', 1).replace("1", "2", 1)), "sha256"),
        (lambda p: Path(f"{p}{SEAL_SUFFIX}").unlink(), "no seal"),
    ],
    ids=["truncated", "corrupted", "unsealed"],
)
def test_damaged_cache_is_deleted_reported_and_rebuilt(tmp_path: Path, capsys: Any, damage: Any, why: str) -> None:
    search(tmp_path, ArchMeter(mac_latency()), 2.0)
    path = tmp_path / "latency.json"
    damage(path)
    capsys.readouterr()
    meter = ArchMeter(mac_latency())
    res = search(tmp_path, meter, 2.0)
    err = capsys.readouterr().err
    assert f"pruning latency cache {path}" in err and why in err and "deleted, rebuilding" in err
    assert len(err.strip().splitlines()) == 1
    # measured again from scratch, and sealed again
    assert res.landed and meter.calls and all(not p.cached for p in res.probes)
    assert len(LatencyCache(path)) == len(res.probes)


def test_a_sealed_cache_that_is_not_an_object_is_rebuilt(tmp_path: Path, capsys: Any) -> None:
    from edgematrix.core.cache import write_json_entry

    path = tmp_path / "latency.json"
    write_json_entry(path, [1, 2, 3])
    cache = LatencyCache(path)
    assert len(cache) == 0 and not path.exists()
    assert "a JSON object of measurements expected, found list" in capsys.readouterr().err
