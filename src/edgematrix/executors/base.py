"""Where a cell's evaluate and measure stages run: the executor interface.

The pipeline hands an executor an :class:`EvaluationPlan` — every (backend, role) model with its
runner options, the test feeds, the latency feed and settings — and gets back an :class:`Evaluation`:
each model's outputs for the feeds (the pipeline scores them with the task metric, the same way for
every executor) and its per-round latency samples from one interleaved measurement, plus the facts
of where it ran (device, environment key, power mode) that key baselines.

Executors: ``local`` (this host, in process), ``remote`` (a board's ``edgematrix serve`` runs the
bundle through the backend of record), ``emulated`` (an arm64 container under qemu, or TI's fixed
point emulated on this host). ``--runner docker`` is not an executor: it runs the whole pipeline in
the target's container, where the local executor runs (``executors/docker.py``).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

Feed = dict[str, np.ndarray]
Outputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ModelRun:
    """One (backend, role): the artifact (``path``, ``precision``, ``kind``, ``module``) and runner options."""

    backend: str
    role: str
    artifact: Any  # edgematrix.pipeline.context.Artifact
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str]:
        return (self.backend, self.role)


@dataclass
class EvaluationPlan:
    cell: str
    runs: list[ModelRun]  # in the order the latency stage interleaves them
    feeds: list[Feed]  # one per test sample
    latency_feed: Feed
    latency: Any  # edgematrix.measure.harness.LatencyConfig
    say: Callable[[str], None] = print


@dataclass
class RunResult:
    outputs: list[Outputs]  # per sample, sample i at index i (all samples of the plan)
    samples: Any  # edgematrix.measure.harness.LatencySamples (with its contention record when known)
    facts: dict[str, Any]
    latency_kind: str = "local"  # local | device | emulated-qemu-aarch64 | emulated-host
    accuracy_source: str = "local"  # where ``outputs`` came from (local | device | host, device ran N of M)
    device_outputs: list[Outputs] | None = None  # what the (emulated / remote) device computed, maybe a prefix
    host_outputs: list[Outputs] | None = None  # the same model on this host, to check the device's outputs


@dataclass
class Evaluation:
    results: dict[tuple[str, str], RunResult]
    device: str  # the device of record: CPU model, GPU name or board
    environment: dict[str, str]  # the environment key of where the models ran (core.toolchain)
    power_mode: str = ""
    machine: dict[str, Any] = field(default_factory=dict)  # facts for benchmark.json's machine_info
    latency_gated: bool = True  # False under emulation: latency is the emulator's, never gated
    where: str = "this host"


class Executor(ABC):
    """Runs an :class:`EvaluationPlan`; see the module docstring."""

    name: ClassVar[str]

    @abstractmethod
    def backends(self, target: Any) -> list[str]:
        """The backends this executor runs the cell's models on (the primary one first)."""

    @abstractmethod
    def evaluate(self, plan: EvaluationPlan) -> Evaluation:
        """Outputs of every run for every feed, then one interleaved latency measurement."""
