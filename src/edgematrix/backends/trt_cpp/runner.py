"""The ``trt_cpp`` backend: a TensorRT engine run by the C++ trt_runner of the DriveOS image.

:class:`TrtCppRunner` starts ``trt_runner --engine ENGINE --serve`` once at activation: the engine
is deserialized once, and every :meth:`~edgematrix.backends.base.Runner.infer` sends one INPUTS
frame over the process's standard input and reads the OUTPUTS frame back
(:mod:`edgematrix.backends.trt_cpp.io`). :meth:`TrtCppRunner.measure` times the *same* engine file
with trt_runner's harness. Given an ONNX file, the runner first builds the engine with trtexec
(DriveOS ships it) exactly as the ``tensorrt`` backend does, realized-precision check included.

``selftest=True`` serves trt_runner's CPU self-check instead (no TensorRT, no GPU): a 3x3
convolution + bias + ReLU whose input comes from each request and whose weights come from the
runner's LCG (:func:`selftest_weights`), so the plumbing (feeds in -> process -> outputs out) is
checked against ONNX Runtime on any host, an aarch64 binary under qemu-user included. That proves
the protocol, the process handling and the C++ serve loop, not TensorRT's numerics.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.trt_cpp import io as trtio
from edgematrix.backends.trt_cpp.build import BuiltRunner, build_runner, elf_machine, host_machine
from edgematrix.backends.trt_cpp.run import error_for, launch_prefix
from edgematrix.errors import BackendError, ModelError, RunnerUnavailableError

if TYPE_CHECKING:
    from edgematrix.measure.harness import LatencyConfig
    from edgematrix.measure.meter import LatencyReport

#: a trt_runner built by the DriveOS image (docker/driveos/Dockerfile) is installed here
IMAGE_BINARY = Path("/opt/edgematrix/bin/trt_runner")
BINARY_ENV = "EDGEMATRIX_TRT_RUNNER"
ENGINE_SUFFIXES = (".engine", ".plan", ".trt")
_LCG_MUL, _LCG_ADD = 1664525, 1013904223


def lcg_floats(n: int, state: list[int]) -> np.ndarray:
    """trt_runner's LCG: ``state = state * 1664525 + 1013904223 (mod 2^32)``; value ``(state >> 8) / 2^23 - 1``."""
    out = np.empty(n, dtype=np.float32)
    s = state[0]
    for i in range(n):
        s = (s * _LCG_MUL + _LCG_ADD) & 0xFFFFFFFF
        out[i] = np.float32((s >> 8) / 2**23 - 1.0)
    state[0] = s
    return out


def selftest_weights(
    seed: int, channels: int, height: int, width: int, out_channels: int
) -> tuple[np.ndarray, np.ndarray]:
    """Weights [K, C, 3, 3] and bias [K] of the self-check convolution for ``seed`` (drawn after the
    C*H*W input values, as the runner draws them)."""
    state = [seed]
    lcg_floats(channels * height * width, state)
    weights = lcg_floats(out_channels * channels * 9, state).reshape(out_channels, channels, 3, 3)
    bias = lcg_floats(out_channels, state)
    return weights, bias


def find_binary(runner: BuiltRunner | str | os.PathLike[str] | None = None) -> Path:
    """The trt_runner to use: ``runner``, else ``$EDGEMATRIX_TRT_RUNNER``, else the DriveOS image's
    ``/opt/edgematrix/bin/trt_runner``, else a native build of the sources of this checkout (which
    has TensorRT only where CMake finds it)."""
    if isinstance(runner, BuiltRunner):
        return runner.path
    if runner is not None:
        path = Path(runner)
    elif os.environ.get(BINARY_ENV):
        path = Path(os.environ[BINARY_ENV])
    elif IMAGE_BINARY.is_file():
        path = IMAGE_BINARY
    else:
        return build_runner("native").path
    if not path.is_file():
        raise RunnerUnavailableError(
            f"trt_runner binary {path} does not exist; build it (edgematrix.backends.trt_cpp.build_runner, or the "
            f"DriveOS image: docker/driveos/Dockerfile) and pass runner= or set {BINARY_ENV}"
        )
    return path


@backends.register("trt_cpp")
class TrtCppRunner(Runner):
    """A TensorRT engine served by trt_runner (``--serve``), or its CPU self-check (``selftest=True``).

    ``path``: a serialized engine (``.engine`` / ``.plan`` / ``.trt``), or an ONNX model that is
    built into one with trtexec at activation (``precision`` and ``build_options`` as the
    ``tensorrt`` backend takes them). ``runner``: the binary (see :func:`find_binary`); an aarch64
    binary on another host runs under qemu-user. ``shapes``: input shapes of a dynamic engine
    (``--shape``); ``device``: CUDA device.
    """

    backend_name = "trt_cpp"

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        name: str | None = None,
        runner: BuiltRunner | str | os.PathLike[str] | None = None,
        precision: str = "fp16",
        selftest: bool = False,
        selftest_size: Sequence[int] = (8, 32, 32),
        selftest_out_channels: int = 16,
        seed: int = 2026,
        shapes: Mapping[str, Sequence[int]] | None = None,
        device: int | None = None,
        workdir: str | os.PathLike[str] | None = None,
        timeout_s: float = 600.0,
        **build_options: Any,
    ) -> None:
        super().__init__(name)
        if selftest == (path is not None):
            raise BackendError("give exactly one of path= (an engine or ONNX model) or selftest=True")
        if selftest and build_options:
            raise BackendError(f"build options {sorted(build_options)} apply to an ONNX path, not to selftest=True")
        size = tuple(int(d) for d in selftest_size)
        if len(size) != 3 or min(size) < 1 or selftest_out_channels < 1:
            raise BackendError(f"selftest_size must be (C, H, W) of positive sizes, got {list(selftest_size)}")
        self.path = Path(path) if path is not None else None
        self.runner_arg = runner
        self.precision = precision
        self.selftest = selftest
        self.selftest_size = size
        self.selftest_out_channels = int(selftest_out_channels)
        self.seed = int(seed)
        self.shapes = {str(k): tuple(int(d) for d in v) for k, v in (shapes or {}).items()}
        self.device = device
        self.workdir = Path(workdir) if workdir is not None else None
        self.timeout_s = timeout_s
        self.build_options = dict(build_options)
        self.binary: Path | None = None
        self.engine: Path | None = None
        self.spec: list[trtio.TensorSpec] = []
        self._builder: Runner | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._stderr: IO[bytes] | None = None

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The engine's precision: FP32 for the reference, the deployed precision for every other role
        (FP16 from the FP32 ONNX, INT8 from the QDQ ONNX; see the ``tensorrt`` backend)."""
        from edgematrix.backends.tensorrt.runner import TensorrtRunner

        return TensorrtRunner.options_for(target, role=role, precision=precision, model=model)

    # -- lifecycle ---------------------------------------------------------------------------

    def _mode_args(self) -> list[str]:
        if self.selftest:
            c, h, w = self.selftest_size
            return [
                "--cpu-selftest",
                "--selftest-size",
                f"{c}x{h}x{w}",
                "--selftest-out-channels",
                str(self.selftest_out_channels),
                "--seed",
                str(self.seed),
            ]
        assert self.engine is not None
        args = ["--engine", str(self.engine)]
        for input_name, dims in self.shapes.items():
            args += ["--shape", f"{input_name}={'x'.join(str(d) for d in dims)}"]
        if self.device is not None:
            args += ["--device", str(int(self.device))]
        return args

    def _prepare_engine(self) -> None:
        assert self.path is not None
        if not self.path.is_file():
            raise ModelError(f"model file {str(self.path)!r} does not exist; export or build it first")
        if self.path.suffix.lower() == ".onnx":
            from edgematrix.backends.base import create_runner

            builder = create_runner(
                "tensorrt",
                path=self.path,
                name=f"{self.name}/build",
                precision=self.precision,
                workdir=self.workdir,
                inference="none",
                shapes=self.shapes,
                **self.build_options,
            )
            builder.activate()
            self._builder = builder
            self.engine = builder.engine_path  # type: ignore[attr-defined]
        elif self.path.suffix.lower() in ENGINE_SUFFIXES:
            self.engine = self.path
        else:
            raise ModelError(
                f"{self.path} is neither an ONNX model nor a serialized engine ({', '.join(ENGINE_SUFFIXES)})"
            )

    def activate_impl(self) -> None:
        self.binary = find_binary(self.runner_arg)
        if not self.selftest:
            self._prepare_engine()
        prefix, env = launch_prefix(self.binary)
        self._stderr = tempfile.TemporaryFile(prefix="trt_runner-serve-")  # noqa: SIM115 - closed in release_impl
        cmd = [*prefix, str(self.binary), *self._mode_args(), "--serve"]
        self._proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._stderr, env=env)
        frame = self._read()
        if frame is None or frame[0] != trtio.FrameKind.SPEC:
            raise self._died("did not send its I/O spec")
        self.spec = trtio.spec_from_payload(frame[1])

    def _read(self) -> tuple[trtio.FrameKind, bytes] | None:
        assert self._proc is not None and self._proc.stdout is not None
        return trtio.read_frame(self._proc.stdout)

    def _stderr_text(self) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode(errors="replace").strip()

    def _died(self, what: str) -> Exception:
        """The error for a runner process that stopped answering: its exit code mapped, its message."""
        assert self._proc is not None and self.binary is not None
        try:
            code = self._proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            code = self._proc.wait()
        message = self._stderr_text().removeprefix("trt_runner: error: ") or "(no message)"
        if code == 0:
            return BackendError(f"runner {self.name!r}: trt_runner {what} and exited 0: {message}")
        return error_for(code, f"{what}: {message}", self.binary)

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        return {s.name: TensorMeta(s.dtype, s.shape) for s in self.spec if s.is_input}

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        assert self._proc is not None and self._proc.stdin is not None
        try:
            trtio.write_frame(self._proc.stdin, trtio.FrameKind.INPUTS, trtio.encode_tensors(feed))
        except (BrokenPipeError, OSError):
            raise self._died("stopped before a request") from None
        frame = self._read()
        if frame is None:
            raise self._died("ended without answering")
        kind, payload = frame
        if kind == trtio.FrameKind.ERROR:
            message = payload.decode(errors="replace")
            if self._proc.poll() is not None or not self._alive_after_error():
                raise self._died(f"failed on a request ({message})")
            raise BackendError(f"runner {self.name!r}: trt_runner refused the request: {message}")
        if kind != trtio.FrameKind.OUTPUTS:
            raise BackendError(f"runner {self.name!r}: trt_runner answered with a {kind.name} frame")
        return trtio.outputs_from_payload(payload, self.spec)

    def _alive_after_error(self) -> bool:
        assert self._proc is not None
        try:
            self._proc.wait(timeout=0.2)  # a runtime failure ends the process right after its ERROR frame
        except subprocess.TimeoutExpired:
            return True
        return False

    def deactivate_impl(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        assert proc.stdin is not None
        with contextlib.suppress(BrokenPipeError, OSError):
            trtio.write_frame(proc.stdin, trtio.FrameKind.END)
            proc.stdin.close()
        try:
            code = proc.wait(timeout=self.timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise BackendError(f"runner {self.name!r}: trt_runner did not stop within {self.timeout_s:g} s") from None
        if code != 0:
            assert self.binary is not None
            raise error_for(code, f"at shutdown: {self._stderr_text()}", self.binary)

    def release_impl(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(OSError):
                        stream.close()
        if self._stderr is not None:
            self._stderr.close()
            self._stderr = None
        builder, self._builder = self._builder, None
        if builder is not None:
            builder.deactivate()
        self.spec = []

    # -- timing ------------------------------------------------------------------------------

    def measure(
        self, config: LatencyConfig | None = None, *, iterations: int | None = None, duration_s: float | None = None
    ) -> LatencyReport:
        """Time the engine this runner serves (the same file) with trt_runner's harness: with ``config``, or
        as the latency server's worker calls a self-timing runner, ``iterations`` (at least that many
        inferences) and ``duration_s`` (at least that long)."""
        self._require_active("measure")
        if iterations is not None or duration_s is not None:
            from edgematrix.measure.harness import LatencyConfig

            if config is not None:
                raise BackendError("trt_cpp measure(): give a LatencyConfig or iterations/duration_s, not both")
            rounds = max(1, int(iterations if iterations is not None else LatencyConfig.min_rounds))
            seconds = float(duration_s if duration_s is not None else 0.0)
            config = LatencyConfig(
                min_rounds=rounds,
                max_rounds=max(rounds, LatencyConfig.max_rounds),
                min_time_s=seconds,
                max_time_s=max(seconds, LatencyConfig.max_time_s),
            )
        from edgematrix.backends.trt_cpp.run import run_runner

        assert self.binary is not None
        mode = self._mode_args()
        if self.selftest:
            return run_runner(self.binary, selftest=True, config=config, args=mode[1:]).report
        return run_runner(self.binary, engine=self.engine, config=config, args=mode[2:]).report

    def facts_impl(self) -> Mapping[str, Fact]:
        facts: dict[str, Fact] = {"precision": "fp32" if self.selftest else self.precision}
        if self.binary is not None:
            machine = elf_machine(self.binary)
            facts["runner_binary"] = str(self.binary)
            facts["runner_machine"] = machine
            facts["emulated"] = int(machine != host_machine())
        if self.selftest:
            facts["mode"] = "cpu_selftest"
            facts["measurement"] = "trt_runner's CPU self-check (a 3x3 convolution); not a TensorRT engine"
        else:
            facts["mode"] = "tensorrt"
            facts["model"] = str(self.path)
            if self.engine is not None and self.engine.is_file():
                facts["engine"] = str(self.engine)
                facts["engine_bytes"] = self.engine.stat().st_size
        return facts
