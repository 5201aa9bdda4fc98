"""Comparing two benchmark.json files: matching, latency verdicts, toolchain refusal, accuracy rule,
family-wise confidence over the benchmarks, and the machine state recorded with each file."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
from edgematrix.errors import EdgeMatrixError
from edgematrix.gates.compare import CONTENTION_KEY, compare_benchmark_files
from edgematrix.gates.latency import BUSY_PREFIX
from edgematrix.measure.contention import Contention

REF, CAND = "x86_cpu_int8[reference]", "x86_cpu_int8[candidate]"
TOOLCHAIN = {"backend": "onnxruntime", "backend_version": "1.31.1"}


def rounds(seed: int, median_s: float, n: int = 60) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in median_s * np.exp(rng.normal(0.0, 0.05, n))]


def entry(name: str, samples: list[float], **extra: float | int | str) -> BenchmarkEntry:
    role = "reference" if "reference" in name else "candidate"
    info = {"role": role, "precision": "fp32" if role == "reference" else "int8", **TOOLCHAIN, **extra}
    return BenchmarkEntry(name, "x86_cpu_int8", samples, info)


def write(path: Path, entries: list[BenchmarkEntry], **machine_extra: object) -> Path:
    write_benchmark_json(path, entries, machine_extra=machine_extra or None)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(
        tmp_path / "base.json",
        [entry(REF, rounds(1, 0.037), accuracy=89.77), entry(CAND, rounds(2, 0.012), accuracy=89.85)],
    )


def test_same_results_pass(tmp_path: Path, base: Path) -> None:
    cand = write(
        tmp_path / "cand.json",
        [entry(REF, rounds(3, 0.037), accuracy=89.77), entry(CAND, rounds(4, 0.012), accuracy=89.85)],
    )
    result = compare_benchmark_files(base, cand)
    assert not result.failed and result.failures == ()
    assert [r.name for r in result.rows] == [REF, CAND]
    assert result.only_in_base == result.only_in_candidate == ()
    for row in result.rows:
        assert row.latency.status == "within noise" and row.verdict == "within noise"
        assert row.accuracy_status == "passed" and row.accuracy_delta == pytest.approx(0.0)
    assert (result.min_effect, result.confidence, result.accuracy_budget) == (0.05, 0.95, 0.5)


def test_latency_regression_fails_and_uses_the_per_round_data(tmp_path: Path, base: Path) -> None:
    slow = rounds(4, 0.012 * 1.10)
    cand = write(
        tmp_path / "cand.json",
        [entry(REF, rounds(3, 0.037), accuracy=89.77), entry(CAND, slow, accuracy=89.85)],
    )
    result = compare_benchmark_files(base, cand)
    assert result.failed
    (row,) = result.failures
    assert row.name == CAND and row.verdict == "regression"
    assert row.latency.ratio == pytest.approx(float(np.median(slow) / np.median(rounds(2, 0.012))))
    assert row.latency.message.endswith("regression, the whole interval beyond the 5% minimum effect")
    assert row.latency.comparisons == 2 and "97.5% CI" in row.latency.message  # family-wise over 2 benchmarks
    # pytest-benchmark's Stats summarise each side, in milliseconds
    doc = json.loads(cand.read_text())
    stats = next(b["stats"] for b in doc["benchmarks"] if b["name"] == CAND)
    assert row.candidate.median_ms == pytest.approx(stats["median"] * 1e3)
    assert row.candidate.rounds == 60
    # a larger minimum effect lets the same 10% through
    assert not compare_benchmark_files(base, cand, min_effect=0.2).failed


def test_names_in_one_file_only_are_reported_not_gated(tmp_path: Path, base: Path) -> None:
    cand = write(
        tmp_path / "cand.json",
        [entry(CAND, rounds(4, 0.012), accuracy=89.85), entry("x86_cpu_int8[candidate@openvino]", rounds(5, 0.011))],
    )
    result = compare_benchmark_files(base, cand)
    assert [r.name for r in result.rows] == [CAND]
    assert result.only_in_base == (REF,)
    assert result.only_in_candidate == ("x86_cpu_int8[candidate@openvino]",)
    assert not result.failed


def test_no_common_benchmark_is_an_input_error(tmp_path: Path, base: Path) -> None:
    cand = write(tmp_path / "cand.json", [entry("other[candidate]", rounds(4, 0.012))])
    with pytest.raises(EdgeMatrixError, match=r"no benchmark name is in both files"):
        compare_benchmark_files(base, cand)


@pytest.mark.parametrize(
    ("extra", "needle"),
    [
        ({"backend_version": "1.30.0"}, "extra_info backend_version: base '1.31.1' vs candidate '1.30.0'"),
        ({"backend": "openvino"}, "extra_info backend: base 'onnxruntime' vs candidate 'openvino'"),
        ({"precision": "fp16"}, "extra_info precision: base 'int8' vs candidate 'fp16'"),
    ],
)
def test_toolchain_mismatch_is_refused(tmp_path: Path, base: Path, extra: dict, needle: str) -> None:
    cand = write(tmp_path / "cand.json", [entry(CAND, rounds(4, 0.012), accuracy=89.85, **extra)])
    with pytest.raises(EdgeMatrixError) as exc:
        compare_benchmark_files(base, cand)
    message = str(exc.value)
    assert "refusing to compare" in message and needle in message
    assert f"{CAND}:" in message


def test_other_architecture_is_refused(tmp_path: Path, base: Path) -> None:
    """Same CPU brand string, same samples: only machine_info says aarch64 vs x86_64."""
    doc = json.loads(base.read_text())
    doc["machine_info"]["machine"] = "aarch64"
    doc["machine_info"]["cpu"]["arch_string_raw"] = "aarch64"
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    with pytest.raises(EdgeMatrixError) as exc:
        compare_benchmark_files(base, cand)
    host = json.loads(base.read_text())["machine_info"]["machine"]
    assert f"machine_info machine: base {host!r} vs candidate 'aarch64'" in str(exc.value)
    assert "machine_info arch:" in str(exc.value)


def test_other_cpu_model_is_refused(tmp_path: Path, base: Path) -> None:
    doc = json.loads(base.read_text())
    doc["machine_info"]["cpu"]["brand_raw"] = "Cortex-A78AE"
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    with pytest.raises(EdgeMatrixError, match=r"machine_info cpu model: base .* vs candidate 'Cortex-A78AE'"):
        compare_benchmark_files(base, cand)


def _cand_with(tmp_path: Path, scale: float, accuracy: float | None) -> Path:
    extra = {} if accuracy is None else {"accuracy": accuracy}
    return write(tmp_path / "cand.json", [entry(CAND, rounds(4, 0.012 * scale), **extra)])


def test_faster_candidate_may_not_buy_speed_with_accuracy(tmp_path: Path, base: Path) -> None:
    result = compare_benchmark_files(base, _cand_with(tmp_path, 0.80, 89.05))  # 20% faster, -0.80 points
    (row,) = result.rows
    assert row.latency.status == "improvement"
    assert row.accuracy_delta == pytest.approx(-0.80)
    assert row.accuracy_status == "failed" and row.failed and result.failed
    assert row.verdict == "faster but accuracy loss"
    assert "faster by" in row.accuracy_message and "lost 0.80 points" in row.accuracy_message
    assert "0.50 point budget" in row.accuracy_message


def test_faster_candidate_within_budget_passes(tmp_path: Path, base: Path) -> None:
    result = compare_benchmark_files(base, _cand_with(tmp_path, 0.80, 89.45))  # -0.40 points
    (row,) = result.rows
    assert (row.latency.status, row.accuracy_status, row.verdict) == ("improvement", "passed", "improvement")
    assert not result.failed
    # a drop of exactly the budget passes; a wider budget admits a larger drop
    assert not compare_benchmark_files(base, _cand_with(tmp_path, 0.80, 89.35)).failed
    assert not compare_benchmark_files(base, _cand_with(tmp_path, 0.80, 89.05), accuracy_budget=1.0).failed


def test_accuracy_loss_without_speedup_fails(tmp_path: Path, base: Path) -> None:
    (row,) = compare_benchmark_files(base, _cand_with(tmp_path, 1.0, 89.05)).rows
    assert row.latency.status == "within noise"
    assert row.verdict == "accuracy loss" and row.failed


def test_regression_and_accuracy_loss_both_named(tmp_path: Path, base: Path) -> None:
    (row,) = compare_benchmark_files(base, _cand_with(tmp_path, 1.2, 89.05)).rows
    assert row.verdict == "regression + accuracy loss"


def test_accuracy_absent_is_not_applicable(tmp_path: Path, base: Path) -> None:
    (row,) = compare_benchmark_files(base, _cand_with(tmp_path, 1.0, None)).rows
    assert row.accuracy_delta is None and row.cand_accuracy is None
    assert row.accuracy_status == "not applicable" and "candidate" in row.accuracy_message
    assert not row.failed


def test_duplicate_names_are_refused(tmp_path: Path, base: Path) -> None:
    doc = json.loads(base.read_text())
    doc["benchmarks"][1]["name"] = REF
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    with pytest.raises(EdgeMatrixError, match=r"two benchmarks named"):
        compare_benchmark_files(base, cand)


@pytest.mark.parametrize(
    ("kwargs", "needle"),
    [
        ({"min_effect": 5.0}, "min_effect must be a fraction"),
        ({"confidence": 2.0}, "confidence must be in"),
        ({"accuracy_budget": -1.0}, "accuracy_budget must be a number of points >= 0"),
    ],
)
def test_bad_settings(base: Path, kwargs: dict, needle: str) -> None:
    with pytest.raises(EdgeMatrixError) as exc:
        compare_benchmark_files(base, base, **kwargs)
    assert needle in str(exc.value)


def test_too_few_rounds_names_the_benchmark(tmp_path: Path, base: Path) -> None:
    cand = write(tmp_path / "cand.json", [entry(CAND, [0.012] * 3, accuracy=89.85)])
    with pytest.raises(EdgeMatrixError, match=r"benchmark 'x86_cpu_int8\[candidate\]': candidate has 3 latency"):
        compare_benchmark_files(base, cand)


def test_missing_file_is_an_input_error(tmp_path: Path, base: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"does not exist"):
        compare_benchmark_files(base, tmp_path / "nope.json")


# -- one comparison, many benchmarks ----------------------------------------------------------

CELL = [f"x86_cpu_int8[{role}]" for role in ("reference", "candidate", "unpruned", "reference@ov", "candidate@ov")]


def noisy(seed: int, median_s: float, n: int = 50) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in median_s * np.exp(rng.normal(0.0, 0.08, n))]


def test_a_small_slowdown_of_every_benchmark_is_within_noise(tmp_path: Path) -> None:
    """Five benchmarks, the candidate run 4% slower in all (below the 5% minimum effect), noisy rounds:
    no regression in any of 10 seeded comparisons, although single benchmarks' point estimates pass 5%."""
    point_estimates_beyond = 0
    for trial in range(10):
        base = write(tmp_path / "b.json", [entry(n, noisy(100 * trial + i, 0.01)) for i, n in enumerate(CELL)])
        cand = write(tmp_path / "c.json", [entry(n, noisy(100 * trial + 50 + i, 0.0104)) for i, n in enumerate(CELL)])
        result = compare_benchmark_files(base, cand)
        assert not result.failed, [r.latency.message for r in result.rows]
        assert all(r.latency.comparisons == 5 and r.latency.level == pytest.approx(0.99) for r in result.rows)
        point_estimates_beyond += any(r.latency.ratio > 1.05 for r in result.rows)
    assert point_estimates_beyond >= 3  # what the previous, point-estimate rule would have flagged


def test_a_ten_percent_slowdown_of_one_benchmark_of_five_is_caught(tmp_path: Path) -> None:
    base = write(tmp_path / "b.json", [entry(n, rounds(i, 0.01)) for i, n in enumerate(CELL)])
    cand = write(tmp_path / "c.json", [entry(n, rounds(10 + i, 0.011 if i == 1 else 0.01)) for i, n in enumerate(CELL)])
    result = compare_benchmark_files(base, cand)
    assert [r.name for r in result.failures] == [CELL[1]]


# -- the machine state of each file ------------------------------------------------------------


def record(other_cpu_share: float) -> dict:
    """A contention record as the harness writes it: 2 CPUs for 4 s, others using the given share."""
    return Contention(
        wall_s=4.0,
        rounds=60,
        cpus=2,
        machine_cpus=2,
        cpu_capacity_s=8.0,
        own_cpu_s=3.0,
        other_cpu_s=8.0 * other_cpu_share,
        steal_s=0.0,
        own_wait_s=0.05,
        pressure_s=0.1,
        runnable_mean=0.1,
        runnable_max=1,
        load_1m_start=0.5,
        load_1m_end=0.6,
        spread={CAND: 0.03},
    ).as_dict()


def test_a_busy_candidate_run_is_inconclusive_not_a_regression(tmp_path: Path, base: Path) -> None:
    cand = write(
        tmp_path / "cand.json",
        [entry(REF, rounds(3, 0.037), accuracy=89.77), entry(CAND, rounds(4, 0.012 * 1.31), accuracy=89.85)],
        **{CONTENTION_KEY: record(0.6)},
    )
    result = compare_benchmark_files(base, cand)
    assert not result.failed and result.inconclusive
    assert [r.latency.status for r in result.rows] == ["inconclusive", "inconclusive"]
    assert [r.verdict for r in result.rows] == ["inconclusive", "inconclusive"]
    row = result.rows[1]
    assert row.latency.ratio > 1.2  # what it measured is still reported
    assert row.latency.busy == ("candidate: other processes' CPU 60% (limit 3%)",)
    assert row.latency.message.startswith(f"{BUSY_PREFIX} — re-measure (candidate: other processes' CPU 60%")
    assert result.base_machine == "no contention record"
    assert result.cand_machine.startswith("busy: other processes' CPU 60% (limit 3%)")
    # accuracy is still judged on a busy machine: it does not depend on timing
    assert [r.accuracy_status for r in result.rows] == ["passed", "passed"]


def test_a_quiet_record_is_judged_and_a_busy_base_is_inconclusive(tmp_path: Path) -> None:
    entries = [entry(REF, rounds(1, 0.037)), entry(CAND, rounds(2, 0.012))]
    slow = [entry(REF, rounds(3, 0.037)), entry(CAND, rounds(4, 0.012 * 1.10))]
    quiet = write(tmp_path / "quiet.json", entries, **{CONTENTION_KEY: record(0.02)})
    cand = write(tmp_path / "cand.json", slow, **{CONTENTION_KEY: record(0.01)})
    judged = compare_benchmark_files(quiet, cand)
    assert judged.failed and not judged.inconclusive
    assert judged.base_machine.startswith("quiet (other processes' CPU 2%")
    assert not compare_benchmark_files(
        quiet, write(tmp_path / "c2.json", slow, **{CONTENTION_KEY: record(0.05)})
    ).failed
    busy_base = write(tmp_path / "busy.json", entries, **{CONTENTION_KEY: record(0.4)})
    result = compare_benchmark_files(busy_base, cand)
    assert not result.failed and result.inconclusive
    assert result.rows[1].latency.busy == ("base: other processes' CPU 40% (limit 3%)",)


def test_a_malformed_contention_record_is_an_input_error(tmp_path: Path, base: Path) -> None:
    broken = record(0.0)
    del broken["own_cpu_s"]
    cand = write(tmp_path / "cand.json", [entry(CAND, rounds(4, 0.012))], **{CONTENTION_KEY: broken})
    with pytest.raises(EdgeMatrixError, match=r"machine_info 'latency_contention' is malformed: .* lacks 'own_cpu_s'"):
        compare_benchmark_files(base, cand)
