"""The gates of one cell run. Each gate gives a verdict: passed, failed or not applicable.

The accuracy gates follow the task metric's direction (:attr:`RunFigures.direction`). Higher is
better (TuSimple accuracy, mAP, mIoU, in points): the budgets of :class:`~edgematrix.matrix.schema.Gates`
are the points the candidate may lose and ``min_accuracy`` is a floor. Lower is better (an error such
as the MSE of a steering command): the same budgets are in the metric's own units, how much it may
*rise* ("MSE may rise by at most 0.0001"), and ``min_accuracy``, a floor on a higher-is-better
percentage, does not apply. Every message names the metric and, for lower-is-better, the direction.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from edgematrix.gates.baseline import ABSENT, LOCK_HINT, Baseline, environment_toolchain, pick_baselines
from edgematrix.matrix.schema import Gates

DIRECTIONS = ("higher", "lower")


def metric_loss(reference: float, candidate: float, direction: str) -> float:
    """How much worse ``candidate`` is than ``reference`` in the metric's units (positive: worse): the drop
    of a higher-is-better metric, the rise of a lower-is-better one."""
    _check_direction(direction)
    return reference - candidate if direction == "higher" else candidate - reference


def metric_text(value: float, direction: str = "higher") -> str:
    """A metric value as the reports print it: points with two decimals (higher is better), four
    significant digits for an error (lower is better: an MSE of 0.000338 is not "0.00")."""
    return f"{value:.2f}" if direction == "higher" else f"{value:.4g}"


def _check_direction(direction: str) -> None:
    if direction not in DIRECTIONS:
        raise ValueError(f"metric direction {direction!r} is neither of {', '.join(DIRECTIONS)}")


@dataclass(frozen=True)
class RunFigures:
    """What a cell run measured, for one role."""

    accuracy: float  # the task metric of record (TuSimple accuracy in percent, mAP, an MSE ...)
    p50_ms: float
    backend: str
    backend_version: str
    device: str  # CPU or device model the figures were measured on
    precision: str = ""
    environment: Mapping[str, str] = field(default_factory=dict)  # core.toolchain.current_environment()
    power_mode: str = ""
    ratio_samples: tuple[float, ...] = ()  # per-round candidate/reference (candidate figures only)
    # why the machine was busy during this run's latency rounds (Measurement.contention.reasons()); empty: quiet
    busy: tuple[str, ...] = ()
    metric: str = "accuracy"  # the task metric's name, for messages (TaskAdapter.metric)
    direction: str = "higher"  # "higher" or "lower" is better (TaskAdapter.metric_direction)

    def __post_init__(self) -> None:
        _check_direction(self.direction)

    def toolchain(self) -> dict[str, str]:
        return {
            "backend": self.backend,
            "backend version": self.backend_version,
            "precision": self.precision,
            "device": self.device,
            "power mode": self.power_mode,
            **environment_toolchain(self.environment),
        }


# toolchain entries that are facts of the run rather than of the installed environment
_RUN_FACTS = ("backend", "precision", "device", "power mode")


@dataclass(frozen=True)
class Verdict:
    gate: str
    status: str  # "passed" | "failed" | "not applicable" | "inconclusive" (not judged: machine busy)
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _check(gate: str, ok: bool, detail: str) -> Verdict:
    return Verdict(gate, "passed" if ok else "failed", detail)


def accuracy_verdict(
    gate: str, candidate: RunFigures, other: float, other_name: str, budget: float, where: str = ""
) -> Verdict:
    """The verdict of ``gate``: ``candidate``'s metric against ``other`` (the reference's, the baseline's, the
    base branch's: ``other_name``, recorded ``where``) may be worse by at most ``budget`` — points lost of a
    higher-is-better metric, the rise of a lower-is-better one (in its units)."""
    loss = metric_loss(other, candidate.accuracy, candidate.direction)
    ok = loss <= budget + 1e-12  # stored figures are rounded: a loss of exactly the budget passes
    if candidate.direction == "higher":
        detail = (
            f"candidate {candidate.accuracy:.2f} vs {other_name} {other:.2f}{where}: drop {loss:+.2f} points "
            f"(budget {budget:.2f})"
        )
    else:
        name = candidate.metric
        detail = (
            f"candidate {name} {metric_text(candidate.accuracy, 'lower')} vs {other_name} {metric_text(other, 'lower')}"
            f"{where}: change {loss:+.3g} ({name} is lower-is-better: it may rise by at most {budget:g})"
        )
    return _check(gate, ok, detail)


def evaluate_gates(
    gates: Gates,
    reference: RunFigures,
    candidate: RunFigures,
    baseline: Baseline | Sequence[Baseline] | None,
    *,
    same_artifact: bool,
    baseline_hint: str,
    comparisons: int = 1,
) -> list[Verdict]:
    """The gates of one backend of a cell run.

    ``baseline``: the records of the cell's baseline file (one per device; a single record is one
    device). Accuracy is compared with a record of the same backend, precision and environment on any
    device; latency only with the record of this device and power mode (``pick_baselines``).

    ``comparisons`` is the number of latency comparisons of the cell judged together (its
    backends' ``latency_vs_baseline`` gates): the latency gate's confidence is family-wise over
    them. A candidate measured on a busy machine (``candidate.busy``) gets an "inconclusive"
    latency verdict — "not comparable: machine busy — re-measure" — never a pass or a failure.
    """
    if (reference.metric, reference.direction) != (candidate.metric, candidate.direction):
        raise ValueError(
            f"reference ({reference.metric}, {reference.direction} is better) and candidate ({candidate.metric}, "
            f"{candidate.direction} is better) figures are of different metrics"
        )
    out = []
    if same_artifact:
        out.append(Verdict("accuracy_vs_reference", "not applicable", "the candidate is the FP32 reference itself"))
    else:
        out.append(
            accuracy_verdict(
                "accuracy_vs_reference", candidate, reference.accuracy, "reference", gates.accuracy_drop_vs_reference
            )
        )
    if candidate.direction == "higher":
        out.append(
            _check(
                "min_accuracy",
                candidate.accuracy >= gates.min_accuracy,
                f"candidate {candidate.accuracy:.2f} (floor {gates.min_accuracy:.2f})",
            )
        )
    else:
        out.append(
            Verdict(
                "min_accuracy",
                "not applicable",
                f"{candidate.metric} is lower-is-better: min_accuracy (configured {gates.min_accuracy:g}) is a floor "
                f"on a higher-is-better metric; the candidate's {candidate.metric} "
                f"{metric_text(candidate.accuracy, 'lower')} is held to the budgets vs its reference and baseline",
            )
        )
    records = [] if baseline is None else [baseline] if isinstance(baseline, Baseline) else list(baseline)
    if not records:
        msg = f"no baseline yet; {baseline_hint}"
        out.append(Verdict("accuracy_vs_baseline", "not applicable", msg))
        out.append(Verdict("latency_vs_baseline", "not applicable", msg))
        return out
    ours = candidate.toolchain()
    choice = pick_baselines(records, ours)
    if choice.accuracy is None:
        assert choice.closest is not None
        theirs = choice.closest.toolchain()
        what = "; ".join(
            f"{k}: baseline {theirs.get(k, ABSENT)!r}, this run {ours.get(k, ABSENT)!r}" for k in choice.differences
        )
        lock = f" ({LOCK_HINT})" if any(k not in _RUN_FACTS for k in choice.differences) else ""
        msg = f"baseline is of another toolchain ({what}): not comparable, refused{lock}; {baseline_hint}"
        out.append(Verdict("accuracy_vs_baseline", "not applicable", msg))
        out.append(Verdict("latency_vs_baseline", "not applicable", msg))
        return out
    acc_base = choice.accuracy
    where = "" if acc_base.cpu == candidate.device else f" (recorded on {acc_base.cpu})"
    out.append(
        accuracy_verdict(
            "accuracy_vs_baseline", candidate, acc_base.accuracy, "baseline", gates.accuracy_drop_vs_baseline, where
        )
    )
    baseline = choice.latency
    if baseline is None:
        out.append(
            Verdict(
                "latency_vs_baseline",
                "not applicable",
                f"no latency baseline of this device ({candidate.device!r}"
                + (f", power mode {candidate.power_mode!r}" if candidate.power_mode else "")
                + f"); recorded on: {', '.join(repr(d) for d in choice.devices)}. Latency is only compared on the "
                f"device it was recorded on: {baseline_hint}",
            )
        )
        return out
    if same_artifact:
        out.append(
            Verdict(
                "latency_vs_baseline",
                "not applicable",
                "no same-run ratio for a reference-only cell; absolute CPU times are too noisy to gate",
            )
        )
    elif len(baseline.ratio_samples) >= 5 and len(candidate.ratio_samples) >= 5:
        # statistical gate on the per-round same-run ratios: drift of the machine cancels within a
        # round (contention does not: a busy run is inconclusive), and a regression needs the whole
        # interval beyond the minimum effect (edgematrix.gates.latency)
        from edgematrix.gates.latency import compare_latency

        lv = compare_latency(
            baseline.ratio_samples,
            list(candidate.ratio_samples),
            min_effect=gates.latency_min_effect,
            confidence=gates.latency_confidence,
            comparisons=comparisons,
            busy=candidate.busy,
        )
        status = {"regression": "failed", "inconclusive": "inconclusive"}.get(lv.status, "passed")
        out.append(Verdict("latency_vs_baseline", status, f"candidate/reference ratio vs baseline's: {lv.message}"))
    elif candidate.busy:
        from edgematrix.gates.latency import BUSY_PREFIX

        ratio = candidate.p50_ms / reference.p50_ms
        out.append(
            Verdict(
                "latency_vs_baseline",
                "inconclusive",
                f"{BUSY_PREFIX} — re-measure ({'; '.join(candidate.busy)}); candidate/reference p50 {ratio:.3f} "
                f"vs baseline {baseline.p50_ratio:.3f}",
            )
        )
    else:
        ratio = candidate.p50_ms / reference.p50_ms
        limit = baseline.p50_ratio * (1 + gates.latency_regression)
        out.append(
            _check(
                "latency_vs_baseline",
                ratio <= limit,
                f"candidate/reference p50 {ratio:.3f} vs baseline {baseline.p50_ratio:.3f} "
                f"(limit {limit:.3f}, +{gates.latency_regression:.0%}); speedup {1 / ratio:.2f}x vs "
                f"baseline {1 / baseline.p50_ratio:.2f}x",
            )
        )
    return out
