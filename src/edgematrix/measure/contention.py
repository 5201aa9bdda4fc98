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
  does not compete with us.
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

Thresholds, measured on the 2-core x86 KVM machine of DESIGN.md (ONNX Runtime + OpenVINO, FP32
and INT8 models of 1-6 ms interleaved; ``benchmarks/gate_power.py probe`` repeats the
experiment): see :data:`THRESHOLDS` and ``docs``-style notes beside each value.
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

#: The machine was busy when any of these is reached (fractions of the rounds' wall time or of the
#: machine's CPU capacity). Measured here, quiet vs two ``while True: pass`` processes beside a
#: cell-like measurement (figures in the module docstring of ``benchmarks/gate_power.py`` and the
#: report of issue 14):
THRESHOLDS: dict[str, float] = {
    # other processes used this share of the machine's CPU capacity during the rounds
    "other_cpu_share": 0.25,
    # our threads waited for a CPU this share of the rounds' wall time
    "own_wait_share": 0.10,
    # the hypervisor stole this share of the machine's CPU capacity
    "steal_share": 0.05,
    # on average this many other tasks per CPU of the machine were runnable at a round boundary
    "runnable_per_cpu": 0.5,
}


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
        """Share of the machine's CPU capacity used by other processes."""
        return _share(self.other_cpu_s, self.cpu_capacity_s)

    @property
    def own_wait_share(self) -> float | None:
        """Of the time our threads wanted a CPU (running or runnable), the share spent waiting for one."""
        return _share(self.own_wait_s, None if self.own_wait_s is None else self.own_cpu_s + self.own_wait_s)

    @property
    def steal_share(self) -> float | None:
        """Share of the machine's CPU capacity the hypervisor gave to other guests."""
        return _share(self.steal_s, self.cpu_capacity_s)

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
        for name, limit in limits.items():
            value = values[name]
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
