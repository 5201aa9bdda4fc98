"""Latency-aware structured pruning (torch-pruning's DepGraph) to a requested speedup.

:func:`prune_model` removes whole channels with torch-pruning: its dependency graph keeps every
coupled layer consistent (residual adds, BatchNorm, the flatten into a Linear), so no channel
surgery is written here. Channel counts are rounded to a hardware-friendly multiple (``round_to``);
layers named in ``ignored_layers`` (heads) keep their output channels.

:func:`search_pruning_ratio` looks for the uniform per-layer pruning ratio whose *measured* latency
on the target is ``baseline / speedup`` (within ``tolerance``). Latency is measured on the model as
deployed (the caller's ``deploy`` exports it, e.g. FP32 ONNX then INT8 QDQ), through a
:class:`~edgematrix.measure.meter.LatencyMeter`: a local backend now, the device's latency server
through the same interface. Measurements are cached by architecture (per-layer channel counts,
input shape, backend, precision, meter), so a repeated search or a probe that rounds to an
architecture already measured costs no measurement. Every probe is recorded.
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import os
import statistics
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, get_args

from edgematrix.errors import EdgeMatrixError
from edgematrix.fileio import atomic_write_text

if TYPE_CHECKING:
    import torch
    from torch import nn

    from edgematrix.measure.meter import LatencyMeter

ImportanceName = Literal["magnitude", "fpgm", "lamp"]
IMPORTANCES: tuple[str, ...] = get_args(ImportanceName)


@dataclass(frozen=True)
class PruneSettings:
    """What the search looks for.

    - ``speedup``: requested latency ratio unpruned / pruned, in the deployed precision.
    - ``round_to``: channel counts after pruning are multiples of this (8: int8 / tensor-core tiles).
    - ``ignored_layers``: module names (``model.get_submodule``) whose output channels stay.
    - ``importance``: channel ranking, data-free: ``magnitude`` (L2 of the coupled group), ``fpgm``
      (geometric median) or ``lamp``.
    - ``tolerance``: the search stops when the measured speedup is within ``speedup * (1 ± tolerance)``.
    - ``max_probes``: at most this many pruned architectures are tried (cache hits included).
    - ``max_ratio``: the largest uniform pruning ratio tried.
    - ``pairs``: each probe is measured ``pairs`` times alternating with the unpruned model (A B, B A,
      ...); its speedup is the ratio of the medians, so drift of a shared host cancels, as in the
      cell's interleaved rounds. A remote meter pays 2 × ``pairs`` requests per probe.
    - ``remeasure``: a probe whose speedup is not monotone with the others (below a less-pruned
      model's, above a more-pruned one's, or <= 1) is paired again up to this many times.
    - ``aim``: the search keeps refining until a probe is within ``aim`` × the landing range's half
      width of its centre (or the probes run out); a probe just inside the range may fall outside it
      in the next run's noise.
    - ``bound``: ``at_least`` (default) lands in ``[speedup, speedup * (1 + tolerance)]``: "2× faster"
      is a floor, as a user asking for it means it; ``nearest`` lands in ``speedup * (1 ± tolerance)``.
    """

    speedup: float
    round_to: int = 8
    ignored_layers: tuple[str, ...] = ("pool", "cls")
    importance: ImportanceName = "magnitude"
    tolerance: float = 0.10
    max_probes: int = 8
    max_ratio: float = 0.9
    remeasure: int = 2
    aim: float = 0.5
    pairs: int = 2
    bound: Literal["at_least", "nearest"] = "at_least"

    @property
    def landing(self) -> tuple[float, float]:
        """(centre, relative half width) of the speedups the search accepts."""
        if self.bound == "nearest":
            return self.speedup, self.tolerance
        centre = self.speedup * (1 + self.tolerance / 2)
        return centre, (self.tolerance / 2) / (1 + self.tolerance / 2)

    def validate(self) -> None:
        if not self.speedup > 1:
            raise EdgeMatrixError(f"prune speedup must be > 1 (e.g. 2 for prune_x2); got {self.speedup}")
        if self.round_to < 1:
            raise EdgeMatrixError(f"prune round_to must be >= 1; got {self.round_to}")
        if self.importance not in IMPORTANCES:
            raise EdgeMatrixError(f"unknown prune importance {self.importance!r}; valid: {', '.join(IMPORTANCES)}")
        if not 0 < self.tolerance < 1:
            raise EdgeMatrixError(f"prune tolerance must be in (0, 1), e.g. 0.1 for ±10%; got {self.tolerance}")
        if self.max_probes < 1:
            raise EdgeMatrixError(f"prune max_probes must be >= 1; got {self.max_probes}")
        if not 0 < self.aim <= 1:
            raise EdgeMatrixError(f"prune aim must be in (0, 1] (a fraction of the tolerance); got {self.aim}")
        if self.pairs < 1:
            raise EdgeMatrixError(f"prune pairs must be >= 1; got {self.pairs}")
        if self.remeasure < 0:
            raise EdgeMatrixError(f"prune remeasure must be >= 0; got {self.remeasure}")
        if not 0 < self.max_ratio < 1:
            raise EdgeMatrixError(f"prune max_ratio must be in (0, 1); got {self.max_ratio}")
        if self.bound not in ("at_least", "nearest"):
            raise EdgeMatrixError(f"prune bound must be 'at_least' or 'nearest'; got {self.bound!r}")


# ----------------------------------------------------------------------------------- pruning


def _torch_pruning() -> Any:
    try:
        import torch_pruning as tp
    except ImportError as exc:
        raise EdgeMatrixError(f"structured pruning needs torch-pruning ({exc}); pip install torch-pruning") from exc
    return tp


def _importance(name: str) -> Any:
    tp = _torch_pruning()

    if name == "magnitude":
        return tp.importance.GroupMagnitudeImportance(p=2)
    if name == "fpgm":
        return tp.importance.FPGMImportance(p=2)
    if name == "lamp":
        return tp.importance.LAMPImportance(p=2)
    raise EdgeMatrixError(f"unknown prune importance {name!r}; valid: {', '.join(IMPORTANCES)}")


def resolve_layers(model: nn.Module, names: Sequence[str]) -> list[nn.Module]:
    """Modules named in ``names``; an unknown name raises, listing the model's top-level modules."""
    out = []
    for name in names:
        try:
            out.append(model.get_submodule(name))
        except AttributeError:
            top = ", ".join(n for n, _ in model.named_children())
            raise EdgeMatrixError(
                f"prune ignored_layers names {name!r}, which {type(model).__name__} does not have; "
                f"its modules include: {top} (nested modules as 'a.b')"
            ) from None
    return out


def _trace_forward(model: nn.Module, example: torch.Tensor) -> Any:
    """torch-pruning traces in eval mode; run training mode instead so training-only branches
    (UFLD's auxiliary segmentation head) are in the dependency graph and pruned consistently."""
    model.train()
    try:
        return model(example)
    finally:
        model.eval()


def _output_sum(out: Any) -> Any:
    if isinstance(out, list | tuple):
        return sum(o.float().sum() for o in out)
    return out.float().sum()


def prune_model(
    model: nn.Module,
    example: torch.Tensor,
    ratio: float,
    *,
    round_to: int = 8,
    ignored_layers: Sequence[str] = (),
    importance: str = "magnitude",
) -> nn.Module:
    """Remove ``ratio`` of the channels of every prunable layer group of ``model`` (in place).

    Returns ``model`` in eval mode. ``ratio == 0`` leaves it unchanged. BatchNorm running
    statistics are not touched by the tracing forward.
    """
    import torch

    tp = _torch_pruning()
    if not 0 <= ratio < 1:
        raise EdgeMatrixError(f"pruning ratio must be in [0, 1); got {ratio}")
    if round_to < 1:
        raise EdgeMatrixError(f"round_to must be >= 1; got {round_to}")
    ignored = resolve_layers(model, ignored_layers)
    if ratio == 0:
        return model.eval()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [bn.momentum for bn in bns]
    for bn in bns:
        bn.momentum = 0.0  # the training-mode tracing forward must not move the running statistics
    try:
        with torch.enable_grad():  # DepGraph traces through autograd
            pruner = tp.pruner.MetaPruner(
                model,
                example,
                importance=_importance(importance),
                pruning_ratio=ratio,
                ignored_layers=ignored,
                round_to=round_to,
                global_pruning=False,
                forward_fn=_trace_forward,
                output_transform=_output_sum,
            )
            pruner.step()
    finally:
        for bn, m in zip(bns, momenta, strict=True):
            bn.momentum = m
    return model.eval()


def channel_counts(model: nn.Module) -> dict[str, list[int]]:
    """``{module name: [in, out]}`` channels/features of every Conv and Linear (the architecture)."""
    from torch import nn

    out: dict[str, list[int]] = {}
    for name, m in model.named_modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            out[name] = [int(m.in_channels), int(m.out_channels)]
        elif isinstance(m, nn.Linear):
            out[name] = [int(m.in_features), int(m.out_features)]
    return out


def architecture_key(
    counts: dict[str, list[int]], input_shape: Sequence[int], backend: str, precision: str, meter_id: str
) -> str:
    """Cache key of a latency measurement: what determines the latency, and nothing else."""
    blob = json.dumps(
        {"channels": counts, "input": list(input_shape), "backend": backend, "precision": precision, "meter": meter_id},
        sort_keys=True,
    )
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def parameter_count(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# ------------------------------------------------------------------------------ the cache


class LatencyCache:
    """Latency measurements by architecture key, persisted as JSON (atomic writes)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data: dict[str, dict[str, Any]] = {}
        if self.path.is_file():
            try:
                raw = json.loads(self.path.read_text())
            except (OSError, json.JSONDecodeError) as exc:
                raise EdgeMatrixError(
                    f"latency cache {self.path} is unreadable ({exc}); delete it and the search re-measures"
                ) from None
            if not isinstance(raw, dict):
                raise EdgeMatrixError(f"latency cache {self.path} is not a JSON object; delete it")
            self._data = raw

    def get(self, key: str) -> dict[str, Any] | None:
        return self._data.get(key)

    def put(self, key: str, record: dict[str, Any]) -> None:
        self._data[key] = record
        self.path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.path, json.dumps(self._data, indent=1, sort_keys=True))

    def __len__(self) -> int:
        return len(self._data)


def meter_identity(meter: Any) -> str:
    """What distinguishes one meter's measurements from another's (class, backend, host, options)."""
    import platform

    ident = getattr(meter, "identity", None)
    if callable(ident):
        return str(ident())
    where = str(getattr(meter, "url", "") or platform.node())  # a remote meter measures on its device
    parts = [type(meter).__name__, str(getattr(meter, "backend", "") or ""), where]
    opts = getattr(meter, "runner_options", None)
    if opts:
        parts.append(json.dumps(opts, sort_keys=True, default=str))
    return "|".join(parts)


# ------------------------------------------------------------------------------ the search


@dataclass(frozen=True)
class Probe:
    """One architecture tried by the search."""

    ratio: float
    latency_ms: float  # median p50 of the pruned model's measurements
    speedup: float  # median p50 of the unpruned model measured alternately with it / latency_ms
    params: int
    channels: str  # backbone widths, e.g. "32/72/152/304"
    arch_key: str
    cached: bool
    remeasured: int = 0  # extra pairings because the first was not monotone with the others
    baseline_ms: float = 0.0  # the unpruned model's median p50 in the same pairs


@dataclass
class SearchResult:
    settings: PruneSettings
    baseline_ms: float
    baseline_cached: bool
    probes: list[Probe] = field(default_factory=list)
    chosen: Probe | None = None

    @property
    def target_ms(self) -> float:
        return self.baseline_ms / self.settings.landing[0]

    @property
    def landed(self) -> bool:
        """The chosen probe's measured speedup is in the landing range (see ``PruneSettings.bound``)."""
        centre, half = self.settings.landing
        return self.chosen is not None and within(self.chosen.speedup, centre, half)

    @property
    def measurements(self) -> int:
        """Meter calls made by this search (cache hits cost none)."""
        probes = sum(2 * self.settings.pairs * (1 + p.remeasured) for p in self.probes if not p.cached)
        return probes + (0 if self.baseline_cached else 1)

    def as_dict(self) -> dict[str, Any]:
        return {
            "settings": asdict(self.settings),
            "baseline_ms": self.baseline_ms,
            "baseline_cached": self.baseline_cached,
            "target_ms": self.target_ms,
            "landed": self.landed,
            "chosen": asdict(self.chosen) if self.chosen else None,
            "probes": [asdict(p) for p in self.probes],
        }


def within(speedup: float, target: float, tolerance: float) -> bool:
    return abs(speedup / target - 1) <= tolerance


def width_summary(counts: dict[str, list[int]]) -> str:
    """Distinct output widths of the Conv layers in order of first appearance, e.g. "32/72/152/304"."""
    seen: list[int] = []
    for _name, (_cin, cout) in counts.items():
        if cout not in seen:
            seen.append(cout)
    return "/".join(str(c) for c in seen[:6])


Deploy = Callable[["nn.Module", Path], Path]


def search_pruning_ratio(
    model: nn.Module,
    *,
    input_shape: Sequence[int],
    settings: PruneSettings,
    meter: LatencyMeter,
    deploy: Deploy,
    cache: LatencyCache,
    work_dir: str | os.PathLike[str],
    backend: str,
    precision: str,
    on_probe: Callable[[Probe], None] | None = None,
) -> SearchResult:
    """Find the pruning ratio whose deployed model measures ``baseline / settings.speedup``.

    ``model`` (trained, unpruned) is not modified: every probe prunes a copy. ``deploy(model,
    folder)`` writes the model as deployed (ONNX in the recipe's precision) into ``folder`` and
    returns the file; ``meter`` measures it. The search brackets the target and interpolates
    log(speedup) linearly in the ratio (regula falsi, kept inside the bracket), which needs fewer
    probes than plain bisection on a smooth curve. It stops at the first probe within
    ``aim * tolerance``, after ``max_probes``, or when the bracket is narrower than one ``round_to`` step changes;
    the chosen probe is the one closest to the target in log space.
    """
    settings.validate()
    if len(input_shape) < 2 or any(int(d) < 1 for d in input_shape):
        raise EdgeMatrixError(f"input_shape must be positive dims, e.g. [1, 3, 288, 800]; got {list(input_shape)}")
    resolve_layers(model, settings.ignored_layers)  # fail early on a bad name
    return _search_impl(
        model,
        tuple(int(d) for d in input_shape),
        settings,
        meter,
        deploy,
        cache,
        Path(work_dir),
        backend,
        precision,
        on_probe,
    )


def _search_impl(
    model: nn.Module,
    input_shape: tuple[int, ...],
    settings: PruneSettings,
    meter: LatencyMeter,
    deploy: Deploy,
    cache: LatencyCache,
    work_dir: Path,
    backend: str,
    precision: str,
    on_probe: Callable[[Probe], None] | None,
) -> SearchResult:
    import torch

    meter_id = meter_identity(meter)
    example = torch.randn(*input_shape, generator=torch.Generator().manual_seed(0))

    def record(key: str, counts: dict[str, list[int]], ms: list[float], base: list[float]) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "p50_ms": statistics.median(ms), "p50_ms_all": ms, "channels": counts, "backend": backend,
            "precision": precision, "meter": meter_id,
        }  # fmt: skip
        if base:  # paired with the unpruned model: the speedup is a ratio of measurements taken together
            base_p50 = statistics.median(base)
            rec.update({"baseline_p50_ms": base_p50, "baseline_p50_ms_all": base, "speedup": base_p50 / rec["p50_ms"]})
        cache.put(key, rec)
        return rec

    base_model = copy.deepcopy(model).eval()
    base_counts = channel_counts(base_model)
    base_key = architecture_key(base_counts, input_shape, backend, precision, meter_id)
    base_path: list[Path] = []  # deployed lazily: only when a probe has to be measured

    def base_file() -> Path:
        if not base_path:
            folder = work_dir / "unpruned"
            folder.mkdir(parents=True, exist_ok=True)
            base_path.append(deploy(base_model, folder))
        return base_path[0]

    base_rec = cache.get(base_key)
    base_cached = base_rec is not None
    if base_rec is None:
        base_rec = record(base_key, base_counts, [meter.measure(base_file()).p50_ms], [])
    base_ms = float(base_rec["p50_ms"])
    if not base_ms > 0:
        raise EdgeMatrixError(f"the meter reported p50 {base_ms} ms for the unpruned model; cannot search")
    result = SearchResult(settings, base_ms, base_cached)
    lo, hi = (0.0, 1.0), None  # (ratio, speedup) bracket: lo below the target, hi above
    seen: dict[str, Probe] = {}
    bracket_keys = ["", ""]  # architectures of lo and hi

    def paired(path: Path, ms: list[float], base: list[float]) -> None:
        """``settings.pairs`` alternating measurements of the unpruned model and ``path`` (A B, B A, ...)."""
        for i in range(settings.pairs):
            order = (base_file(), path) if i % 2 == 0 else (path, base_file())
            for f in order:
                (base if f == base_file() else ms).append(meter.measure(f).p50_ms)

    def implausible(ratio: float, speedup: float) -> bool:
        """Not faster than the unpruned model, or not monotone with the probes measured so far."""
        if speedup <= 1:
            return True
        return any(
            (q.ratio < ratio and speedup <= q.speedup) or (q.ratio > ratio and speedup >= q.speedup)
            for q in seen.values()
        )

    def probe(ratio: float) -> Probe:
        pruned = prune_model(
            copy.deepcopy(model),
            example,
            ratio,
            round_to=settings.round_to,
            ignored_layers=settings.ignored_layers,
            importance=settings.importance,
        )
        counts = channel_counts(pruned)
        key = architecture_key(counts, input_shape, backend, precision, meter_id)
        rec = cache.get(key)
        cached, remeasured = rec is not None and "speedup" in rec, 0
        if rec is None or not cached:
            folder = work_dir / f"ratio-{ratio:.4f}"
            folder.mkdir(parents=True, exist_ok=True)
            path = deploy(pruned, folder)
            ms: list[float] = []
            base: list[float] = []
            paired(path, ms, base)
            rec = record(key, counts, ms, base)
            while remeasured < settings.remeasure and implausible(ratio, float(rec["speedup"])):
                # not monotone with what was measured: another process most likely took the CPU
                # during one of the measurements; pair again and take the median of all
                paired(path, ms, base)
                remeasured += 1
                rec = record(key, counts, ms, base)
        ms_value, speedup, paired_base = float(rec["p50_ms"]), float(rec["speedup"]), float(rec["baseline_p50_ms"])
        p = Probe(
            ratio=round(ratio, 4),
            latency_ms=ms_value,
            speedup=speedup,
            params=parameter_count(pruned),
            channels=width_summary(counts),
            arch_key=key,
            cached=cached or key in seen,
            remeasured=remeasured,
            baseline_ms=paired_base,
        )
        result.probes.append(p)
        seen[key] = p
        if on_probe:
            on_probe(p)
        return p

    target, half = settings.landing
    # first guess: latency ~ FLOPs ~ (1 - ratio)^2
    ratio = min(settings.max_ratio, 1 - 1 / math.sqrt(target))
    for _ in range(settings.max_probes):
        p = probe(ratio)
        if within(p.speedup, target, half * settings.aim):
            break
        if p.arch_key in bracket_keys:
            break  # rounds to an architecture that already bounds the bracket: nothing finer to find
        if p.speedup < target:
            lo = (p.ratio, p.speedup)
            bracket_keys[0] = p.arch_key
        else:
            hi = (p.ratio, p.speedup)
            bracket_keys[1] = p.arch_key
        if hi is None:
            if lo[0] >= settings.max_ratio:
                break  # even the largest ratio is too slow
            nxt = _extrapolate(lo, target, settings.max_ratio)
        else:
            nxt = _interpolate(lo, hi, target)
        if abs(nxt - p.ratio) < 1e-3 or (hi is not None and hi[0] - lo[0] < 2e-3):
            break
        ratio = nxt
    result.chosen = min(result.probes, key=lambda q: abs(math.log(q.speedup / target)))
    return result


def _interpolate(lo: tuple[float, float], hi: tuple[float, float], target: float) -> float:
    """Ratio where log(speedup) reaches log(target) on the line through lo and hi, kept inside
    the middle 80% of the bracket (safeguarded regula falsi)."""
    (r0, s0), (r1, s1) = lo, hi
    width = r1 - r0
    if s1 <= s0 or width <= 0:  # noisy, non-monotone measurements: bisect
        return (r0 + r1) / 2
    t = (math.log(target) - math.log(s0)) / (math.log(s1) - math.log(s0))
    t = min(0.9, max(0.1, t))
    return r0 + t * width


def _extrapolate(lo: tuple[float, float], target: float, max_ratio: float) -> float:
    """No probe above the target yet: step out, assuming latency ~ (1 - ratio)^2 from ``lo``."""
    r0, s0 = lo
    # (1 - r)^2 / (1 - r0)^2 = s0 / target
    guess = 1 - (1 - r0) * math.sqrt(max(s0, 1e-6) / target)
    return min(max_ratio, max(guess, r0 + 0.05))


def save_search(result: SearchResult, path: str | os.PathLike[str]) -> None:
    atomic_write_text(Path(path), json.dumps(result.as_dict(), indent=2))
