"""Run trtexec: build FP16/INT8 engines (GPU or DLA), time them, check their realized precision.

- :func:`find_trtexec` locates the executable (``$EDGEMATRIX_TRTEXEC``, ``PATH``, JetPack's
  ``/usr/src/tensorrt/bin/trtexec``) or raises :class:`~edgematrix.errors.ToolNotFoundError` saying
  how to get one.
- :func:`run_trtexec` runs one command line from :class:`TrtexecBuildOptions` and parses every file
  it exported (:class:`TrtexecResult`).
- :class:`TrtexecMeter` is a :class:`~edgematrix.measure.meter.LatencyMeter`: per-inference
  latencies from ``--exportTimes`` become the harness's percentiles.
- :class:`TensorrtRunner` (registry name ``tensorrt``) is the Runner of a TensorRT engine built by
  trtexec. It builds on ``activate`` and checks the realized precision; ``infer`` runs numpy feeds
  on that engine file, in-process through Polygraphy's TensorRT runner (default,
  :mod:`.inprocess`) or through trtexec ``--loadInputs`` / ``--exportOutput`` (``inference="trtexec"``,
  :mod:`.outputs`); :meth:`TensorrtRunner.measure` times the same file with trtexec. The ORT
  TensorRT execution provider stays available through the ``onnxruntime`` backend
  (``providers=tensorrt_providers(...)``).

What was run where: the command construction and the whole flow are tested here with a fake
``trtexec`` that replays recorded output of real trtexec runs, Polygraphy's real TrtRunner against a
stand-in ``tensorrt`` module and a host-memory stand-in of the CUDA runtime, and the
``--exportOutput`` reader on a recorded real file; no TensorRT was run on this host
(docs/tensorrt.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.backends.base import Fact, Runner, TensorMeta, backends
from edgematrix.backends.tensorrt.inprocess import PolygraphyEngine
from edgematrix.backends.tensorrt.loader import (
    BuildPrecision,
    TrtexecBuildOptions,
    Version,
    build_command,
    parse_trtexec_version,
    with_outputs,
)
from edgematrix.backends.tensorrt.outputs import parse_export_output, write_input_file
from edgematrix.backends.tensorrt.parsers import (
    EngineInfo,
    LayerProfile,
    PerformanceSummary,
    PrecisionReport,
    TimesMetric,
    TimingTrace,
    check_precision,
    latency_report_from_times,
    parse_layer_info,
    parse_performance_summary,
    parse_profile,
    parse_times,
)
from edgematrix.errors import BackendError, ModelError, ToolNotFoundError
from edgematrix.measure.meter import LatencyReport

INFERENCE_MODES = ("polygraphy", "trtexec", "none")


def _onnx_io(path: Path) -> tuple[dict[str, TensorMeta], dict[str, np.dtype]]:
    """Input metadata and output dtypes of an ONNX model (what the engine built from it takes and gives)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    meta: dict[str, TensorMeta] = {}
    for value in model.graph.input:
        if value.name in inits:
            continue
        tensor = value.type.tensor_type
        dims = tuple(d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor.shape.dim)
        meta[value.name] = TensorMeta(np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type)), dims)
    outputs = {
        o.name: np.dtype(onnx.helper.tensor_dtype_to_np_dtype(o.type.tensor_type.elem_type)) for o in model.graph.output
    }
    return meta, outputs


#: where JetPack and NVIDIA's TensorRT containers put trtexec (not on PATH there)
TRTEXEC_LOCATIONS = ("/usr/src/tensorrt/bin/trtexec", "/opt/tensorrt/bin/trtexec")
TRTEXEC_ENV = "EDGEMATRIX_TRTEXEC"


def find_trtexec(executable: str | os.PathLike[str] | None = None) -> Path:
    """The trtexec to run: ``executable``, else ``$EDGEMATRIX_TRTEXEC``, ``PATH``, JetPack's location."""
    candidates: list[str] = []
    if executable is not None:
        candidates.append(str(executable))
    elif os.environ.get(TRTEXEC_ENV):
        candidates.append(os.environ[TRTEXEC_ENV])
    else:
        candidates.append("trtexec")
        candidates.extend(TRTEXEC_LOCATIONS)
    for candidate in candidates:
        found = shutil.which(candidate)
        if found:
            return Path(found)
    looked = ", ".join(candidates if executable or os.environ.get(TRTEXEC_ENV) else ["PATH", *TRTEXEC_LOCATIONS])
    raise ToolNotFoundError(
        f"trtexec not found (looked in: {looked}). It ships with TensorRT: install TensorRT "
        "(on JetPack it is /usr/src/tensorrt/bin/trtexec, set EDGEMATRIX_TRTEXEC to its path), run the cell in "
        "the Jetson / TensorRT image (--runner docker), or measure on the device with --runner remote --remote URL"
    )


def trtexec_version(executable: str | os.PathLike[str]) -> Version | None:
    """The TensorRT version from ``trtexec --help``'s first line, or None when not printed."""
    try:
        done = subprocess.run([str(executable), "--help"], capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return parse_trtexec_version(done.stdout + done.stderr)


@dataclass(frozen=True)
class TrtexecResult:
    """One trtexec run and everything it exported (parsed)."""

    command: tuple[str, ...]
    version: Version | None
    stdout: str
    options: TrtexecBuildOptions
    engine: Path | None
    times: TimingTrace | None
    profile: LayerProfile | None
    layers: EngineInfo | None
    summary: PerformanceSummary | None

    def latency_report(
        self, *, metric: TimesMetric = "latency", facts: Mapping[str, Fact] | None = None
    ) -> LatencyReport:
        if self.times is None:
            raise BackendError("this trtexec run exported no --exportTimes trace (build_only, or times not asked)")
        all_facts: dict[str, Fact] = {"precision": self.options.precision}
        if self.version:
            all_facts["tensorrt_version"] = ".".join(map(str, self.version))
        if self.options.dla_core is not None:
            all_facts["dla_core"] = self.options.dla_core
        if self.summary is not None:
            all_facts["throughput_qps"] = self.summary.throughput_qps
            if "GPU Compute Time" in self.summary.metrics:
                all_facts["gpu_compute_mean_ms"] = self.summary.metrics["GPU Compute Time"].mean_ms
        all_facts.update(facts or {})
        return latency_report_from_times(self.times, metric=metric, facts=all_facts)


def run_trtexec(
    options: TrtexecBuildOptions,
    *,
    executable: str | os.PathLike[str] | None = None,
    timeout_s: float = 3600.0,
    env: Mapping[str, str] | None = None,
) -> TrtexecResult:
    """Run trtexec with ``options`` and parse what it exported. Raises with its last output lines on failure."""
    exe = find_trtexec(executable)
    version = trtexec_version(exe)
    if options.onnx is not None and not Path(options.onnx).is_file():
        raise ModelError(f"ONNX model {str(options.onnx)!r} does not exist; export the model first")
    if options.engine is not None and not Path(options.engine).is_file():
        raise ModelError(f"TensorRT engine {str(options.engine)!r} does not exist; build it first")
    argv = build_command(options, executable=exe, version=version)
    try:
        done = subprocess.run(
            argv,
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
            env=None if env is None else {**os.environ, **env},
        )
    except subprocess.TimeoutExpired as exc:
        raise BackendError(f"trtexec did not finish in {timeout_s:g} s: {' '.join(argv)}") from exc
    output = done.stdout + (("\n" + done.stderr) if done.stderr else "")
    if done.returncode != 0:
        tail = "\n".join(output.strip().splitlines()[-15:])
        raise BackendError(f"trtexec failed (exit {done.returncode}): {' '.join(argv)}\n{tail}")
    o = options
    layers = parse_layer_info(o.layer_info) if o.layer_info is not None else None
    times = parse_times(o.times) if o.times is not None and not o.build_only else None
    profile = parse_profile(o.profile) if o.profile is not None and not o.build_only else None
    summary = None if o.build_only else parse_performance_summary(done.stdout)
    engine = o.save_engine if o.save_engine is not None else o.engine
    if engine is not None and not Path(engine).is_file():
        raise BackendError(f"trtexec exited 0 but wrote no engine at {engine}; command: {' '.join(argv)}")
    return TrtexecResult(tuple(argv), version, output, o, engine, times, profile, layers, summary)


_OPTION_NAMES = {f.name for f in fields(TrtexecBuildOptions)} - {"onnx", "engine"}
_PATH_OPTIONS = {"calibration_cache", "timing_cache", "save_engine", "layer_info", "profile", "times", "export_output"}


def options_from_mapping(model: Path, options: Mapping[str, Any]) -> TrtexecBuildOptions:
    """:class:`TrtexecBuildOptions` for ``model`` (``.onnx`` or an engine) from plain JSON-able options."""
    unknown = sorted(set(options) - _OPTION_NAMES)
    if unknown:
        raise BackendError(f"unknown trtexec option(s) {unknown}; known: {', '.join(sorted(_OPTION_NAMES))}")
    kwargs: dict[str, Any] = {}
    for key, value in options.items():
        if key in _PATH_OPTIONS and value is not None:
            value = Path(value)
        elif key == "extra_args":
            value = tuple(str(v) for v in value)
        elif key == "shapes":
            value = {str(k): tuple(int(d) for d in v) for k, v in dict(value).items()}
        elif key == "load_inputs":
            value = {str(k): Path(v) for k, v in dict(value).items()}
        kwargs[key] = value
    source: dict[str, Any] = {"onnx": model} if model.suffix.lower() == ".onnx" else {"engine": model}
    return TrtexecBuildOptions(**source, **kwargs)


@dataclass
class TrtexecMeter:
    """LatencyMeter over trtexec: builds (``.onnx``) or loads (engine) the model and times it.

    ``options`` (constructor defaults merged with ``measure(..., options=...)``) are
    :class:`TrtexecBuildOptions` field names. ``check_precision`` runs the realized-precision check
    on the layer info of a freshly built engine. ``metric`` picks the per-inference number:
    ``latency`` (host latency incl. transfers) or ``compute`` (GPU time).
    """

    options: dict[str, Any] | None = None
    executable: str | None = None
    metric: TimesMetric = "latency"
    check_precision: bool = True
    min_fraction: float = 0.8
    allow_layers: tuple[str, ...] = ()
    workdir: Path | None = None
    timeout_s: float = 3600.0

    def measure(self, model: Path, *, options: dict[str, Any] | None = None) -> LatencyReport:
        model = Path(model)
        if not model.is_file():
            raise ModelError(f"model file {model} does not exist; export or build it first")
        merged = {**(self.options or {}), **(options or {})}
        build = options_from_mapping(model, merged)
        with tempfile.TemporaryDirectory(prefix="edgematrix-trtexec-", dir=self.workdir) as tmp:
            result = run_trtexec(
                with_outputs(build, Path(tmp), model.stem), executable=self.executable, timeout_s=self.timeout_s
            )
            facts: dict[str, Fact] = {"model": str(model), "model_bytes": model.stat().st_size}
            if self.check_precision and result.layers is not None and build.onnx is not None:
                report = check_precision(
                    result.layers, build.precision, min_fraction=self.min_fraction, allow_layers=self.allow_layers
                )
                facts.update(report.facts())
            return result.latency_report(metric=self.metric, facts=facts)


@backends.register("tensorrt")
class TensorrtRunner(Runner):
    """A TensorRT engine built (from ONNX) or loaded (``.engine`` / ``.plan``) with trtexec.

    ``activate`` builds the engine into ``workdir`` (a temporary folder by default) with
    ``--exportLayerInfo`` and checks the realized precision (:func:`check_precision`, failing with
    :class:`~edgematrix.errors.PrecisionMismatchError`), then loads that engine file for ``infer``:

    - ``inference="polygraphy"`` (default): in-process, Polygraphy's ``EngineFromBytes`` +
      ``TrtRunner`` (needs ``polygraphy`` and the ``tensorrt`` Python module).
    - ``inference="trtexec"``: one ``trtexec --loadEngine --loadInputs --exportOutput`` per feed
      (no Python TensorRT needed; slow: the engine is deserialized for every feed; float outputs
      carry trtexec's six printed digits).
    - ``inference="none"``: build (and time) only; ``infer`` is refused.

    :meth:`measure` times the same engine file with trtexec.
    """

    backend_name = "tensorrt"

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        name: str | None = None,
        precision: BuildPrecision = "fp16",
        executable: str | os.PathLike[str] | None = None,
        workdir: str | os.PathLike[str] | None = None,
        check_precision: bool = True,
        min_fraction: float = 0.8,
        allow_layers: Iterable[str] = (),
        timeout_s: float = 3600.0,
        inference: str = "polygraphy",
        **build_options: Any,
    ) -> None:
        super().__init__(name)
        if inference not in INFERENCE_MODES:
            raise BackendError(f"inference={inference!r} is not one of {', '.join(INFERENCE_MODES)}")
        self.inference = inference
        self.path = Path(path)
        self.precision = precision
        self.executable = executable
        self.check = check_precision
        self.min_fraction = min_fraction
        self.allow_layers = tuple(allow_layers)
        self.timeout_s = timeout_s
        self._workdir_arg = Path(workdir) if workdir is not None else None
        # validated now (bad options fail at construction, not after a long build)
        self.options = options_from_mapping(self.path, {"precision": precision, **build_options})
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self.build: TrtexecResult | None = None
        self.precision_report: PrecisionReport | None = None
        self._engine: PolygraphyEngine | None = None
        self._engine_sha256: str | None = None

    @classmethod
    def options_for(cls, target: Mapping[str, Any], *, role: str, precision: str, model: Any = None) -> dict[str, Any]:
        """The engine's build precision: FP32 for the reference; the deployed precision for every other
        role. The caller passes the matching file: an FP16 engine is built from the FP32 ONNX
        (``--fp16``), an INT8 engine from the QDQ ONNX (explicit quantization)."""
        build = "fp32" if role == "reference" else precision
        if build not in ("fp32", "fp16", "int8"):
            raise BackendError(
                f"TensorRT builds fp32, fp16 or int8 engines; role {role!r} asks for {precision!r} "
                "(fx8 is TI's fixed point: use the tidl backend)"
            )
        return {"precision": build}

    @property
    def engine_path(self) -> Path:
        if self.build is None or self.build.engine is None:
            raise BackendError(f"runner {self.name!r} has no engine yet; activate it first (`with runner:`)")
        return self.build.engine

    def activate_impl(self) -> None:
        if not self.path.is_file():
            raise ModelError(f"model file {str(self.path)!r} does not exist; export or build it first")
        if self._workdir_arg is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="edgematrix-tensorrt-")
            workdir = Path(self._tmp.name)
        else:
            workdir = self._workdir_arg
            workdir.mkdir(parents=True, exist_ok=True)
        if self.options.onnx is None:  # a prebuilt engine: nothing to build, only check it loads
            build = replace(self.options, layer_info=workdir / f"{self.path.stem}.layers.json", iterations=1)
            build = replace(build, times=None, profile=None, warmup_ms=0, duration_s=0)
        else:
            build = replace(
                self.options,
                build_only=True,
                times=None,
                profile=None,
                save_engine=self.options.save_engine or workdir / f"{self.path.stem}.{self.precision}.engine",
                layer_info=self.options.layer_info or workdir / f"{self.path.stem}.{self.precision}.layers.json",
            )
        self.build = run_trtexec(build, executable=self.executable, timeout_s=self.timeout_s)
        if self.check and self.options.onnx is not None and self.build.layers is not None:
            self.precision_report = check_precision(
                self.build.layers, self.precision, min_fraction=self.min_fraction, allow_layers=self.allow_layers
            )
        data = self.engine_path.read_bytes()
        self._engine_sha256 = hashlib.sha256(data).hexdigest()
        if self.inference == "polygraphy":
            engine = PolygraphyEngine(data, name=self.name)
            engine.activate()
            self._engine = engine

    def measure(self, *, metric: TimesMetric = "latency", **timing: Any) -> LatencyReport:
        """Time the active runner's engine with trtexec (``timing``: iterations, warmup_ms, duration_s ...)."""
        self._require_active("measure")
        engine = self.engine_path
        allowed = {"iterations", "warmup_ms", "duration_s", "avg_runs", "use_spin_wait", "use_cuda_graph"}
        unknown = sorted(set(timing) - allowed)
        if unknown:
            raise BackendError(f"unknown timing option(s) {unknown}; known: {', '.join(sorted(allowed))}")
        workdir = engine.parent
        run = TrtexecBuildOptions(
            engine=engine,
            precision=self.precision,
            dla_core=self.options.dla_core,
            shapes=self.options.shapes,
            times=workdir / f"{engine.stem}.times.json",
            profile=workdir / f"{engine.stem}.profile.json",
            **timing,
        )
        result = run_trtexec(run, executable=self.executable, timeout_s=self.timeout_s)
        facts = dict(self.facts())
        return result.latency_report(metric=metric, facts=facts)

    def input_metadata_impl(self) -> Mapping[str, TensorMeta]:
        if self._engine is not None:  # the engine's own view (what TensorRT will check)
            return self._engine.input_metadata()
        if self.options.onnx is None:
            raise BackendError(
                f"runner {self.name!r}: input metadata of a prebuilt engine comes from the engine itself "
                "(inference='polygraphy'); with inference='trtexec' give the ONNX model the engine was built from"
            )
        return _onnx_io(self.path)[0]

    def infer_impl(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._engine is not None:
            return self._engine.infer(feed)
        if self.inference == "trtexec":
            return self._infer_trtexec(feed)
        raise BackendError(
            f"runner {self.name!r} was created with inference='none' (build and time only); create it with "
            "inference='polygraphy' (in-process, the default) or 'trtexec' to run numpy feeds on its engine"
        )

    def _infer_trtexec(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """One ``trtexec --loadEngine --loadInputs --exportOutput`` run on the runner's engine."""
        engine = self.engine_path
        dtypes = _onnx_io(self.path)[1] if self.options.onnx is not None else {}
        dynamic = {n: tuple(a.shape) for n, a in feed.items() if n in self._dynamic_inputs()}
        with tempfile.TemporaryDirectory(prefix="edgematrix-trtexec-io-", dir=engine.parent) as tmp:
            folder = Path(tmp)
            inputs = {n: write_input_file(a, folder / f"input{i}.bin") for i, (n, a) in enumerate(feed.items())}
            run = TrtexecBuildOptions(
                engine=engine,
                precision=self.precision,
                dla_core=self.options.dla_core,
                shapes={**self.options.shapes, **dynamic},
                load_inputs=inputs,
                export_output=folder / "outputs.json",
                iterations=1,
                warmup_ms=0,
                duration_s=0,
                use_spin_wait=False,
            )
            run_trtexec(run, executable=self.executable, timeout_s=self.timeout_s)
            return parse_export_output(folder / "outputs.json", dtypes)

    def _dynamic_inputs(self) -> set[str]:
        meta = self.input_metadata()
        return {n for n, m in meta.items() if any(not isinstance(d, int) for d in m.shape)}

    def release_impl(self) -> None:
        engine, self._engine = self._engine, None
        try:
            if engine is not None:
                engine.deactivate()
        finally:
            if self._tmp is not None:
                self._tmp.cleanup()
                self._tmp = None
            self.build = None

    def facts_impl(self) -> Mapping[str, Fact]:
        facts: dict[str, Fact] = {"precision": self.precision, "model": str(self.path), "inference": self.inference}
        if self.options.dla_core is not None:
            facts["dla_core"] = self.options.dla_core
        if self.build is not None:
            if self.build.version:
                facts["tensorrt_version"] = ".".join(map(str, self.build.version))
            if self.build.engine is not None and self.build.engine.is_file():
                facts["engine_bytes"] = self.build.engine.stat().st_size
        if self._engine_sha256 is not None:
            facts["engine_sha256"] = self._engine_sha256  # the file infer() ran and measure() times
        if self.precision_report is not None:
            facts.update(self.precision_report.facts())
        return facts
