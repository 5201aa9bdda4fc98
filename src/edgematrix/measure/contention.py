"""What the machine was doing while the latency rounds ran, and whether that makes them incomparable.

Same-run ratios cancel a machine that is uniformly slower, not one that is *contended*: when other
processes compete for the cores, each runtime reacts differently (OpenVINO's INT8 model lost more
than its FP32 reference to two CPU-bound neighbours here, +30.9%, a false regression). So the
harness records, over exactly the timed rounds (:class:`ContentionProbe`), what every signal the
kernel offers says about other work on the machine, and :meth:`Contention.reasons` turns it into a
verdict: no reason = quiet, one or more = busy, and the gates answer "not comparable: machine busy
— re-measure" instead of a regression or a pass.

Signals (all from ``/proc``; each is ``None`` where the kernel does not offer it):

* ``other_cpu_s`` — CPU time used by *other* processes during the rounds on the CPUs this process
  may run on (its affinity; ``cpus`` of them): their busy jiffies (``/proc/stat``'s ``cpuN``
  lines: user, nice, system, irq, softirq) minus this process's own CPU time (``getrusage``, every
  thread). ``other_cpu_share`` divides it by those CPUs' capacity over the rounds (their total
  jiffies), so 0.5 = half of our CPUs busy with other work. Counting only our CPUs keeps the figure
  meaningful under ``taskset``/cpusets and on a large host, where other work on CPUs we never use
  does not compete with us. /proc/stat counts whole scheduler ticks, so rounds that offered less
  than ``MIN_CAPACITY_S`` CPU-seconds leave this share (and steal's) unknown.
* ``own_wait_s`` — how long this process's threads were runnable but waiting for a CPU (the
  scheduler's run-queue delay, ``/proc/self/task/*/schedstat``); ``own_wait_share`` divides it by
  the time they wanted a CPU at all (their CPU time plus that wait). The most direct signal: *we*
  were kept off a core.
* ``steal_share`` — CPU time the hypervisor gave to other guests (``/proc/stat`` steal).
* ``pressure_share`` — share of the wall time some task waited for a CPU (PSI, ``/proc/pressure/cpu``).
* ``runnable_mean`` / ``runnable_max`` — other runnable tasks on the whole machine, sampled between
  rounds (``/proc/loadavg``'s running count minus the sampling thread itself);
  ``runnable_per_cpu`` divides the mean by the machine's CPUs (``machine_cpus``).
  ``load_1m_start`` / ``load_1m_end`` — the 1-minute load average around the rounds (a slow,
  smoothed signal: recorded, not used to decide).
* ``spread`` — per runner, the interquartile range of its round times over their median.

The thresholds (:data:`THRESHOLDS`) come from measurements on the 2-core x86 KVM machine of
DESIGN.md, quiet and with CPU-bound or part-time neighbours beside a cell-like measurement; the
table beside them gives the figures, and ``benchmarks/gate_power.py probe`` repeats the experiment.
PSI and the load average are recorded, not judged: PSI counts every task of the machine, ours
waiting for each other included, and the load average is smoothed over a minute.
"""

from __future__ import annotations

import math
import os
import resource
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError

PROC_STAT = "/proc/stat"
PROC_LOADAVG = "/proc/loadavg"
PROC_PRESSURE_CPU = "/proc/pressure/cpu"
PROC_TASKS = "/proc/self/task"
#: /proc/stat counts in scheduler ticks (10 ms at HZ=100), charged whole to whatever runs at each
#: tick: below this many CPU-seconds of capacity (200 ticks at HZ=100) a 3% share is a handful of
#: ticks, so the tick-based shares (other processes' CPU, steal) are left unknown (None)
MIN_CAPACITY_S = 2.0

#: The machine was busy when any of these is reached. Measured on the 2-core x86 KVM machine with
#: ``benchmarks/gate_power.py probe`` (five models of 1-7 ms, FP32 and INT8 on ONNX Runtime and
#: OpenVINO, 100 interleaved rounds; 3 runs per condition, 6 quiet runs from two probes), against the
#: INT8/FP32 same-run ratios of the quiet runs (ORT 0.433-0.444, OV 0.135-0.136):
#:
#: ================  ===========  ==========  =============  ==============  ====================
#: beside it         other CPU    own wait    runnable/CPU   PSI some        ratios off quiet by
#: ================  ===========  ==========  =============  ==============  ====================
#: nothing           0.0-2.2%     2.3-6.1%    0.25-0.27      2.5-6.6%        up to 1.8%
#: 1 x 10% duty      4.9-6.5%     8.2-9.4%    0.32-0.36      9.1-10.7%       up to 5.9%
#: 1 x 25% duty      9.0-10.2%    13.8-16.7%  0.31-0.34      15.7-19.6%      up to 11.6%
#: 1 x 50% duty      16.5-16.9%   21.5-22.0%  0.39-0.45      27.1-27.9%      up to 10.7%
#: 1 x while True    39.3-42.4%   51.4-56.8%  0.97-1.09      59.2-71.1%      up to 32.8%
#: 2 x while True    67.1-67.9%   72.7-73.6%  1.61-1.67      99.2-100%       up to 31.2%
#: ================  ===========  ==========  =============  ==============  ====================
#:
#: (a "duty" neighbour is busy that share of every 20 ms). Even a neighbour busy 10% of the time
#: moved a ratio by 5.9% — more than the gate's 5% minimum effect (the 3 ms OpenVINO INT8 model,
#: rarely hit, against its 7 ms FP32 reference, hit more often) — so the other-CPU limit sits
#: between the quiet runs and that one, not near the CPU-bound case. The run-queue wait of our own threads
#: is 2-6% on a quiet machine (our threads wait for each other: two runtimes' pools on 2 cores).
#:
#: The two signals of our own threads depend on the workload's shape, not only on the neighbours: quiet
#: runs of PilotNet's 0.2-0.4 ms models (3000 interleaved rounds of ONNX Runtime and OpenVINO sessions,
#: the pools handing work over every fraction of a millisecond) had other processes' CPU 0-1.1%, CPU
#: steal 0, but our threads waiting 13-15% and 0.50-0.52 other runnable tasks per CPU (our own pool
#: threads at the round boundaries). So they are *fallbacks*: judged only when the CPU-tick shares
#: (other processes' CPU, steal) are unknown because the rounds were too short to count them
#: (``MIN_CAPACITY_S``); when those are known they decide, and they separate every row of the table.
THRESHOLDS: dict[str, float] = {
    # other processes used this share of our CPUs' capacity during the rounds (quiet <= 2.2%,
    # a neighbour busy 10% of the time >= 4.9%)
    "other_cpu_share": 0.03,
    # our threads waited for a CPU this share of the time they wanted one (quiet <= 6.1%)
    "own_wait_share": 0.10,
    # the hypervisor took this share of our CPUs' capacity: CPU time lost to other guests, like
    # other processes' (quiet <= 0.4%; beside two CPU-bound processes up to 3.4%)
    "steal_share": 0.03,
    # other runnable tasks per CPU of the machine, mean over the round boundaries (quiet 0.25: our
    # own pool threads finishing; one CPU-bound neighbour on 2 CPUs >= 0.97)
    "runnable_per_cpu": 0.5,
}


#: signals of our own threads, judged only when the CPU-tick shares are unknown (see THRESHOLDS)
FALLBACK_SIGNALS = ("own_wait_share", "runnable_per_cpu")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as fh:
            return fh.read()
    except OSError:
        return None


@dataclass(frozen=True)
class _CpuJiffies:
    busy: int  # user + nice + system + irq + softirq (guest time is already inside user)
    steal: int
    total: int  # every field of the cpu line except guest/guest_nice (counted in user/nice)


def _jiffies(fields: list[str]) -> _CpuJiffies:
    values = [int(v) for v in fields] + [0] * 10
    user, nice, system, idle, iowait, irq, softirq, steal = values[:8]
    busy = user + nice + system + irq + softirq
    return _CpuJiffies(busy, steal, busy + idle + iowait + steal)


def _cpu_jiffies(cpus: frozenset[int]) -> tuple[_CpuJiffies, int] | None:
    """Summed jiffies of the CPUs in ``cpus`` (all CPUs when none of them is listed), and the machine's CPUs."""
    text = _read(PROC_STAT)
    if not text:
        return None
    whole, mine, online = None, [], 0
    for line in text.splitlines():
        parts = line.split()
        if not parts or not parts[0].startswith("cpu"):
            continue
        if parts[0] == "cpu":
            whole = _jiffies(parts[1:])
        elif parts[0][3:].isdigit():
            online += 1
            if int(parts[0][3:]) in cpus:
                mine.append(_jiffies(parts[1:]))
    if mine:
        summed = _CpuJiffies(*(sum(getattr(j, f) for j in mine) for f in ("busy", "steal", "total")))
        return summed, online
    return (whole, online or os.cpu_count() or 1) if whole is not None else None


def _affinity() -> frozenset[int]:
    try:
        return frozenset(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return frozenset(range(os.cpu_count() or 1))


def _own_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _own_waits_ns() -> dict[str, int] | None:
    """Run-queue delay (ns) of each thread of this process, by thread id."""
    try:
        tids = os.listdir(PROC_TASKS)
    except OSError:
        return None
    out = {}
    for tid in tids:
        text = _read(f"{PROC_TASKS}/{tid}/schedstat")
        parts = text.split() if text else []
        if len(parts) >= 2 and parts[1].isdigit():
            out[tid] = int(parts[1])
    return out or None


def _pressure_some_us() -> int | None:
    for line in (_read(PROC_PRESSURE_CPU) or "").splitlines():
        if line.startswith("some "):
            for item in line.split()[1:]:
                key, _, value = item.partition("=")
                if key == "total" and value.isdigit():
                    return int(value)
    return None


def _loadavg() -> tuple[float, int] | None:
    """(1-minute load average, running tasks) from /proc/loadavg."""
    parts = (_read(PROC_LOADAVG) or "").split()
    if len(parts) < 4 or "/" not in parts[3]:
        return None
    try:
        return float(parts[0]), int(parts[3].split("/")[0])
    except ValueError:
        return None


def _spread(samples_s: Sequence[float]) -> float:
    arr = np.asarray(samples_s, dtype=np.float64)
    if arr.size < 4:
        return 0.0
    q25, q50, q75 = np.percentile(arr, [25, 50, 75])
    return float((q75 - q25) / q50) if q50 > 0 else 0.0


@dataclass(frozen=True)
class Contention:
    """What the machine was doing during one measurement's timed rounds (see the module docstring)."""

    wall_s: float
    rounds: int
    cpus: int  # CPUs this process may run on (its affinity): the CPUs the shares are of
    machine_cpus: int  # CPUs of the whole machine
    cpu_capacity_s: float | None  # CPU seconds our CPUs offered during the rounds
    own_cpu_s: float
    other_cpu_s: float | None
    steal_s: float | None
    own_wait_s: float | None
    pressure_s: float | None
    runnable_mean: float | None
    runnable_max: int | None
    load_1m_start: float | None
    load_1m_end: float | None
    spread: dict[str, float] = field(default_factory=dict)

    # -- derived shares ---------------------------------------------------------------------

    @property
    def other_cpu_share(self) -> float | None:
        """Share of our CPUs' capacity used by other processes (None for rounds too short to tell)."""
        return _share(self.other_cpu_s, self._tick_capacity)

    @property
    def own_wait_share(self) -> float | None:
        """Of the time our threads wanted a CPU (running or runnable), the share spent waiting for one."""
        return _share(self.own_wait_s, None if self.own_wait_s is None else self.own_cpu_s + self.own_wait_s)

    @property
    def steal_share(self) -> float | None:
        """Share of our CPUs' capacity the hypervisor gave to other guests (None for rounds too short)."""
        return _share(self.steal_s, self._tick_capacity)

    @property
    def _tick_capacity(self) -> float | None:
        if self.cpu_capacity_s is None or self.cpu_capacity_s < MIN_CAPACITY_S:
            return None
        return self.cpu_capacity_s

    @property
    def runnable_per_cpu(self) -> float | None:
        """Other runnable tasks per CPU of the machine, mean over the round boundaries."""
        return _share(self.runnable_mean, self.machine_cpus)

    @property
    def pressure_share(self) -> float | None:
        """Share of the wall time some task waited for a CPU (PSI)."""
        return _share(self.pressure_s, self.wall_s)

    def shares(self) -> dict[str, float | None]:
        """Every signal that :data:`THRESHOLDS` may judge, by threshold name."""
        return {
            "other_cpu_share": self.other_cpu_share,
            "own_wait_share": self.own_wait_share,
            "steal_share": self.steal_share,
            "runnable_per_cpu": self.runnable_per_cpu,
        }

    # -- verdict ----------------------------------------------------------------------------

    def reasons(self, thresholds: Mapping[str, float] | None = None) -> list[str]:
        """Why the machine counts as busy (empty: quiet). Each reason names the signal and its limit."""
        limits = THRESHOLDS if thresholds is None else thresholds
        unknown = sorted(set(limits) - set(THRESHOLDS))
        if unknown:
            raise EdgeMatrixError(f"unknown contention threshold(s) {unknown}; known: {sorted(THRESHOLDS)}")
        out = []
        values = self.shares()
        ticks_known = values["other_cpu_share"] is not None
        for name, limit in limits.items():
            value = values[name]
            if ticks_known and name in FALLBACK_SIGNALS:
                continue  # the CPU-tick shares were counted: they decide (see THRESHOLDS)
            if value is not None and value >= limit:
                out.append(f"{_LABELS[name]} {_show(name, value)} (limit {_show(name, limit)})")
        return out

    @property
    def busy(self) -> bool:
        return bool(self.reasons())

    def summary(self) -> str:
        """One line for logs and reports: the verdict and the main figures."""
        head = "busy: " + "; ".join(self.reasons()) if self.busy else "quiet"
        figures = [f"{_LABELS[k]} {_show(k, v)}" for k, v in self.shares().items() if v is not None]
        if self.spread:
            figures.append(f"round spread up to {max(self.spread.values()):.1%} of the median")
        return f"{head} ({', '.join(figures)}; {self.rounds} rounds in {self.wall_s:.1f} s)"

    # -- serialisation ----------------------------------------------------------------------

    def as_dict(self) -> dict[str, Any]:
        """Plain JSON values for ``machine_info["latency_contention"]``: raw figures, shares and verdict."""
        raw = {k: _rounded(v) for k, v in asdict(self).items() if k != "spread"}
        return {
            **raw,
            "spread": {k: round(v, 5) for k, v in self.spread.items()},
            **{k: _rounded(v) for k, v in self.shares().items()},
            "pressure_share": _rounded(self.pressure_share),
            "busy": self.busy,
            "reasons": self.reasons(),
        }

    def extra_info(self, runner: str) -> dict[str, float | int | str]:
        """Flat plain values for one benchmark's ``extra_info`` (pytest-benchmark allows no nesting here)."""
        return {
            "machine_state": "busy" if self.busy else "quiet",
            "round_spread": round(self.spread.get(runner, 0.0), 5),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Contention:
        """Read :meth:`as_dict`'s output back (derived keys are recomputed, not trusted)."""
        if not isinstance(data, Mapping):
            raise EdgeMatrixError(f"a contention record must be a JSON object; got {type(data).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in data:
                raise EdgeMatrixError(f"contention record lacks {f.name!r}; it has {sorted(data)}")
            kwargs[f.name] = data[f.name]
        spread = kwargs["spread"]
        if not isinstance(spread, Mapping) or not all(isinstance(v, int | float) for v in spread.values()):
            raise EdgeMatrixError(f"contention record's spread must map runner names to numbers; got {spread!r}")
        for name in ("wall_s", "own_cpu_s"):
            if not isinstance(kwargs[name], int | float) or not math.isfinite(kwargs[name]):
                raise EdgeMatrixError(f"contention record's {name} must be a number; got {kwargs[name]!r}")
        kwargs["spread"] = {str(k): float(v) for k, v in spread.items()}
        return cls(**kwargs)


_LABELS = {
    "other_cpu_share": "other processes' CPU",
    "own_wait_share": "our threads waiting for a CPU",
    "steal_share": "CPU steal",
    "runnable_per_cpu": "other runnable tasks per CPU",
}


def _show(name: str, value: float) -> str:
    return f"{value:.2f}" if name == "runnable_per_cpu" else f"{value:.0%}"


def _share(part: float | None, whole: float | None) -> float | None:
    if part is None or whole is None or whole <= 0:
        return None
    return part / whole


def _rounded(value: Any) -> Any:
    return round(value, 5) if isinstance(value, float) else value


class ContentionProbe:
    """Reads the machine's counters at :meth:`start`, once per round (:meth:`sample`), at :meth:`stop`.

    Cheap enough to run between timed rounds: :meth:`sample` reads ``/proc/loadavg`` only (tens of
    microseconds, outside every timer); start and stop read ``/proc/stat``, PSI and each thread's
    schedstat once.
    """

    def __init__(self) -> None:
        self._started = False
        self._runnable: list[int] = []

    def start(self) -> None:
        self._cpus = _affinity()
        self._jiffies = _cpu_jiffies(self._cpus)
        self._waits = _own_waits_ns()
        self._pressure = _pressure_some_us()
        self._load = _loadavg()
        self._own = _own_cpu_s()
        self._runnable = []
        self._started = True
        self._t0 = time.perf_counter()

    def sample(self) -> None:
        """Between rounds: how many other tasks are runnable right now (the sampling thread excluded)."""
        load = _loadavg()
        if load is not None:
            self._runnable.append(max(0, load[1] - 1))

    def stop(self, samples: Mapping[str, Sequence[float]] | None = None) -> Contention:
        """The record of the rounds since :meth:`start`; ``samples`` (runner → round times) give the spread."""
        if not self._started:
            raise RuntimeError("ContentionProbe.stop() called before start()")
        wall = time.perf_counter() - self._t0
        own = _own_cpu_s() - self._own
        counted, waits, pressure, load = _cpu_jiffies(self._cpus), _own_waits_ns(), _pressure_some_us(), _loadavg()
        hz = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
        capacity = other = steal = None
        machine_cpus = os.cpu_count() or len(self._cpus)
        if self._jiffies is not None and counted is not None:
            (before, _), (after, machine_cpus) = self._jiffies, counted
            capacity = (after.total - before.total) / hz
            other = max(0.0, (after.busy - before.busy) / hz - own)
            steal = (after.steal - before.steal) / hz
        own_wait = None
        if self._waits is not None and waits is not None:
            # threads that started during the rounds count from 0; threads that ended are lost (rare)
            own_wait = sum(w - self._waits.get(tid, 0) for tid, w in waits.items()) * 1e-9
        pressure_s = None if self._pressure is None or pressure is None else (pressure - self._pressure) * 1e-6
        runnable = self._runnable
        self._started = False
        return Contention(
            wall_s=wall,
            rounds=len(next(iter(samples.values()))) if samples else len(runnable),
            cpus=len(self._cpus),
            machine_cpus=machine_cpus,
            cpu_capacity_s=capacity,
            own_cpu_s=own,
            other_cpu_s=other,
            steal_s=steal,
            own_wait_s=max(0.0, own_wait) if own_wait is not None else None,
            pressure_s=pressure_s,
            runnable_mean=float(np.mean(runnable)) if runnable else None,
            runnable_max=int(max(runnable)) if runnable else None,
            load_1m_start=self._load[0] if self._load else None,
            load_1m_end=load[0] if load else None,
            spread={name: _spread(s) for name, s in (samples or {}).items()},
        )
