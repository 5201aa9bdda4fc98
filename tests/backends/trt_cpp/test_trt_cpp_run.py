"""Running trt_runner: the --cpu-selftest under qemu-user (aarch64) and natively, its JSON against
numpy and the Python harness's stop rule, the output of its workload, and its errors."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest

from edgematrix.backends.trt_cpp import (
    RESULT_SCHEMA,
    BuiltRunner,
    RunnerResult,
    TrtCppMeter,
    build_runner,
    emulator_for,
    parse_result,
    report_from_json,
    run_runner,
)
from edgematrix.backends.trt_cpp import run as run_module
from edgematrix.errors import BackendError, EdgeMatrixError, ModelError, RunnerUnavailableError
from edgematrix.measure.harness import LatencyConfig, enough_rounds
from edgematrix.measure.meter import LatencyMeter, LatencyReport

SMALL = ["--selftest-size", "3x6x5", "--selftest-out-channels", "4"]


def lcg_floats(seed: int, n: int, state: list[int]) -> np.ndarray:
    """The runner's LCG: state = state * 1664525 + 1013904223 (mod 2^32); (state >> 8) / 2^23 - 1."""
    out = np.empty(n, dtype=np.float32)
    s = state[0]
    for i in range(n):
        s = (s * 1664525 + 1013904223) % 2**32
        out[i] = np.float32((s >> 8) / 2**23 - 1.0)
    state[0] = s
    return out


def reference_conv(seed: int, c: int, h: int, w: int, k: int) -> np.ndarray:
    state = [seed]
    x = lcg_floats(seed, c * h * w, state).reshape(c, h, w).astype(np.float64)
    weights = lcg_floats(seed, k * c * 9, state).reshape(k, c, 3, 3).astype(np.float64)
    bias = lcg_floats(seed, k, state).astype(np.float64)
    padded = np.pad(x, ((0, 0), (1, 1), (1, 1)))
    out = np.empty((k, h, w))
    for y in range(h):
        for xx in range(w):
            patch = padded[:, y : y + 3, xx : xx + 3]
            out[:, y, xx] = np.tensordot(weights, patch, axes=([1, 2, 3], [0, 1, 2])) + bias
    return np.maximum(out, 0.0)


def assert_statistics_are_numpys(result: RunnerResult) -> None:
    samples = np.asarray(result.report.samples_ms, dtype=np.float64)
    report = result.report
    assert report.rounds == samples.size == len(result.host_samples_ms)
    # Exact equality: the runner sums pairwise and interpolates exactly as numpy does.
    assert report.p50_ms == float(np.percentile(samples, 50))
    assert report.p90_ms == float(np.percentile(samples, 90))
    assert report.p99_ms == float(np.percentile(samples, 99))
    assert report.mean_ms == float(np.mean(samples))
    assert result.stddev_ms == (float(np.std(samples, ddof=1)) if samples.size > 1 else 0.0)
    assert np.all(samples > 0)


@pytest.fixture(scope="module")
def qemu_result(aarch64_runner: BuiltRunner, tmp_path_factory: pytest.TempPathFactory) -> tuple[RunnerResult, Path]:
    out = tmp_path_factory.mktemp("qemu") / "result.json"
    config = LatencyConfig(warmup=2, min_rounds=23, max_rounds=100, min_time_s=0.0, max_time_s=60.0)
    return run_runner(aarch64_runner, selftest=True, config=config, args=SMALL, out=out), out


def test_selftest_runs_under_qemu_and_says_what_it_is(qemu_result: tuple[RunnerResult, Path]) -> None:
    result, _ = qemu_result
    facts = result.report.facts
    assert result.report.backend == facts["backend"] == "cpu_selftest"
    assert facts["machine"] == "aarch64"  # uname() inside qemu-user: the emulated machine
    assert facts["target_arch"] == "aarch64"
    assert facts["tensorrt_support"] == "not compiled in"
    assert facts["timer"] == "host_steady_clock"
    assert "not a TensorRT measurement" in str(facts["measurement"])
    assert facts["selftest_input"] == "3x6x5"
    assert result.config == LatencyConfig(warmup=2, min_rounds=23, max_rounds=100, min_time_s=0.0, max_time_s=60.0)


def test_qemu_statistics_equal_numpys(qemu_result: tuple[RunnerResult, Path]) -> None:
    result, _ = qemu_result
    assert result.report.rounds == 23  # min_time_s=0: stops exactly at min_rounds
    assert_statistics_are_numpys(result)


def test_json_has_the_latency_report_keys(qemu_result: tuple[RunnerResult, Path]) -> None:
    result, out = qemu_result
    data = json.loads(out.read_text())
    assert data["schema"] == RESULT_SCHEMA
    assert set(LatencyReport("x", 0, 0, 0, 0, 1).as_dict()) <= set(data)
    report = report_from_json(out)
    assert report == result.report
    assert report.as_dict() == {k: data[k] for k in report.as_dict()}


def test_native_selftest_statistics_equal_numpys(native_runner: BuiltRunner) -> None:
    config = LatencyConfig(warmup=1, min_rounds=150, max_rounds=400, min_time_s=0.0, max_time_s=30.0)
    result = run_runner(native_runner, selftest=True, config=config, args=SMALL)
    assert result.report.rounds == 150  # > 128: numpy's pairwise summation splits the array
    assert result.report.facts["machine"] == result.report.facts["target_arch"]
    assert_statistics_are_numpys(result)


@pytest.mark.parametrize("runner_name", ["native_runner", "aarch64_runner"])
def test_selftest_output_is_the_convolution(runner_name: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    runner: BuiltRunner = request.getfixturevalue(runner_name)
    dump = tmp_path / "out.f32"
    config = LatencyConfig(warmup=0, min_rounds=1, max_rounds=1, min_time_s=0.0, max_time_s=10.0)
    result = run_runner(runner, selftest=True, config=config, args=[*SMALL, "--seed", "7", "--save-output", str(dump)])
    got = np.fromfile(dump, dtype=np.float32).reshape(4, 6, 5)
    want = reference_conv(7, 3, 6, 5, 4)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    assert (want == 0).any() and (want > 0).any()  # ReLU clipped some, kept others
    assert result.report.facts["selftest_checksum"] == pytest.approx(float(want.sum()), rel=1e-5)


CONFIGS = [
    LatencyConfig(),
    LatencyConfig(warmup=0, min_rounds=1, max_rounds=6, min_time_s=0.0, max_time_s=1.0),
    LatencyConfig(min_rounds=5, max_rounds=7, min_time_s=0.5, max_time_s=2.0),
    LatencyConfig(min_rounds=50, max_rounds=50, min_time_s=0.0, max_time_s=120.0),
    LatencyConfig(min_rounds=10, max_rounds=1000, min_time_s=1.25, max_time_s=1.25),
]
PROBES = [
    (r, t)
    for r in (0, 1, 4, 5, 6, 7, 9, 10, 11, 49, 50, 51, 999, 1000, 1001)
    for t in (0.0, 0.25, 0.5, 1.0, 1.25, 1.9999, 2.0, 5.0, 119.9, 120.0, 500.0)
]


@pytest.mark.parametrize(
    "config", CONFIGS, ids=lambda c: f"{c.min_rounds}-{c.max_rounds}-{c.min_time_s}-{c.max_time_s}"
)
def test_stop_rule_matches_the_python_harness(aarch64_runner: BuiltRunner, config: LatencyConfig) -> None:
    cmd = [
        *emulator_for(aarch64_runner.machine),
        str(aarch64_runner.path),
        "--stop-rule-stdin",
        "--min-rounds",
        str(config.min_rounds),
        "--max-rounds",
        str(config.max_rounds),
        "--min-time-s",
        repr(config.min_time_s),
        "--max-time-s",
        repr(config.max_time_s),
    ]
    table = "".join(f"{r} {t!r}\n" for r, t in PROBES)
    proc = subprocess.run(cmd, input=table, capture_output=True, text=True, check=True)
    got = [line == "1" for line in proc.stdout.split()]
    want = [enough_rounds(config, r, t) for r, t in PROBES]
    assert got == want
    assert any(want) and not all(want)


def test_a_timed_run_stops_by_the_shared_rule(native_runner: BuiltRunner) -> None:
    config = LatencyConfig(warmup=0, min_rounds=3, max_rounds=100_000, min_time_s=0.05, max_time_s=30.0)
    result = run_runner(native_runner, selftest=True, config=config, args=SMALL)
    assert result.report.rounds >= 3
    assert result.elapsed_s >= 0.05
    assert enough_rounds(config, result.report.rounds, result.elapsed_s)
    assert sum(result.report.samples_ms) / 1e3 <= result.elapsed_s


def test_max_time_caps_the_rounds(native_runner: BuiltRunner) -> None:
    config = LatencyConfig(warmup=0, min_rounds=100_000, max_rounds=100_000, min_time_s=0.02, max_time_s=0.02)
    result = run_runner(native_runner, selftest=True, config=config, args=["--selftest-size", "8x32x32"])
    assert 1 <= result.report.rounds < 100_000
    assert result.elapsed_s >= 0.02


# -- errors -------------------------------------------------------------------------------------


def test_missing_engine_file(aarch64_runner: BuiltRunner, tmp_path: Path) -> None:
    missing = tmp_path / "nope.engine"
    proc = subprocess.run(
        [*emulator_for("aarch64"), str(aarch64_runner.path), "--engine", str(missing)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == run_module.EXIT_ENGINE_FILE == 3
    assert f"engine file {missing} does not exist" in proc.stderr
    assert proc.stdout == ""
    with pytest.raises(ModelError, match=r"nope\.engine does not exist.*trtexec"):
        run_runner(aarch64_runner, engine=missing)


def test_tensorrt_not_compiled_in(aarch64_runner: BuiltRunner, tmp_path: Path) -> None:
    engine = tmp_path / "model.engine"
    engine.write_bytes(b"\x00" * 64)
    proc = subprocess.run(
        [*emulator_for("aarch64"), str(aarch64_runner.path), "--engine", str(engine)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == run_module.EXIT_NO_TENSORRT == 4
    assert "built without TensorRT" in proc.stderr
    assert "docker/driveos/Dockerfile" in proc.stderr
    with pytest.raises(RunnerUnavailableError, match=r"DriveOS image"):
        run_runner(aarch64_runner, engine=engine)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--cpu-selftest", "--bogus"], "unknown argument '--bogus'"),
        (["--cpu-selftest", "--min-rounds", "0"], "need 1 <= min_rounds <= max_rounds, got 0 and 1000"),
        (["--cpu-selftest", "--min-time-s", "9", "--max-time-s", "1"], "need 0 <= min_time_s <= max_time_s"),
        (["--cpu-selftest", "--warmup", "x"], "--warmup needs an integer, got 'x'"),
        ([], "say what to run"),
        (["--cpu-selftest", "--engine", "a"], "exclude each other"),
        (["--cpu-selftest", "--shape", "x=1x3"], "--shape and --input apply to --engine only"),
    ],
)
def test_usage_errors_exit_2(native_runner: BuiltRunner, args: list[str], message: str) -> None:
    proc = subprocess.run([str(native_runner.path), *args], capture_output=True, text=True, check=False)
    assert proc.returncode == 2
    assert message in proc.stderr


def test_unwritable_output_exits_6(native_runner: BuiltRunner, tmp_path: Path) -> None:
    out = tmp_path / "no" / "such" / "dir" / "r.json"
    proc = subprocess.run(
        [
            str(native_runner.path),
            "--cpu-selftest",
            "--min-rounds",
            "1",
            "--min-time-s",
            "0",
            "--out",
            str(out),
            *SMALL,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 6
    assert f"cannot write {out}" in proc.stderr


def test_no_qemu_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(run_module, "BINFMT_DIR", tmp_path)  # no qemu-aarch64 entry
    monkeypatch.setattr(run_module.shutil, "which", lambda name: None)
    monkeypatch.setattr(run_module, "host_machine", lambda: "x86_64")
    with pytest.raises(RunnerUnavailableError, match=r"qemu-user-static.*bookworm-backports.*host-tools\.sh"):
        emulator_for("aarch64")
    (tmp_path / "qemu-aarch64").write_text("enabled\ninterpreter /usr/libexec/qemu-binfmt/aarch64-binfmt-P\n")
    assert emulator_for("aarch64") == []
    (tmp_path / "qemu-aarch64").write_text("disabled\n")
    monkeypatch.setattr(run_module.shutil, "which", lambda name: f"/usr/bin/{name}")
    assert emulator_for("aarch64") == ["/usr/bin/qemu-aarch64-static"]
    with pytest.raises(RunnerUnavailableError, match=r"cannot run a riscv64 trt_runner"):
        emulator_for("riscv64")


def test_meter_interface(aarch64_runner: BuiltRunner, tmp_path: Path) -> None:
    meter = TrtCppMeter(aarch64_runner)
    assert isinstance(meter, LatencyMeter)
    with pytest.raises(ModelError, match=r"does not exist"):
        meter.measure(tmp_path / "missing.engine")
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"plan")
    with pytest.raises(RunnerUnavailableError, match=r"built without TensorRT"):
        meter.measure(engine, options={"shapes": {"input": [1, 3, 8, 8]}, "device": 0})
    with pytest.raises(EdgeMatrixError, match=r"unknown trt_runner option\(s\) \['threads'\]"):
        meter.measure(engine, options={"threads": 2})


def test_run_runner_arguments_are_checked(native_runner: BuiltRunner, tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"exactly one of engine= or selftest=True"):
        run_runner(native_runner)
    with pytest.raises(EdgeMatrixError, match=r"does not exist; build it"):
        run_runner(tmp_path / "trt_runner", selftest=True)


# -- parsing ------------------------------------------------------------------------------------


def test_parse_rejects_malformed_results(qemu_result: tuple[RunnerResult, Path]) -> None:
    good = json.loads(qemu_result[1].read_text())
    assert parse_result(good).report == qemu_result[0].report

    def broken(**changes: object) -> dict[str, object]:
        return {**good, **changes}

    cases = [
        (broken(schema="other/1"), r"schema is 'other/1'"),
        (broken(rounds=good["rounds"] + 1), r"expected one of each per round"),
        (broken(p50_ms="fast"), r"'p50_ms' must be a finite number"),
        (broken(samples_ms=[*good["samples_ms"][:-1], None]), r"samples_ms\[22\] must be a finite number"),
        (broken(facts={"ok": True}), r"fact 'ok' must be a string or number"),
        (broken(config={**good["config"], "min_rounds": 0}), r"config is invalid: need 1 <= min_rounds"),
        ({k: v for k, v in good.items() if k != "stddev_ms"}, r"'stddev_ms' must be a finite number"),
    ]
    for data, message in cases:
        with pytest.raises(BackendError, match=message):
            parse_result(data)
    with pytest.raises(BackendError, match=r"not JSON"):
        parse_result("{")
    with pytest.raises(BackendError, match=r"expected a JSON object"):
        parse_result("[1, 2]")


@pytest.mark.slow
def test_dynamic_aarch64_build_runs_with_the_cross_libc(runner_cache: Path) -> None:
    """A dynamically linked aarch64 build (as the DriveOS stage makes) runs under qemu with Debian's
    aarch64 libc (QEMU_LD_PREFIX, set by run_runner)."""
    dynamic = build_runner("aarch64", cache_dir=runner_cache, static=False)
    assert not dynamic.static
    assert b"ld-linux-aarch64.so.1" in dynamic.path.read_bytes()[:4096]  # PT_INTERP of a dynamic executable
    config = LatencyConfig(warmup=0, min_rounds=3, max_rounds=3, min_time_s=0.0, max_time_s=10.0)
    result = run_runner(dynamic, selftest=True, config=config, args=SMALL)
    assert result.report.facts["machine"] == "aarch64"
    assert result.report.rounds == 3
    assert_statistics_are_numpys(result)
