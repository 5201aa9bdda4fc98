"""The contention record: real /proc around real ONNX Runtime rounds and real CPU-bound neighbours,
and the arithmetic on known /proc contents."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from edgematrix.core.results import check_extra_info
from edgematrix.errors import EdgeMatrixError
from edgematrix.measure import contention
from edgematrix.measure.contention import THRESHOLDS, Contention, ContentionProbe
from edgematrix.measure.harness import LatencyConfig, Measurement, measure_interleaved


def conv_model(path: Path) -> Path:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((16, 3, 3, 3)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])],
        "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 64, 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 64, 64])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.save(model, str(path))
    return path


FEED = {"x": np.ones((1, 3, 64, 64), np.float32)}


def test_real_rounds_carry_a_record_of_the_machine(tmp_path: Path) -> None:
    from edgematrix.backends.onnxruntime.runner import OnnxrtRunner

    model = conv_model(tmp_path / "conv.onnx")
    runners = {role: OnnxrtRunner(model, name=role) for role in ("reference", "candidate")}
    # long enough for /proc/stat's 10 ms ticks to give the shares (MIN_CAPACITY_S CPU-seconds)
    config = LatencyConfig(warmup=2, min_rounds=40, max_rounds=100_000, min_time_s=2.2, max_time_s=60.0)
    result = measure_interleaved(runners, FEED, config)
    assert isinstance(result, Measurement) and isinstance(result, dict)
    c = result.contention
    assert all(s.contention is c for s in result.values())
    assert c.rounds >= 40 and c.wall_s >= 2.2
    assert c.own_cpu_s > 0  # the inferences ran in this process
    cpus = os.cpu_count() or 1
    assert c.cpu_capacity_s is not None and 0.5 * cpus * c.wall_s < c.cpu_capacity_s < 1.5 * cpus * c.wall_s + 0.05
    for name, value in c.shares().items():
        assert value is not None and value >= 0, name
    assert c.other_cpu_share is not None and c.other_cpu_share <= 1.0
    assert c.own_wait_share is not None and c.own_wait_share <= 1.0
    assert c.runnable_max is not None and c.runnable_max >= 0
    assert set(c.spread) == {"reference", "candidate"}
    # rounds too short for the tick counts: those shares are unknown, not zero
    short = Contention.from_dict({**c.as_dict(), "cpu_capacity_s": contention.MIN_CAPACITY_S / 2})
    assert short.other_cpu_share is None and short.steal_share is None and short.own_wait_share is not None
    expected = {
        k: (np.percentile(v.samples_s, 75) - np.percentile(v.samples_s, 25)) / v.percentile(50)
        for k, v in result.items()
    }
    assert c.spread == pytest.approx(expected)
    assert result.busy == c.busy == bool(c.reasons())
    # the record survives benchmark.json: plain JSON, read back equal
    record = json.loads(json.dumps(c.as_dict(), allow_nan=False))
    back = Contention.from_dict(record)
    assert back.reasons() == c.reasons()
    assert back.shares() == pytest.approx(c.shares(), abs=1e-3)  # raw figures are stored to 5 decimals
    for key in ("reference", "candidate"):
        extra = c.extra_info(key)
        check_extra_info(extra)
        assert extra["machine_state"] == ("busy" if c.busy else "quiet")


def test_cpu_bound_neighbours_make_the_machine_busy(tmp_path: Path) -> None:
    """As many `while True: pass` processes as this process may use CPUs: the record says busy."""
    from edgematrix.backends.onnxruntime.runner import OnnxrtRunner

    model = conv_model(tmp_path / "conv.onnx")
    count = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen(["timeout", "60", sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        with OnnxrtRunner(model, name="m") as runner:
            for _ in range(3):
                runner.infer(FEED)
            # min_time_s decides (a 10 000-round cap stopped a fast run after 0.87 s, too short for the CPU-tick shares)
            config = LatencyConfig(warmup=0, min_rounds=30, max_rounds=10_000_000, min_time_s=1.5, max_time_s=60.0)
            result = measure_interleaved({"m": runner}, FEED, config)
    finally:
        for proc in spinners:
            proc.terminate()
        for proc in spinners:
            proc.wait()
    c = result.contention
    assert c.busy and result.busy
    assert c.other_cpu_share is not None and c.other_cpu_share >= THRESHOLDS["other_cpu_share"]
    assert any(r.startswith("other processes' CPU") for r in c.reasons())
    assert c.runnable_per_cpu is not None and c.runnable_per_cpu >= 0.5
    assert c.summary().startswith("busy: ")
    assert c.extra_info("m")["machine_state"] == "busy"


# -- arithmetic on known /proc contents ---------------------------------------------------------


HZ = os.sysconf("SC_CLK_TCK")


def fake_proc(root: Path, *, stat: list[int], loadavg: str, pressure_us: int, waits: dict[str, int]) -> None:
    """/proc files of a 4-CPU machine: CPUs 0 and 1 share ``stat`` equally, CPUs 2 and 3 are idle."""
    root.mkdir(exist_ok=True)
    half = " ".join(str(v // 2) for v in stat)
    idle = "0 0 0 1000 0 0 0 0 0 0"
    aggregate = " ".join(str(v // 2 * 2 + (1000 if i == 3 else 0) * 2) for i, v in enumerate(stat))
    (root / "stat").write_text(
        f"cpu  {aggregate}\ncpu0 {half}\ncpu1 {half}\ncpu2 {idle}\ncpu3 {idle}\nintr 1 2 3\nprocs_running 3\n"
    )
    (root / "loadavg").write_text(loadavg)
    (root / "pressure").write_text(
        f"some avg10=1.00 avg60=0.50 avg300=0.10 total={pressure_us}\nfull avg10=0.00 avg60=0.00 avg300=0.00 total=0\n"
    )
    tasks = root / "task"
    tasks.mkdir(exist_ok=True)
    for tid, wait in waits.items():
        (tasks / tid).mkdir(exist_ok=True)
        (tasks / tid / "schedstat").write_text(f"123456 {wait} 7\n")


@pytest.fixture
def proc(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "proc"
    monkeypatch.setattr(contention, "PROC_STAT", str(root / "stat"))
    monkeypatch.setattr(contention, "PROC_LOADAVG", str(root / "loadavg"))
    monkeypatch.setattr(contention, "PROC_PRESSURE_CPU", str(root / "pressure"))
    monkeypatch.setattr(contention, "PROC_TASKS", str(root / "task"))
    monkeypatch.setattr(contention, "_affinity", lambda: frozenset({0, 1}))  # this process runs on CPUs 0 and 1
    return root


def test_known_proc_contents_give_exact_figures(proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    own = iter([10.0, 10.0 + 1.5])  # this process used 1.5 s of CPU during the rounds
    monkeypatch.setattr(contention, "_own_cpu_s", lambda: next(own))
    #              user nice system idle iowait irq softirq steal guest guest_nice   (CPUs 0 + 1)
    fake_proc(proc, stat=[1000, 0, 200, 5000, 10, 0, 0, 0, 0, 0], loadavg="0.50 0.40 0.30 1/200 999\n",
              pressure_us=1_000_000, waits={"11": 5_000_000, "12": 0})  # fmt: skip
    probe = ContentionProbe()
    probe.start()
    # 4 s of our 2 CPUs = 8 s capacity: busy +4.0 s (of which ours 1.5 s), steal +0.4 s; CPUs 2, 3 idle
    d = [int(3.0 * HZ), 0, int(1.0 * HZ), int(3.5 * HZ), int(0.1 * HZ), 0, 0, int(0.4 * HZ), 0, 0]
    end = [a + b for a, b in zip([1000, 0, 200, 5000, 10, 0, 0, 0, 0, 0], d, strict=True)]
    fake_proc(proc, stat=end, loadavg="1.75 0.90 0.40 3/210 1001\n", pressure_us=3_500_000,
              waits={"11": 305_000_000, "12": 100_000_000, "13": 50_000_000})  # fmt: skip
    for running in ("3/210", "1/210", "4/212"):
        (proc / "loadavg").write_text(f"1.75 0.90 0.40 {running} 1001\n")
        probe.sample()
    c = probe.stop({"a": [0.010, 0.011, 0.012, 0.013, 0.014], "b": [0.002] * 5})
    assert c.cpu_capacity_s == pytest.approx(sum(d) / HZ)
    assert c.other_cpu_s == pytest.approx(4.0 - 1.5)
    assert c.other_cpu_share == pytest.approx(2.5 / (sum(d) / HZ))
    assert c.steal_s == pytest.approx(0.4)
    assert c.own_cpu_s == pytest.approx(1.5)
    # thread 11 waited 0.30 s more, 12 waited 0.10 s, 13 (new during the rounds) 0.05 s
    assert c.own_wait_s == pytest.approx(0.45)
    assert c.own_wait_share == pytest.approx(0.45 / (1.5 + 0.45))
    assert c.pressure_s == pytest.approx(2.5)
    assert (c.runnable_mean, c.runnable_max) == (pytest.approx((2 + 0 + 3) / 3), 3)
    assert (c.cpus, c.machine_cpus) == (2, 4)
    assert c.runnable_per_cpu == pytest.approx(5 / 3 / 4)
    assert (c.load_1m_start, c.load_1m_end) == (0.5, 1.75)
    assert c.rounds == 5
    assert c.spread == pytest.approx({"a": (0.013 - 0.011) / 0.012, "b": 0.0})
    # the CPU-tick shares were counted, so they decide; our own threads' signals are fallbacks
    assert c.reasons() == [
        f"other processes' CPU {2.5 / (sum(d) / HZ):.0%} (limit 3%)",
        f"CPU steal {0.4 / (sum(d) / HZ):.0%} (limit 3%)",
    ]
    assert c.reasons({"runnable_per_cpu": 0.4}) == []


def test_only_the_cpus_this_process_may_use_are_counted(proc: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Other work on CPUs outside our affinity (taskset, cpuset) does not compete with us."""
    monkeypatch.setattr(contention, "_affinity", lambda: frozenset({2, 3}))  # pinned to the idle CPUs
    monkeypatch.setattr(contention, "_own_cpu_s", lambda: 0.0)
    stat = [1000, 0, 200, 5000, 10, 0, 0, 0, 0, 0]
    fake_proc(proc, stat=stat, loadavg="0.5 0.4 0.3 1/200 9\n", pressure_us=0, waits={})
    probe = ContentionProbe()
    probe.start()
    fake_proc(proc, stat=[v + 400 for v in stat], loadavg="0.5 0.4 0.3 1/200 9\n", pressure_us=0, waits={})
    (proc / "stat").write_text((proc / "stat").read_text().replace("cpu2 0 0 0 1000", "cpu2 0 0 0 1400"))
    c = probe.stop({})
    assert c.cpus == 2 and c.other_cpu_s == 0.0 and c.cpu_capacity_s == pytest.approx(400 / HZ)
    assert c.other_cpu_share == 0.0


def test_missing_proc_files_leave_signals_unknown_not_busy(proc: Path) -> None:
    probe = ContentionProbe()
    probe.start()
    probe.sample()
    c = probe.stop({"a": [0.01] * 5})
    assert (c.cpu_capacity_s, c.other_cpu_s, c.steal_s, c.own_wait_s, c.pressure_s) == (None,) * 5
    assert (c.runnable_mean, c.runnable_max, c.load_1m_start) == (None, None, None)
    assert c.shares() == dict.fromkeys(THRESHOLDS)
    assert c.pressure_share is None
    assert c.reasons() == [] and not c.busy
    assert c.summary() == f"quiet (round spread up to 0.0% of the median; 5 rounds in {c.wall_s:.1f} s)"
    assert Contention.from_dict(json.loads(json.dumps(c.as_dict()))).busy is False


def quiet_record(**overrides: object) -> Contention:
    fields = dict(
        wall_s=5.0, rounds=100, cpus=2, machine_cpus=2, cpu_capacity_s=10.0, own_cpu_s=4.0, other_cpu_s=0.1, steal_s=0.0, own_wait_s=0.1,
        pressure_s=0.2, runnable_mean=0.2, runnable_max=2, load_1m_start=0.4, load_1m_end=0.5, spread={"a": 0.03},
    )  # fmt: skip
    return Contention(**{**fields, **overrides})  # type: ignore[arg-type]


def test_thresholds_decide_and_can_be_overridden() -> None:
    c = quiet_record()
    assert c.reasons() == [] and c.summary() == (
        "quiet (other processes' CPU 1%, our threads waiting for a CPU 2%, CPU steal 0%, other runnable tasks per "
        "CPU 0.10, round spread up to 3.0% of the median; 100 rounds in 5.0 s)"
    )
    assert c.reasons({"other_cpu_share": 0.005}) == ["other processes' CPU 1% (limit 0%)"]
    # our own threads' signals judge only rounds too short for the CPU-tick shares (capacity < MIN_CAPACITY_S)
    assert quiet_record(runnable_mean=1.4).reasons() == []
    short = quiet_record(runnable_mean=1.4, own_wait_s=1.0, cpu_capacity_s=1.0)
    assert short.other_cpu_share is None
    assert short.reasons() == [
        "our threads waiting for a CPU 20% (limit 10%)",
        "other runnable tasks per CPU 0.70 (limit 0.50)",
    ]
    assert short.reasons({"runnable_per_cpu": 0.8}) == []


def test_a_sub_millisecond_model_on_a_quiet_machine_is_quiet() -> None:
    """A quiet run of PilotNet's 0.3 ms static INT8 model (3000 interleaved rounds, x86_cpu_pilotnet_static_int8):
    its pools' hand-offs make our threads wait 14% and leave 0.50 runnable tasks per CPU, while other processes
    used 1.0% of the CPUs; a neighbour is caught by the CPU-tick shares."""
    c = quiet_record(wall_s=4.24, rounds=3000, cpu_capacity_s=8.48, own_cpu_s=6.0, own_wait_s=0.97, other_cpu_s=0.088,
                     runnable_mean=1.003)  # fmt: skip
    assert (round(c.own_wait_share or 0, 2), round(c.runnable_per_cpu or 0, 2)) == (0.14, 0.5)
    assert c.reasons() == [] and not c.busy
    busy = quiet_record(wall_s=4.24, rounds=3000, cpu_capacity_s=8.48, own_cpu_s=6.0, own_wait_s=0.97, other_cpu_s=0.5,
                        runnable_mean=1.003)  # fmt: skip
    assert busy.reasons() == ["other processes' CPU 6% (limit 3%)"]
    with pytest.raises(EdgeMatrixError, match=r"unknown contention threshold\(s\) \['load'\]"):
        c.reasons({"load": 1.0})


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"own_cpu_s": None}, "contention record's own_cpu_s must be a number"),
        ({"spread": [0.1]}, "spread must map runner names to numbers"),
        ({"spread": {"a": "wide"}}, "spread must map runner names to numbers"),
    ],
)
def test_malformed_records_are_refused(change: dict, needle: str) -> None:
    data = {**quiet_record().as_dict(), **change}
    with pytest.raises(EdgeMatrixError, match=needle):
        Contention.from_dict(data)
    with pytest.raises(EdgeMatrixError, match="lacks 'rounds'"):
        Contention.from_dict({k: v for k, v in quiet_record().as_dict().items() if k != "rounds"})
    with pytest.raises(EdgeMatrixError, match="must be a JSON object"):
        Contention.from_dict([1, 2])  # type: ignore[arg-type]


def test_stop_before_start_is_a_bug() -> None:
    with pytest.raises(RuntimeError, match="before start"):
        ContentionProbe().stop()
