"""Shared by the pruning tests: a tiny UFLD model, a deploy callback that writes the architecture,
and meters whose latency is a known function of that architecture (optionally noisy)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from edgematrix.measure.meter import LatencyReport
from edgematrix.models.ufld import UFLDv2
from edgematrix.optimize.prune import LatencyCache, PruneSettings, SearchResult, channel_counts, search_pruning_ratio

SHAPE = (1, 3, 64, 160)
LAYER4 = "backbone.layer4.1.conv2"


def tiny(width: int = 16, aux: bool = True) -> UFLDv2:
    torch.manual_seed(0)
    return UFLDv2((64, 160), width=width, mlp_mid_dim=32, use_aux=aux).eval()


def example() -> torch.Tensor:
    return torch.randn(*SHAPE, generator=torch.Generator().manual_seed(1))


def deploy_json(model: torch.nn.Module, folder: Path) -> Path:
    """The "deployed model" of the fake meters: its architecture as JSON."""
    path = folder / "arch.json"
    path.write_text(json.dumps(channel_counts(model)))
    return path


class ArchMeter:
    """Latency = ``latency(channel counts)`` × multiplicative noise (seeded; ``noise`` = sd of its log).
    Records every call, so tests can count the measurements and see their order."""

    backend = "fake"

    def __init__(
        self,
        latency: Callable[[dict[str, list[int]]], float],
        noise: float = 0.0,
        seed: int = 0,
        busy: Callable[[int], bool] | None = None,
    ) -> None:
        self.latency, self.noise, self.busy = latency, noise, busy
        self.rng = np.random.default_rng(seed)
        self.calls: list[Path] = []

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        """``busy(call index)``, when given, is what the report's ``machine_state`` says of this call."""
        self.calls.append(model)
        ms = self.latency(json.loads(model.read_text()))
        if self.noise:
            ms *= float(np.exp(self.rng.normal(0.0, self.noise)))
        facts = {} if self.busy is None else {"machine_state": "busy" if self.busy(len(self.calls) - 1) else "quiet"}
        return LatencyReport("fake", ms, ms, ms, ms, 1, (ms,), facts)


def mac_latency(overhead_ms: float = 1.0, per_mac_ms: float = 2e-6) -> Callable[[dict[str, list[int]]], float]:
    """Fixed overhead + a cost per multiply-accumulate of the backbone's convolutions: monotone in the widths."""

    def latency(counts: dict[str, list[int]]) -> float:
        macs = sum(
            cin * cout * (9 if "conv" in name else 1)
            for name, (cin, cout) in counts.items()
            if name.startswith("backbone")
        )
        return overhead_ms + per_mac_ms * macs

    return latency


def table_latency(speedups: dict[int, float], base_ms: float = 10.0) -> Callable[[dict[str, list[int]]], float]:
    """Latency looked up by the last stage's width (``speedups``: width → speedup vs the unpruned model)."""

    def latency(counts: dict[str, list[int]]) -> float:
        width = counts[LAYER4][1]
        return base_ms if width == max(speedups) else base_ms / speedups[width]

    return latency


def search(
    tmp_path: Path, meter: Any, speedup: float, *, model: UFLDv2 | None = None, cache: str = "latency.json", **kw: Any
) -> SearchResult:
    rounds = kw.pop("rounds", ())
    settings = PruneSettings(speedup=speedup, round_to=kw.pop("round_to", 4), **kw)
    return search_pruning_ratio(
        model if model is not None else tiny(width=32, aux=False), input_shape=SHAPE, settings=settings, meter=meter,
        deploy=deploy_json, cache=LatencyCache(tmp_path / cache), work_dir=tmp_path / "work", backend="fake",
        precision="int8", rounds=rounds,
    )  # fmt: skip
