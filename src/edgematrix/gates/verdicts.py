"""The gates of one cell run. Each gate gives a verdict: passed, failed or not applicable."""

from __future__ import annotations

from dataclasses import dataclass

from edgematrix.gates.baseline import Baseline
from edgematrix.matrix.schema import Gates


@dataclass(frozen=True)
class RunFigures:
    """What a cell run measured, for one role."""

    accuracy: float  # task metric, percent
    p50_ms: float
    backend: str
    backend_version: str
    device: str  # CPU or device model the figures were measured on


@dataclass(frozen=True)
class Verdict:
    gate: str
    status: str  # "passed" | "failed" | "not applicable"
    message: str

    @property
    def failed(self) -> bool:
        return self.status == "failed"


def _check(gate: str, ok: bool, detail: str) -> Verdict:
    return Verdict(gate, "passed" if ok else "failed", detail)


def evaluate_gates(
    gates: Gates,
    reference: RunFigures,
    candidate: RunFigures,
    baseline: Baseline | None,
    *,
    same_artifact: bool,
    baseline_hint: str,
) -> list[Verdict]:
    out = []
    if same_artifact:
        out.append(Verdict("accuracy_vs_reference", "not applicable", "the candidate is the FP32 reference itself"))
    else:
        drop = reference.accuracy - candidate.accuracy
        out.append(
            _check(
                "accuracy_vs_reference",
                drop <= gates.accuracy_drop_vs_reference,
                f"candidate {candidate.accuracy:.2f} vs reference {reference.accuracy:.2f}: "
                f"drop {drop:+.2f} points (budget {gates.accuracy_drop_vs_reference:.2f})",
            )
        )
    out.append(
        _check(
            "min_accuracy",
            candidate.accuracy >= gates.min_accuracy,
            f"candidate {candidate.accuracy:.2f} (floor {gates.min_accuracy:.2f})",
        )
    )
    if baseline is None:
        msg = f"no baseline yet; {baseline_hint}"
        out.append(Verdict("accuracy_vs_baseline", "not applicable", msg))
        out.append(Verdict("latency_vs_baseline", "not applicable", msg))
        return out
    if baseline.toolchain() != (candidate.backend, candidate.backend_version, candidate.device):
        msg = (
            f"baseline recorded with {baseline.backend} {baseline.backend_version} on {baseline.cpu!r}, this run "
            f"uses {candidate.backend} {candidate.backend_version} on {candidate.device!r}: not comparable; "
            f"{baseline_hint}"
        )
        out.append(Verdict("accuracy_vs_baseline", "not applicable", msg))
        out.append(Verdict("latency_vs_baseline", "not applicable", msg))
        return out
    drop = baseline.accuracy - candidate.accuracy
    out.append(
        _check(
            "accuracy_vs_baseline",
            drop <= gates.accuracy_drop_vs_baseline,
            f"candidate {candidate.accuracy:.2f} vs baseline {baseline.accuracy:.2f}: drop {drop:+.2f} points "
            f"(budget {gates.accuracy_drop_vs_baseline:.2f})",
        )
    )
    if same_artifact:
        out.append(
            Verdict(
                "latency_vs_baseline",
                "not applicable",
                "no same-run ratio for a reference-only cell; absolute CPU times are too noisy to gate",
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
