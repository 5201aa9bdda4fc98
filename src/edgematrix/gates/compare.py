"""Compare two pytest-benchmark JSON files: a latency verdict and an accuracy delta per benchmark.

Benchmarks are matched by ``name``; a name present in one file only is reported, not gated (a
renamed or removed benchmark is a review matter, not a regression). Per matched benchmark:

* latency: :func:`edgematrix.gates.latency.compare_latency` on the per-round ``stats.data`` (the
  gate fails on a "regression"). All matched benchmarks form one comparison: the confidence is
  family-wise over them (``comparisons`` = the number of matched benchmarks), so a change below the
  minimum effect is "within noise" however many benchmarks the files hold;
* machine state: each file's ``machine_info["latency_contention"]`` (the harness's
  :class:`~edgematrix.measure.contention.Contention` record, re-judged here with the current
  thresholds) — when either file's rounds ran on a busy machine, every latency verdict is
  "inconclusive" ("not comparable: machine busy — re-measure"), which fails nothing and passes
  nothing. A file without the record (older runs) is judged on its samples alone;
* accuracy: ``extra_info["accuracy"]`` of candidate minus base, in points, when both have it. The
  joint rule: a speedup does not buy accuracy — a candidate may lose at most ``accuracy_budget``
  points vs the base, and a faster candidate that loses more fails with the trade named
  ("faster by 20% but lost 0.8 points"). A slower or unchanged candidate is held to the same
  budget (losing accuracy without a speedup is not better). A lower-is-better metric
  (``extra_info["metric_direction"] = "lower"``, e.g. a steering MSE) may *rise* by at most the
  budget, in its own units.

Only like is compared with like: the comparison is refused (:class:`EdgeMatrixError` naming both
values) when a matched benchmark's ``extra_info`` ``backend`` / ``backend_version`` / ``precision``
differ, or the files' machines differ (``machine_info["machine"]``, the architecture, the CPU
model). pytest-benchmark's ``machine_id`` is not used: it does not tell arm64 from x86-64
reliably, so the architecture is compared explicitly.

pytest-benchmark's own ``--benchmark-compare-fail=median:5%`` is a plain threshold on one
statistic with no noise model; here its :class:`~pytest_benchmark.stats.Stats` only summarises
each side (median, IQR, outliers) while the verdict is the statistical gate's.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from edgematrix.core.results import read_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.latency import LatencyVerdict, _check_params, compare_latency
from edgematrix.measure.contention import Contention

#: machine_info key of the harness's contention record
CONTENTION_KEY = "latency_contention"

#: extra_info keys that must be equal for two benchmarks to be compared
TOOLCHAIN_KEYS = ("backend", "backend_version", "precision")

AccuracyStatus = Literal["passed", "failed", "not applicable"]


@dataclass(frozen=True)
class SideSummary:
    """pytest-benchmark's view of one side's samples (milliseconds)."""

    rounds: int
    median_ms: float
    iqr_ms: float
    outliers: str  # pytest-benchmark's "<1 stddev>;<1.5 IQR>" outlier counts


@dataclass(frozen=True)
class BenchmarkComparison:
    """One matched benchmark: latency verdict, accuracy delta and whether the gate failed."""

    name: str
    latency: LatencyVerdict
    base: SideSummary
    candidate: SideSummary
    base_accuracy: float | None
    cand_accuracy: float | None
    accuracy_status: AccuracyStatus
    accuracy_message: str

    @property
    def accuracy_delta(self) -> float | None:
        """Candidate minus base accuracy, in points; None unless both files have it."""
        if self.base_accuracy is None or self.cand_accuracy is None:
            return None
        return self.cand_accuracy - self.base_accuracy

    @property
    def failed(self) -> bool:
        return self.latency.failed or self.accuracy_status == "failed"

    @property
    def inconclusive(self) -> bool:
        """The latency was not judged (machine busy); accuracy still was."""
        return self.latency.inconclusive

    @property
    def verdict(self) -> str:
        """One phrase: the latency status, or what failed."""
        parts = []
        if self.latency.failed:
            parts.append("regression")
        if self.accuracy_status == "failed":
            faster = self.latency.status == "improvement"
            parts.append("faster but accuracy loss" if faster else "accuracy loss")
        return " + ".join(parts) if parts else self.latency.status


@dataclass(frozen=True)
class ComparisonResult:
    """Every matched benchmark's row, the names found in one file only, and the settings used."""

    base_path: str
    cand_path: str
    rows: tuple[BenchmarkComparison, ...]
    only_in_base: tuple[str, ...]
    only_in_candidate: tuple[str, ...]
    min_effect: float
    confidence: float
    accuracy_budget: float
    base_machine: str = "no contention record"  # Contention.summary() of each file's rounds
    cand_machine: str = "no contention record"

    @property
    def failed(self) -> bool:
        return any(row.failed for row in self.rows)

    @property
    def inconclusive(self) -> bool:
        """Some latency verdict was not judged because a machine was busy."""
        return any(row.inconclusive for row in self.rows)

    @property
    def failures(self) -> tuple[BenchmarkComparison, ...]:
        return tuple(row for row in self.rows if row.failed)


def _summary(data: list[float]) -> SideSummary:
    from pytest_benchmark.stats import Stats

    stats = Stats()
    for value in data:
        stats.update(value)
    return SideSummary(stats.rounds, stats.median * 1e3, stats.iqr * 1e3, stats.outliers)


def _by_name(doc: dict[str, Any], path: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for bench in doc["benchmarks"]:
        if bench["name"] in out:
            raise EdgeMatrixError(
                f"{path!r} has two benchmarks named {bench['name']!r}; benchmarks are matched by name, "
                "so names must be unique in a file"
            )
        out[bench["name"]] = bench
    return out


def _machine_facts(machine_info: Mapping[str, Any]) -> dict[str, Any]:
    """machine, arch and CPU model from pytest-benchmark's machine_info (+ edgematrix's environment)."""
    raw_cpu = machine_info.get("cpu")
    cpu: Mapping[str, Any] = raw_cpu if isinstance(raw_cpu, Mapping) else {}
    # py-cpuinfo's fields first: every pytest-benchmark file has them, edgematrix's extras may be absent
    return {
        "machine": machine_info.get("machine"),
        "arch": cpu.get("arch_string_raw") or machine_info.get("arch"),
        "cpu model": cpu.get("brand_raw") or machine_info.get("cpu_model"),
    }


def _show(value: Any) -> str:
    return "(absent)" if value is None else repr(value)


def _toolchain_mismatches(
    base_doc: dict[str, Any], cand_doc: dict[str, Any], matched: list[tuple[dict, dict]]
) -> list[str]:
    problems = []
    base_m, cand_m = _machine_facts(base_doc["machine_info"]), _machine_facts(cand_doc["machine_info"])
    for key in base_m:
        if base_m[key] != cand_m[key]:
            problems.append(f"machine_info {key}: base {_show(base_m[key])} vs candidate {_show(cand_m[key])}")
    for base, cand in matched:
        b_extra, c_extra = base.get("extra_info", {}), cand.get("extra_info", {})
        for key in TOOLCHAIN_KEYS:
            if b_extra.get(key) != c_extra.get(key):
                problems.append(
                    f"{base['name']}: extra_info {key}: base {_show(b_extra.get(key))} vs candidate "
                    f"{_show(c_extra.get(key))}"
                )
    return problems


def _contention(doc: dict[str, Any], path: str) -> Contention | None:
    record = doc["machine_info"].get(CONTENTION_KEY)
    if record is None:
        return None
    try:
        return Contention.from_dict(record)
    except EdgeMatrixError as exc:
        raise EdgeMatrixError(f"{path!r}: machine_info {CONTENTION_KEY!r} is malformed: {exc}") from None


def _busy_reasons(base: Contention | None, cand: Contention | None) -> tuple[str, ...]:
    return tuple(
        f"{side}: {reason}"
        for side, record in (("base", base), ("candidate", cand))
        if record is not None
        for reason in record.reasons()
    )


def _accuracy(extra: Mapping[str, Any]) -> float | None:
    value = extra.get("accuracy")
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def _direction(extra: Mapping[str, Any]) -> tuple[str, str]:
    """The benchmark's metric name and direction (``extra_info`` ``metric`` / ``metric_direction``)."""
    return str(extra.get("metric", "accuracy")), str(extra.get("metric_direction", "higher"))


def _accuracy_gate(
    base_acc: float | None,
    cand_acc: float | None,
    latency: LatencyVerdict,
    budget: float,
    metric: tuple[str, str] = ("accuracy", "higher"),
) -> tuple[AccuracyStatus, str]:
    if base_acc is None or cand_acc is None:
        missing = " and ".join(w for w, a in (("base", base_acc), ("candidate", cand_acc)) if a is None)
        return "not applicable", f"no extra_info accuracy in {missing}"
    name, direction = metric
    if direction == "lower":
        rise = cand_acc - base_acc
        detail = (
            f"{name} {cand_acc:.4g} vs base {base_acc:.4g}: {rise:+.3g} ({name} is lower-is-better: it may rise by "
            f"at most {budget:g})"
        )
        if rise <= budget + 1e-12:
            return "passed", detail
        trade = f"faster by {(1 - latency.ratio) * 100:.1f}% but " if latency.status == "improvement" else ""
        return "failed", f"{trade}{name} rose by {rise:.3g}, more than the budget of {budget:g}; {detail}"
    delta = cand_acc - base_acc
    detail = f"accuracy {cand_acc:.2f} vs base {base_acc:.2f}: {delta:+.2f} points (budget {budget:.2f})"
    if -delta <= budget + 1e-9:  # 1e-9: accuracies are stored rounded, a drop of exactly the budget passes
        return "passed", detail
    if latency.status == "improvement":
        return "failed", (
            f"faster by {(1 - latency.ratio) * 100:.1f}% but lost {-delta:.2f} points of accuracy, more than "
            f"the {budget:.2f} point budget; {detail}"
        )
    return "failed", f"lost {-delta:.2f} points of accuracy, more than the {budget:.2f} point budget; {detail}"


def compare_benchmark_files(
    base_path: str | os.PathLike[str],
    cand_path: str | os.PathLike[str],
    *,
    min_effect: float = 0.05,
    confidence: float = 0.95,
    accuracy_budget: float = 0.5,
    n_boot: int = 2000,
    seed: int = 0,
) -> ComparisonResult:
    """Compare the benchmarks of ``cand_path`` with those of ``base_path`` (both pytest-benchmark JSON).

    Raises :class:`EdgeMatrixError` for unreadable files, no benchmark in common, a toolchain
    mismatch (all mismatches listed, base and candidate values named) or bad parameters.
    """
    if not (isinstance(accuracy_budget, int | float) and math.isfinite(accuracy_budget) and accuracy_budget >= 0):
        raise EdgeMatrixError(f"accuracy_budget must be a number of points >= 0; got {accuracy_budget!r}")
    _check_params(min_effect, confidence, n_boot)
    base_doc = read_benchmark_json(base_path)
    cand_doc = read_benchmark_json(cand_path)
    return _compare_impl(
        str(base_path), base_doc, str(cand_path), cand_doc, min_effect, confidence, float(accuracy_budget), n_boot, seed
    )


def _compare_impl(
    base_path: str,
    base_doc: dict[str, Any],
    cand_path: str,
    cand_doc: dict[str, Any],
    min_effect: float,
    confidence: float,
    accuracy_budget: float,
    n_boot: int,
    seed: int,
) -> ComparisonResult:
    base_by, cand_by = _by_name(base_doc, base_path), _by_name(cand_doc, cand_path)
    names = [n for n in base_by if n in cand_by]
    only_base = tuple(n for n in base_by if n not in cand_by)
    only_cand = tuple(n for n in cand_by if n not in base_by)
    if not names:
        raise EdgeMatrixError(
            f"no benchmark name is in both files: {base_path!r} has {sorted(base_by)!r}, {cand_path!r} has "
            f"{sorted(cand_by)!r}; compare results of the same cell"
        )
    matched = [(base_by[n], cand_by[n]) for n in names]
    problems = _toolchain_mismatches(base_doc, cand_doc, matched)
    if problems:
        raise EdgeMatrixError(
            f"refusing to compare {cand_path!r} with {base_path!r}: the toolchain differs, so a latency or "
            "accuracy difference would measure the toolchain, not the change — "
            + "; ".join(problems)
            + ". Re-measure the base with the candidate's toolchain on the same kind of machine"
        )

    base_state, cand_state = _contention(base_doc, base_path), _contention(cand_doc, cand_path)
    busy = _busy_reasons(base_state, cand_state)
    rows = []
    for base, cand in matched:
        b_data, c_data = base["stats"]["data"], cand["stats"]["data"]
        try:
            latency = compare_latency(
                b_data,
                c_data,
                min_effect=min_effect,
                confidence=confidence,
                comparisons=len(matched),
                busy=busy,
                n_boot=n_boot,
                seed=seed,
            )
        except EdgeMatrixError as exc:
            raise EdgeMatrixError(f"benchmark {base['name']!r}: {exc}") from None
        b_extra, c_extra = base.get("extra_info", {}), cand.get("extra_info", {})
        b_acc, c_acc = _accuracy(b_extra), _accuracy(c_extra)
        if _direction(b_extra) != _direction(c_extra):
            acc_status: AccuracyStatus = "not applicable"
            acc_message = f"different metrics: base {_direction(b_extra)}, candidate {_direction(c_extra)}"
        else:
            acc_status, acc_message = _accuracy_gate(b_acc, c_acc, latency, accuracy_budget, _direction(c_extra))
        rows.append(
            BenchmarkComparison(
                name=base["name"],
                latency=latency,
                base=_summary(b_data),
                candidate=_summary(c_data),
                base_accuracy=b_acc,
                cand_accuracy=c_acc,
                accuracy_status=acc_status,
                accuracy_message=acc_message,
            )
        )
    return ComparisonResult(
        base_path=base_path,
        cand_path=cand_path,
        rows=tuple(rows),
        only_in_base=only_base,
        only_in_candidate=only_cand,
        min_effect=min_effect,
        confidence=confidence,
        accuracy_budget=accuracy_budget,
        base_machine=base_state.summary() if base_state is not None else "no contention record",
        cand_machine=cand_state.summary() if cand_state is not None else "no contention record",
    )
