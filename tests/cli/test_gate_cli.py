"""`edgematrix gate compare BASE.json CAND.json`: one line per benchmark, exit 0 / 1 / 2."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgematrix.cli import main
from edgematrix.core.results import BenchmarkEntry, write_benchmark_json

REF, CAND = "x86_cpu_int8[reference]", "x86_cpu_int8[candidate]"
SRC = str(Path(__file__).resolve().parents[2] / "src")


def rounds(seed: int, median_s: float, n: int = 60) -> list[float]:
    rng = np.random.default_rng(seed)
    return [float(x) for x in median_s * np.exp(rng.normal(0.0, 0.05, n))]


def write(path: Path, cand_scale: float, cand_accuracy: float, *, version: str = "1.31.1") -> Path:
    common = {"backend": "onnxruntime", "backend_version": version}
    seed = 10 if path.stem == "base" else 20
    entries = [
        BenchmarkEntry(
            REF, "g", rounds(seed, 0.037), {**common, "role": "reference", "precision": "fp32", "accuracy": 89.8}
        ),
        BenchmarkEntry(
            CAND,
            "g",
            rounds(seed + 1, 0.012 * cand_scale),
            {**common, "role": "candidate", "precision": "int8", "accuracy": cand_accuracy},
        ),
    ]
    write_benchmark_json(path, entries)
    return path


@pytest.fixture
def base(tmp_path: Path) -> Path:
    return write(tmp_path / "base.json", 1.0, 89.9)


LINE = re.compile(
    r"^(?P<name>\S+)\s+ratio (?P<ratio>\d\.\d{3})\s+(?P<level>[\d.]+)% CI (?P<lo>\d\.\d{3})\.\.(?P<hi>\d\.\d{3})\s+"
    r"p=(?P<p>\S+)\s+accuracy (?P<acc>[+-]\d+\.\d\d) pts\s+(?P<flag>ok|FAIL|BUSY): (?P<verdict>.+)$"
)


def parse(out: str) -> dict[str, dict[str, str]]:
    rows = {}
    for line in out.splitlines():
        m = LINE.match(line)
        if m:
            rows[m["name"]] = m.groupdict()
    return rows


def test_no_failure_exits_0_and_prints_each_benchmark(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = write(tmp_path / "cand.json", 1.0, 89.9)
    assert main(["gate", "compare", str(base), str(cand)]) == 0
    out = capsys.readouterr().out
    rows = parse(out)
    assert set(rows) == {REF, CAND}
    for row in rows.values():
        assert float(row["lo"]) < float(row["ratio"]) < float(row["hi"])
        assert 0.95 < float(row["ratio"]) < 1.05
        assert float(row["p"]) > 0.05
        assert (row["acc"], row["flag"], row["verdict"]) == ("+0.00", "ok", "within noise")
        assert row["level"] == "97.5"  # 95% for the two benchmarks together
    assert out.startswith("base rounds: no contention record\ncandidate rounds: no contention record\n")
    assert (
        "2 benchmark(s) compared, none failed (min effect 5.0%, confidence 95% over 2 benchmark(s) "
        "(each interval 97.5%), accuracy budget 0.50 pts)"
    ) in out


def test_regression_exits_1(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cand = write(tmp_path / "cand.json", 1.10, 89.9)
    assert main(["gate", "compare", str(base), str(cand)]) == 1
    captured = capsys.readouterr()
    rows = parse(captured.out)
    assert (rows[CAND]["flag"], rows[CAND]["verdict"]) == ("FAIL", "regression")
    assert float(rows[CAND]["lo"]) > 1.0 and float(rows[CAND]["ratio"]) > 1.05
    assert rows[REF]["flag"] == "ok"
    assert "gate failed: 1 of 2 benchmark(s) failed" in captured.err
    assert "regression, the whole interval beyond the 5% minimum effect" in captured.err


def test_min_effect_accepts_percent_and_fraction(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cand = write(tmp_path / "cand.json", 1.10, 89.9)
    assert main(["gate", "compare", str(base), str(cand), "--min-effect", "20%"]) == 0
    percent = capsys.readouterr().out
    assert main(["gate", "compare", str(base), str(cand), "--min-effect", "0.2"]) == 0
    assert capsys.readouterr().out == percent
    assert "min effect 20.0%" in percent
    assert main(["gate", "compare", str(base), str(cand), "--confidence", "99%"]) == 1
    assert "99.5% CI" in capsys.readouterr().out  # 99% for both benchmarks together


def test_faster_but_less_accurate_exits_1(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cand = write(tmp_path / "cand.json", 0.8, 89.1)  # 20% faster, -0.80 points
    assert main(["gate", "compare", str(base), str(cand)]) == 1
    captured = capsys.readouterr()
    row = parse(captured.out)[CAND]
    assert (row["acc"], row["flag"], row["verdict"]) == ("-0.80", "FAIL", "faster but accuracy loss")
    assert "lost 0.80 points of accuracy" in captured.err
    assert main(["gate", "compare", str(base), str(cand), "--accuracy-budget", "1.0"]) == 0
    assert parse(capsys.readouterr().out)[CAND]["verdict"] == "improvement"


def test_missing_benchmarks_are_listed(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    doc = json.loads(write(tmp_path / "cand.json", 1.0, 89.9).read_text())
    doc["benchmarks"] = doc["benchmarks"][1:]
    cand = tmp_path / "cand.json"
    cand.write_text(json.dumps(doc))
    assert main(["gate", "compare", str(base), str(cand)]) == 0
    out = capsys.readouterr().out
    assert set(parse(out)) == {CAND}
    assert f"{REF}  only in base ({base}): not compared" in out


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--min-effect", "five"], "--min-effect must be a fraction (0.05) or a percentage (5%); got 'five'"),
        (["--min-effect", "5"], "--min-effect '5' is ambiguous: write 5% or 0.05"),
        (["--min-effect", "150%"], "min_effect must be a fraction in [0, 1)"),
        (["--confidence", "1.5%"], "confidence must be in [0.5, 1)"),
        (["--accuracy-budget", "lots"], "--accuracy-budget must be a number of points"),
        (["--accuracy-budget", "-1"], "accuracy_budget must be a number of points >= 0"),
    ],
)
def test_bad_options_exit_2(base: Path, args: list[str], needle: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "compare", str(base), str(base), *args]) == 2
    assert needle in capsys.readouterr().err


def test_input_errors_exit_2(tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["gate", "compare", str(base), str(tmp_path / "nope.json")]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = write(tmp_path / "cand.json", 1.0, 89.9, version="1.30.0")
    assert main(["gate", "compare", str(base), str(other)]) == 2
    err = capsys.readouterr().err
    assert "refusing to compare" in err and "base '1.31.1' vs candidate '1.30.0'" in err


def test_usage_error_exits_2(base: Path) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["gate", "compare", str(base)])
    assert exc.value.code == 2


def test_console_exit_codes(tmp_path: Path, base: Path) -> None:
    """The real process: exit status 1 on a regression, the lines on stdout, the reason on stderr."""
    cand = write(tmp_path / "cand.json", 1.10, 89.9)
    proc = subprocess.run(
        [sys.executable, "-m", "edgematrix.cli", "gate", "compare", str(base), str(cand), "--min-effect", "5%"],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [SRC, os.environ.get("PYTHONPATH")]))},
    )
    assert proc.returncode == 1, proc.stderr
    assert parse(proc.stdout)[CAND]["verdict"] == "regression"
    assert proc.stderr.startswith("edgematrix: gate failed:")


def test_busy_machine_is_inconclusive_exit_0_and_said(
    tmp_path: Path, base: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A candidate run measured beside CPU-bound processes: +31% is not a regression, nor a pass."""
    from edgematrix.measure.contention import Contention

    busy = Contention(
        wall_s=5.0,
        rounds=60,
        cpus=2,
        machine_cpus=2,
        cpu_capacity_s=10.0,
        own_cpu_s=4.0,
        other_cpu_s=5.5,
        steal_s=0.0,
        own_wait_s=2.0,
        pressure_s=4.8,
        runnable_mean=2.3,
        runnable_max=4,
        load_1m_start=2.1,
        load_1m_end=2.9,
        spread={CAND: 0.21},
    )
    cand = write(tmp_path / "cand.json", 1.31, 89.9)
    doc = json.loads(cand.read_text())
    doc["machine_info"]["latency_contention"] = busy.as_dict()
    cand.write_text(json.dumps(doc))
    assert main(["gate", "compare", str(base), str(cand)]) == 0
    out = capsys.readouterr().out
    rows = parse(out)
    assert {(r["flag"], r["verdict"]) for r in rows.values()} == {("BUSY", "inconclusive")}
    assert float(rows[CAND]["ratio"]) > 1.2
    # the CPU-tick shares were counted, so they decide; our threads' wait is shown among the figures
    assert "candidate rounds: busy: other processes' CPU 55% (limit 3%) (other processes' CPU 55%, our threads" in out
    assert (
        "2 benchmark(s) compared, none failed, latency not judged: not comparable: machine busy — re-measure (" in out
    )
