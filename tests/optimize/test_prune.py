"""Structured pruning (torch-pruning) and the latency-aware ratio search, on tiny models and fake meters."""

from __future__ import annotations

import copy
import itertools
import json
from pathlib import Path
from typing import Any

import pytest
import torch

from edgematrix.errors import EdgeMatrixError
from edgematrix.measure.meter import LatencyMeter, LatencyReport
from edgematrix.models.ufld import UFLDv2
from edgematrix.optimize.prune import (
    LatencyCache,
    PruneSettings,
    architecture_key,
    channel_counts,
    prune_model,
    search_pruning_ratio,
    within,
)

SHAPE = (1, 3, 64, 160)


def tiny(width: int = 16, aux: bool = True) -> UFLDv2:
    torch.manual_seed(0)
    return UFLDv2((64, 160), width=width, mlp_mid_dim=32, use_aux=aux).eval()


def example() -> torch.Tensor:
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))


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


# ------------------------------------------------------------------------------ search


class FakeMeter:
    """Latency = fixed overhead + cost per multiply-accumulate of the backbone's 3×3 / 1×1 convolutions
    (channel counts read from what ``deploy`` wrote): a known, monotone latency-vs-channels curve."""

    backend = "fake"

    def __init__(self, overhead_ms: float = 1.0, per_mac_ms: float = 2e-6) -> None:
        self.overhead_ms, self.per_mac_ms = overhead_ms, per_mac_ms
        self.calls: list[Path] = []

    def latency(self, counts: dict[str, list[int]]) -> float:
        macs = sum(
            cin * cout * (9 if "conv" in name else 1)
            for name, (cin, cout) in counts.items()
            if name.startswith("backbone")
        )
        return self.overhead_ms + self.per_mac_ms * macs

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        self.calls.append(model)
        ms = self.latency(json.loads(model.read_text()))
        return LatencyReport("fake", ms, ms, ms, ms, 1, (ms,))


def deploy_json(model: torch.nn.Module, folder: Path) -> Path:
    path = folder / "arch.json"
    path.write_text(json.dumps(channel_counts(model)))
    return path


def _search(tmp_path: Path, meter: FakeMeter, speedup: float, **kw: Any):
    settings = PruneSettings(speedup=speedup, round_to=kw.pop("round_to", 4), **kw)
    return search_pruning_ratio(
        tiny(width=32, aux=False), input_shape=SHAPE, settings=settings, meter=meter, deploy=deploy_json,
        cache=LatencyCache(tmp_path / "latency.json"), work_dir=tmp_path / "work", backend="fake", precision="int8",
    )  # fmt: skip


def test_fake_meter_is_a_latency_meter() -> None:
    assert isinstance(FakeMeter(), LatencyMeter)


@pytest.mark.parametrize("speedup", [2.0, 3.0])
def test_search_lands_within_tolerance_and_records_every_probe(tmp_path: Path, speedup: float) -> None:
    meter = FakeMeter()
    res = _search(tmp_path, meter, speedup, tolerance=0.1, max_probes=8)
    assert res.landed and res.chosen is not None
    # bound "at_least" (the default): N× is a floor, the landing range is [N, N × 1.1]
    assert speedup <= res.chosen.speedup <= speedup * 1.1
    assert res.target_ms == pytest.approx(res.baseline_ms / (speedup * 1.05))
    # the chosen probe's speedup is what the meter says for that architecture
    assert res.chosen.speedup == pytest.approx(res.baseline_ms / res.chosen.latency_ms)
    assert res.baseline_ms == pytest.approx(meter.latency(channel_counts(tiny(width=32, aux=False))))
    assert 1 <= len(res.probes) <= 8
    # the baseline once, then each new architecture in 2 pairs alternating with the unpruned model
    # (A B, B A); a monotone meter needs no re-pairing
    assert len(meter.calls) == res.measurements == 1 + 4 * len({p.arch_key for p in res.probes})
    assert sum(1 for c in meter.calls if c.parent.name == "unpruned") == 1 + 2 * len({p.arch_key for p in res.probes})
    assert all(p.remeasured == 0 for p in res.probes)
    # monotone: more pruning, more speed
    ordered = sorted(res.probes, key=lambda p: p.ratio)
    assert all(a.speedup <= b.speedup for a, b in itertools.pairwise(ordered))
    saved = res.as_dict()
    assert saved["landed"] and len(saved["probes"]) == len(res.probes) and saved["target_ms"] == res.target_ms


def test_nearest_bound_lands_on_either_side(tmp_path: Path) -> None:
    settings = PruneSettings(speedup=2.0, tolerance=0.1, bound="nearest")
    assert settings.landing == (2.0, 0.1)
    centre, half = PruneSettings(speedup=2.0, tolerance=0.1).landing
    assert centre * (1 - half) == pytest.approx(2.0) and centre * (1 + half) == pytest.approx(2.2)
    res = _search(tmp_path, FakeMeter(), 2.0, tolerance=0.1, bound="nearest")
    assert res.landed and res.chosen is not None and within(res.chosen.speedup, 2.0, 0.1)
    with pytest.raises(EdgeMatrixError, match="bound must be 'at_least' or 'nearest'"):
        _search(tmp_path, FakeMeter(), 2.0, bound="floor")


def test_cache_hits_do_not_remeasure(tmp_path: Path) -> None:
    first = FakeMeter()
    res1 = _search(tmp_path, first, 2.0)
    assert len(first.calls) >= 2
    second = FakeMeter()
    res2 = _search(tmp_path, second, 2.0)
    assert second.calls == []
    assert res2.baseline_cached and all(p.cached for p in res2.probes)
    assert res2.chosen is not None and res1.chosen is not None and res2.chosen.ratio == res1.chosen.ratio
    # another target on the same cache reuses the baseline measurement
    third = FakeMeter()
    res3 = _search(tmp_path, third, 3.0)
    assert res3.baseline_cached and len(third.calls) == 4 * sum(1 for p in res3.probes if not p.cached)
    stored = json.loads((tmp_path / "latency.json").read_text())
    assert len(stored) == len(LatencyCache(tmp_path / "latency.json"))
    assert all({"p50_ms", "channels", "backend", "precision", "meter"} <= set(r) for r in stored.values())
    probes = [r for r in stored.values() if "speedup" in r]
    assert probes and all(r["speedup"] == pytest.approx(r["baseline_p50_ms"] / r["p50_ms"]) for r in probes)


def test_unreachable_speedup_stops_and_does_not_land(tmp_path: Path) -> None:
    meter = FakeMeter(overhead_ms=50.0)  # overhead dominates: 10x is out of reach
    res = _search(tmp_path, meter, 10.0, max_probes=5, max_ratio=0.8)
    assert not res.landed and len(res.probes) <= 5
    assert res.chosen is not None and res.chosen.ratio == max(p.ratio for p in res.probes) <= 0.8


def test_search_validates_settings(tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match="speedup must be > 1"):
        _search(tmp_path, FakeMeter(), 1.0)
    with pytest.raises(EdgeMatrixError, match="tolerance"):
        _search(tmp_path, FakeMeter(), 2.0, tolerance=1.5)
    with pytest.raises(EdgeMatrixError, match="ignored_layers names 'nope'"):
        _search(tmp_path, FakeMeter(), 2.0, ignored_layers=("nope",))


def test_corrupt_cache_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "latency.json"
    path.write_text("{not json")
    with pytest.raises(EdgeMatrixError, match="delete it"):
        LatencyCache(path)


class BusyHostMeter(FakeMeter):
    """The first measurement of every pruned model lands on a busy host: 5× slower than it is."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        report = super().measure(model, options=options)
        text = model.read_text()
        if "unpruned" in str(model) or text in self.seen:
            return report
        self.seen.add(text)
        slow = report.p50_ms * 5
        return LatencyReport("fake", slow, slow, slow, slow, 1, (slow,))


def test_a_measurement_inflated_by_a_busy_host_is_measured_again(tmp_path: Path) -> None:
    meter = BusyHostMeter()
    res = _search(tmp_path, meter, 2.0, tolerance=0.1, max_probes=8)
    # every first measurement was slower than the baseline: re-measured once, the faster p50 kept
    assert all(p.remeasured >= 1 for p in res.probes if not p.cached)
    assert res.landed and res.chosen is not None
    stored = json.loads((tmp_path / "latency.json").read_text())
    for p in res.probes:
        assert stored[p.arch_key]["p50_ms"] == pytest.approx(p.latency_ms)
    assert res.chosen.latency_ms == pytest.approx(stored[res.chosen.arch_key]["p50_ms"])
    assert len(meter.calls) == res.measurements
