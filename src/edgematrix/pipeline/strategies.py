"""PilotNet optimization strategies, compared in one table: MSE, model size and same-run latency.

The strategies of the PilotNet optimization study (JdeRobot, GSoC 2022), on ONNX Runtime CPU:

================  ===========================================================================
``fp32``          the trained model, exported to ONNX: the reference every row is compared with
``global_prune``  structured pruning (torch-pruning, L2 group magnitude) with one channel ranking
                  across all layers, then a short fine-tune
``local_prune``   the same ratio removed from every layer (per-layer ranking), then a fine-tune
``dynamic_int8``  ONNX Runtime dynamic-range quantization (int8 weights, activations quantized
                  at run time; TF Lite's "dynamic range quantization")
``static_int8``   static INT8 QDQ, per-channel weights, calibrated on training frames
                  (:func:`edgematrix.optimize.quantize.quantize_static_qdq`)
``qat_int8``      quantization-aware training with NVIDIA ModelOpt (fake-quantized fine-tune),
                  exported as QDQ with the weights stored as int8
``prune_int8``    ``global_prune`` then static INT8 ("Quantization + Prune")
================  ===========================================================================

Every ONNX file is scored on the test split (MSE and MAE of the steering command) and all of them
are timed in *one* :func:`~edgematrix.measure.harness.measure_interleaved` run, so each speedup is
a same-run ratio against the FP32 model. Written to ``results/pilotnet_strategies/``:
``benchmark.json`` (pytest-benchmark JSON; ``extra_info`` has ``mse``/``mae`` and
``task_metric = "mse"``, ``task_metric_direction = "lower"``, no ``accuracy``: MSE is not a
percentage and a higher-is-better gate on it would be wrong), ``junit.xml`` (the size gate of
each INT8 strategy), ``report.md`` (the table, gates and a Pareto plot) and ``pareto.png``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from edgematrix.errors import EdgeMatrixError, ModelError
from edgematrix.measure.harness import LatencyConfig
from edgematrix.registry import Registry

INPUT_NAME = "input"
OUTPUT_NAME = "output"


def cell_name(model_name: str) -> str:
    """The results folder / benchmark group of a model's strategy comparison: ``pilotnet_strategies``."""
    return f"{model_name}_strategies"


#: part of the trained checkpoint's cache key: bump it when :func:`train_steering` changes what it computes
TRAIN_VERSION = 1
#: INT8 strategies must be at most this fraction of the FP32 model's bytes (issue 3's target).
INT8_SIZE_LIMIT = 0.3


#: every strategy once per round, at least 200 rounds and 10 s (PilotNet runs in well under a millisecond)
DEFAULT_LATENCY = LatencyConfig(warmup=20, min_rounds=200, max_rounds=3000, min_time_s=10, max_time_s=60)


@dataclass(frozen=True)
class StrategySettings:
    """How the strategies are built (the model, data and training come from ``matrix/models.toml``).

    - ``prune_ratio``: fraction of channels / neurons removed (torch-pruning ``pruning_ratio``);
      for ``global_prune`` the total across layers, for ``local_prune`` the same in each layer.
    - ``max_layer_prune_ratio``: no layer loses more than this (global ranking can empty a layer).
    - ``round_to``: channel counts kept at multiples of this (SIMD-friendly).
    - ``finetune_epochs`` / ``finetune_lr``: the fine-tune after pruning; ``qat_epochs`` / ``qat_lr``: QAT.
    - ``calibration_frames``: training frames used to calibrate static INT8 and QAT.
    - ``latency``: the interleaved timing of all strategies in one run.
    """

    prune_ratio: float = 0.4
    max_layer_prune_ratio: float = 0.8
    round_to: int = 4
    finetune_epochs: int = 3
    finetune_lr: float = 5e-4
    qat_epochs: int = 2
    qat_lr: float = 1e-4
    calibration_frames: int = 128
    eval_frames: int = 0  # 0 = the whole test split
    latency: LatencyConfig = DEFAULT_LATENCY

    def __post_init__(self) -> None:
        if not 0 < self.prune_ratio < 1:
            raise EdgeMatrixError(f"prune_ratio must be in (0, 1), got {self.prune_ratio}")
        if not self.prune_ratio <= self.max_layer_prune_ratio < 1:
            raise EdgeMatrixError(
                f"max_layer_prune_ratio must be in [prune_ratio, 1), got {self.max_layer_prune_ratio}"
            )
        if self.round_to < 1 or self.finetune_epochs < 0 or self.qat_epochs < 1 or self.calibration_frames < 1:
            raise EdgeMatrixError(
                "round_to, qat_epochs and calibration_frames must be >= 1 and finetune_epochs >= 0; got "
                f"{self.round_to}, {self.qat_epochs}, {self.calibration_frames}, {self.finetune_epochs}"
            )


@dataclass
class Artifact:
    """One strategy's deployable model."""

    strategy: str
    path: Path
    precision: str  # fp32 | int8
    method: str  # a one-line description of what was done
    params: int  # parameters of the torch model it came from
    seconds: float = 0.0  # time to build it (fine-tune, calibration, export)


@dataclass
class StrategyRow:
    artifact: Artifact
    mse: float
    mae: float
    model_bytes: int
    sha256: str
    samples_s: list[float] = field(default_factory=list)

    @property
    def p50_ms(self) -> float:
        return float(np.percentile(self.samples_s, 50)) * 1e3


@dataclass
class StrategiesResult:
    rows: list[StrategyRow]
    out_dir: Path
    paths: dict[str, Path]
    failed_gates: list[str]


@dataclass
class _Context:
    """What the strategies share: the trained FP32 model, data, settings and the work folder."""

    model: Any  # torch.nn.Module, trained, eval mode
    train_x: np.ndarray  # uint8 [N, 3, H, W]
    train_y: np.ndarray  # float32 [N]
    input_shape: tuple[int, int, int, int]
    settings: StrategySettings
    train_config: Any  # edgematrix.matrix.schema.TrainConfig
    work: Path
    progress: bool
    built: dict[str, Artifact] = field(default_factory=dict)
    modules: dict[str, Any] = field(default_factory=dict)  # strategy -> its torch model (for composition)

    def calibration(self) -> Iterator[np.ndarray]:
        n = min(self.settings.calibration_frames, len(self.train_x))
        idx = np.random.default_rng(0).permutation(len(self.train_x))[:n]
        for i in idx:
            yield self.train_x[i : i + 1].astype(np.float32)


StrategyFn = Callable[[_Context], Artifact]
strategies: Registry[StrategyFn] = Registry("PilotNet strategy")


def _params(model: Any) -> int:
    return int(sum(p.numel() for p in model.parameters()))


# ----------------------------------------------------------------------------------------------
# training


def train_steering(
    model: Any,
    x: np.ndarray,
    y: np.ndarray,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float = 0.0,
    warmup_fraction: float = 0.05,
    seed: int = 0,
    flip: bool = True,
    label: str = "train",
    progress: bool = False,
) -> list[dict[str, float]]:
    """Train ``model`` in place with MSE on uint8 frames ``x`` (N, 3, H, W) and steering ``y``.

    ``flip`` mirrors half of each batch horizontally and negates its steering (a mirrored road
    needs the mirrored command). AdamW, linear warm-up then cosine decay. Returns per-epoch losses.
    """
    import torch
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    from edgematrix.train.lane import warmup_cosine
    from edgematrix.train.loop import optimizer_step

    if len(x) != len(y) or len(x) == 0:
        raise EdgeMatrixError(f"training needs as many labels as frames (>0); got {len(x)} frames, {len(y)} labels")
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    X = torch.from_numpy(x)
    Y = torch.from_numpy(y.astype(np.float32))
    n = len(X)
    steps = epochs * math.ceil(n / batch_size)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, warmup_cosine(max(1, steps), warmup_fraction))
    history = []
    model.train()
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"))
    with Progress(*columns, TimeRemainingColumn(), disable=not progress) as bar:
        task = bar.add_task(label, total=steps, info="")
        for epoch in range(epochs):
            perm = torch.randperm(n, generator=gen)
            running = 0.0
            for i in range(0, n, batch_size):
                idx = perm[i : i + batch_size]
                xb, yb = X[idx].float(), Y[idx].clone()
                if flip:
                    mirror = torch.rand(len(idx), generator=gen) < 0.5
                    xb[mirror] = xb[mirror].flip(-1)
                    yb[mirror] = -yb[mirror]
                loss = torch.nn.functional.mse_loss(model(xb).reshape(-1), yb)
                optimizer_step(loss, opt, sched, diverged=f"{label} diverged at epoch {epoch + 1}; lower the lr")
                running += loss.item() * len(idx)
                bar.update(task, advance=1, info=f"epoch {epoch + 1}/{epochs} mse {loss.item():.4f}")
            history.append({"epoch": epoch + 1, "mse": running / n})
    model.eval()
    return history


def _finetune(ctx: _Context, model: Any, epochs: int, lr: float, label: str) -> None:
    if epochs <= 0:
        return
    cfg = ctx.train_config
    train_steering(
        model, ctx.train_x, ctx.train_y, epochs=epochs, batch_size=cfg.batch_size, lr=lr,
        weight_decay=cfg.weight_decay, warmup_fraction=0.0, seed=cfg.seed + 1, flip=cfg.flip, label=label,
        progress=ctx.progress,
    )  # fmt: skip


# ----------------------------------------------------------------------------------------------
# export helpers


def _export_fp32(ctx: _Context, model: Any, name: str) -> Path:
    from edgematrix.export.onnx_export import export_onnx

    path = ctx.work / f"{name}.onnx"
    export_onnx(model, ctx.input_shape, path, input_name=INPUT_NAME, output_names=(OUTPUT_NAME,))
    return path


@contextlib.contextmanager
def _quiet_logging() -> Iterator[None]:
    """ONNX Runtime's quantizer and ModelOpt log advice at WARNING on the root logger; hush it here."""
    previous = logging.root.manager.disable
    logging.disable(logging.WARNING)
    try:
        yield
    finally:
        logging.disable(previous)


def fold_weight_quantizers(model: Any) -> int:
    """Store weights that feed a ``QuantizeLinear`` as int8 initializers (drop the Q, keep the DQ).

    QAT exporters write float weights followed by QuantizeLinear → DequantizeLinear; the numbers
    are the same as int8 weights → DequantizeLinear (what PTQ writes), which is 4× smaller. Returns
    the number of weights folded. ``model`` is an ``onnx.ModelProto``, changed in place.
    """
    from onnx import numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    consumers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    folded, keep = 0, []
    for node in graph.node:
        if (
            node.op_type == "QuantizeLinear"
            and len(node.input) == 3
            and all(i in inits for i in node.input)
            and consumers.get(node.input[0], 0) == 1
        ):
            w = numpy_helper.to_array(inits[node.input[0]]).astype(np.float64)
            scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float64)
            zp = numpy_helper.to_array(inits[node.input[2]])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and scale.size > 1:
                shape = [1] * w.ndim
                shape[axis] = scale.size
                scale, zpb = scale.reshape(shape), zp.reshape(shape).astype(np.float64)
            else:
                zpb = zp.astype(np.float64)
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(w / scale) + zpb, info.min, info.max).astype(zp.dtype)
            graph.initializer.remove(inits[node.input[0]])
            graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
            folded += 1
            continue
        keep.append(node)
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for init in [t for t in graph.initializer if t.name not in used]:
        graph.initializer.remove(init)
    return folded


def _export_qat(ctx: _Context, qmodel: Any, name: str) -> Path:
    """ModelOpt fake-quant model → QDQ ONNX with int8 weights; checked against torch on real frames."""
    import onnx
    import onnxslim
    import torch

    from edgematrix.fileio import atomic_write_bytes

    path = ctx.work / f"{name}.onnx"
    raw = ctx.work / f"{name}.raw.onnx"
    example = torch.from_numpy(ctx.train_x[:1].astype(np.float32))
    # ModelOpt's quantizers export through the TorchScript exporter (torch.export cannot trace them);
    # its TracerWarnings are about amax checks that are constant once calibrated
    with _quiet_logging(), contextlib.redirect_stdout(None), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter is the deliberate choice here
        torch.onnx.export(
            qmodel, (example,), str(raw), input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=17,
            dynamo=False,
        )  # fmt: skip
    proto = onnxslim.slim(onnx.load(str(raw)))
    raw.unlink()
    folded = fold_weight_quantizers(proto)
    if folded == 0:
        raise ModelError(f"QAT export of {name} has no weight QuantizeLinear to fold; ModelOpt's export changed")
    onnx.checker.check_model(proto)
    atomic_write_bytes(path, proto.SerializeToString())
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    frames = ctx.train_x[:8].astype(np.float32)
    with torch.no_grad():
        want = qmodel(torch.from_numpy(frames)).numpy().reshape(-1)
    got = np.array([sess.run(None, {INPUT_NAME: f[None]})[0].item() for f in frames])
    diff = float(np.max(np.abs(got - want)))
    if diff > 2e-2:
        raise ModelError(f"QAT ONNX model {path} differs from the fake-quantized torch model by {diff:.3g}")
    return path


def _prune(ctx: _Context, global_pruning: bool) -> Any:
    import copy

    import torch
    import torch_pruning as tp

    model = copy.deepcopy(ctx.model).eval()
    example = torch.zeros(ctx.input_shape)
    s = ctx.settings
    pruner = tp.pruner.MetaPruner(
        model,
        example,
        importance=tp.importance.GroupMagnitudeImportance(p=2),
        pruning_ratio=s.prune_ratio,
        global_pruning=global_pruning,
        max_pruning_ratio=s.max_layer_prune_ratio,
        round_to=s.round_to,
        ignored_layers=[model.head[-1]],  # the steering output keeps its single neuron
    )
    pruner.step()
    return model


def _channels(model: Any) -> str:
    import torch

    convs = [m.out_channels for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    fcs = [m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear)][:-1]
    return f"conv {'-'.join(map(str, convs))}, fc {'-'.join(map(str, fcs))}"


# ----------------------------------------------------------------------------------------------
# the strategies


@strategies.register("fp32")
def _fp32(ctx: _Context) -> Artifact:
    return Artifact("fp32", _export_fp32(ctx, ctx.model, "fp32"), "fp32", "trained model, ONNX", _params(ctx.model))


def _pruned(ctx: _Context, strategy: str, global_pruning: bool) -> Artifact:
    s = ctx.settings
    model = _prune(ctx, global_pruning)
    _finetune(ctx, model, s.finetune_epochs, s.finetune_lr, f"fine-tune {strategy}")
    ctx.modules[strategy] = model
    kind = "global channel ranking" if global_pruning else "uniform per-layer ratio"
    method = f"torch-pruning L2, {kind}, ratio {s.prune_ratio:g} ({_channels(model)}), {s.finetune_epochs} ep fine-tune"
    return Artifact(strategy, _export_fp32(ctx, model, strategy), "fp32", method, _params(model))


@strategies.register("global_prune")
def _global_prune(ctx: _Context) -> Artifact:
    return _pruned(ctx, "global_prune", True)


@strategies.register("local_prune")
def _local_prune(ctx: _Context) -> Artifact:
    return _pruned(ctx, "local_prune", False)


@strategies.register("dynamic_int8")
def _dynamic(ctx: _Context) -> Artifact:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    fp32 = _require(ctx, "fp32")
    out = ctx.work / "dynamic_int8.onnx"
    with _quiet_logging():
        quantize_dynamic(fp32.path, out, weight_type=QuantType.QInt8, per_channel=False)
    method = "onnxruntime quantize_dynamic: int8 weights, activations quantized per run"
    return Artifact("dynamic_int8", out, "int8", method, fp32.params)


def _static(ctx: _Context, source: Artifact, strategy: str) -> Artifact:
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    config = QuantizeConfig(calibration_images=ctx.settings.calibration_frames)
    out = ctx.work / f"{strategy}.onnx"
    quantize_static_qdq(source.path, out, ctx.calibration(), input_name=INPUT_NAME, config=config)
    method = f"static QDQ U8S8, per-channel, {config.method} calibration on {config.calibration_images} train frames"
    return Artifact(strategy, out, "int8", method, source.params)


@strategies.register("static_int8")
def _static_int8(ctx: _Context) -> Artifact:
    return _static(ctx, _require(ctx, "fp32"), "static_int8")


@strategies.register("qat_int8")
def _qat(ctx: _Context) -> Artifact:
    import copy

    import torch

    with _quiet_logging(), contextlib.redirect_stdout(None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Cannot find transformers package")  # not needed for CNNs
        warnings.simplefilter("ignore", DeprecationWarning)  # ModelOpt uses torch.jit.script at import
        import modelopt.torch.quantization as mtq

        calib = torch.from_numpy(np.concatenate(list(ctx.calibration())))

        def forward_loop(model: Any) -> None:
            with torch.no_grad():
                for i in range(0, len(calib), 32):
                    model(calib[i : i + 32])

        qmodel = mtq.quantize(copy.deepcopy(ctx.model), mtq.INT8_DEFAULT_CFG, forward_loop)
    s = ctx.settings
    _finetune(ctx, qmodel, s.qat_epochs, s.qat_lr, "QAT")
    path = _export_qat(ctx, qmodel, "qat_int8")
    method = f"NVIDIA ModelOpt INT8 (per-channel weights, per-tensor activations), {s.qat_epochs} ep QAT, QDQ"
    return Artifact("qat_int8", path, "int8", method, _params(ctx.model))


@strategies.register("prune_int8")
def _prune_int8(ctx: _Context) -> Artifact:
    art = _static(ctx, _require(ctx, "global_prune"), "prune_int8")
    art.method = "global_prune, then " + art.method
    return art


#: the order strategies are built and reported in (later ones reuse earlier ones)
ORDER = ("fp32", "global_prune", "local_prune", "dynamic_int8", "static_int8", "qat_int8", "prune_int8")


#: strategies that start from another one's model
DEPENDS = {"prune_int8": ("global_prune",)}


def _require(ctx: _Context, strategy: str) -> Artifact:
    if strategy not in ctx.built:
        raise EdgeMatrixError(f"this strategy builds on {strategy!r}; include it in the strategies to run")
    return ctx.built[strategy]


# ----------------------------------------------------------------------------------------------
# scoring and timing


def _predict(path: Path, x: np.ndarray) -> np.ndarray:
    from edgematrix.backends.base import create_runner

    out = np.empty(len(x), np.float64)
    with create_runner("onnxruntime", path=path, name=path.stem) as runner:
        for i in range(len(x)):
            out[i] = float(np.asarray(runner.infer({INPUT_NAME: x[i : i + 1].astype(np.float32)})[OUTPUT_NAME]).item())
    return out


def _score_and_time(
    artifacts: list[Artifact], test_x: np.ndarray, test_y: np.ndarray, latency: LatencyConfig
) -> list[StrategyRow]:
    from edgematrix.backends.base import create_runner
    from edgematrix.core.cache import file_sha256
    from edgematrix.measure.harness import measure_interleaved
    from edgematrix.metrics.regression import score

    rows = []
    for art in artifacts:
        s = score(_predict(art.path, test_x), test_y)
        rows.append(StrategyRow(art, s.mse, s.mae, art.path.stat().st_size, file_sha256(art.path)))
    runners = {a.strategy: create_runner("onnxruntime", path=a.path, name=a.strategy) for a in artifacts}
    feed = {INPUT_NAME: test_x[:1].astype(np.float32)}
    samples = measure_interleaved(runners, feed, latency)
    for row in rows:
        row.samples_s = samples[row.artifact.strategy].samples_s
    return rows


# ----------------------------------------------------------------------------------------------
# the pipeline


def _trained_model(
    model_cfg: Any, train_x: np.ndarray, train_y: np.ndarray, data_key: str, cache_dir: Path, progress: bool
) -> tuple[Any, bool, float]:
    from edgematrix.core.cache import code_hash, content_key
    from edgematrix.models import create_model
    from edgematrix.train.lane import reuse_checkpoint, save_checkpoint

    model = create_model(model_cfg.family, model_cfg.input_shape, **model_cfg.params)
    code = (code_hash(["models/pilotnet"]), TRAIN_VERSION)
    key = content_key(model_cfg.family, model_cfg.params, model_cfg.train.model_dump(), data_key, code)
    ckpt = cache_dir / "checkpoints" / f"pilotnet-{key}.pt"
    if reuse_checkpoint(model, ckpt) is not None:
        return model.eval(), True, 0.0
    cfg = model_cfg.train
    start = time.perf_counter()
    history = train_steering(
        model, train_x, train_y, epochs=cfg.epochs, batch_size=cfg.batch_size, lr=cfg.lr,
        weight_decay=cfg.weight_decay, warmup_fraction=cfg.warmup_fraction, seed=cfg.seed, flip=cfg.flip,
        label="train pilotnet", progress=progress,
    )  # fmt: skip
    seconds = time.perf_counter() - start
    save_checkpoint(model, ckpt, {"history": history, "seconds": seconds, "data": data_key})
    return model.eval(), False, seconds


def run_strategies(
    model_cfg: Any,
    out_dir: str | os.PathLike[str],
    *,
    cache_dir: str | os.PathLike[str] = ".cache/edgematrix",
    data_root: str | None = None,
    settings: StrategySettings = StrategySettings(),
    names: tuple[str, ...] = ORDER,
    model_name: str = "pilotnet",
    target: str = "x86_cpu",
    progress: bool = True,
) -> StrategiesResult:
    """Train (or load) PilotNet, build every strategy in ``names``, score and time them, write the results.

    ``model_cfg`` is a :class:`edgematrix.matrix.schema.Model` of task ``steering``. ``data_root``
    (or the model's ``data_root``) is a driving-log folder; empty: synthetic frames in ``cache_dir``.
    """
    if model_cfg.task != "steering":
        raise EdgeMatrixError(f"strategies run on steering models; {model_name!r} has task {model_cfg.task!r}")
    unknown = [n for n in names if n not in strategies]
    if unknown:
        raise EdgeMatrixError(f"unknown strategies {unknown}; known: {', '.join(ORDER)}")
    if "fp32" not in names:
        raise EdgeMatrixError("the strategies need 'fp32': it is the reference every row is compared with")
    for name in names:
        missing = [d for d in DEPENDS.get(name, ()) if d not in names]
        if missing:
            raise EdgeMatrixError(f"strategy {name!r} builds on {missing}; add them to the strategies to run")
    names = tuple(n for n in ORDER if n in names)
    return _run_impl(
        model_cfg, Path(out_dir), Path(cache_dir), data_root, settings, names, model_name, target, progress
    )


def _run_impl(
    model_cfg: Any,
    out: Path,
    cache: Path,
    data_root: str | None,
    settings: StrategySettings,
    names: tuple[str, ...],
    model_name: str,
    target: str,
    progress: bool,
) -> StrategiesResult:
    import torch

    from edgematrix.core.cache import content_key
    from edgematrix.data.synthetic_driving import DrivingSynthConfig, load_split, resolve_data_root

    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)
    synth = DrivingSynthConfig(model_cfg.synthetic.train, model_cfg.synthetic.test, model_cfg.synthetic.seed)
    root, synthetic = resolve_data_root(data_root or model_cfg.data_root, synth, cache)
    size = (model_cfg.input_shape[2], model_cfg.input_shape[3])
    color = str(model_cfg.params.get("color", "yuv"))  # PilotNet's `color` param: the frames' colour space
    train = load_split(root, "train", size, color=color)
    test = load_split(root, "test", size, color=color, limit=settings.eval_frames)
    data_key = (
        synth.key()
        if synthetic
        else content_key(
            str(root.resolve()), [(str(s.image), s.image.stat().st_size, s.steering) for s in train.samples]
        )
    )
    model, cache_hit, train_s = _trained_model(model_cfg, train.images, train.steering, data_key, cache, progress)

    out.mkdir(parents=True, exist_ok=True)
    work = out / "models"
    work.mkdir(exist_ok=True)
    shape = tuple(int(d) for d in model_cfg.input_shape)
    ctx = _Context(model, train.images, train.steering, shape, settings, model_cfg.train, work, progress)  # type: ignore[arg-type]
    for name in names:
        start = time.perf_counter()
        art = strategies.get(name)(ctx)
        art.seconds = time.perf_counter() - start
        ctx.built[name] = art
    artifacts = [ctx.built[n] for n in names]
    rows = _score_and_time(artifacts, test.images, test.steering, settings.latency)
    context = {
        "data": f"{'synthetic driving frames' if synthetic else 'driving log'} at {root} "
        f"({len(train)} train / {len(test)} test frames, {color.upper()} {size[0]}×{size[1]})",
        "training": "cached checkpoint" if cache_hit else f"trained {model_cfg.train.epochs} epochs in {train_s:.0f} s",
        "latency": f"ONNX Runtime CPU, {threads} intra-op threads, no spinning, all strategies interleaved, "
        f"{len(rows[0].samples_s)} rounds",
    }
    paths, failed = _write_results(rows, out, settings, model_name, target, synthetic, shape, context)
    return StrategiesResult(rows, out, paths, failed)


def _gate_verdicts(rows: list[StrategyRow]) -> list[Any]:
    from edgematrix.gates.verdicts import Verdict

    fp32 = rows[0].model_bytes
    verdicts = []
    for row in rows:
        if row.artifact.precision != "int8":
            continue
        ratio = row.model_bytes / fp32
        ok = ratio <= INT8_SIZE_LIMIT
        verdicts.append(
            Verdict(
                f"int8_size[{row.artifact.strategy}]",
                "passed" if ok else "failed",
                f"{row.model_bytes} bytes = {ratio:.3f}× FP32 ({fp32} bytes); limit {INT8_SIZE_LIMIT}×",
            )
        )
    complete = all(math.isfinite(r.mse) and r.model_bytes > 0 and r.samples_s for r in rows)
    verdicts.append(
        Verdict(
            "every_strategy_measured", "passed" if complete else "failed", f"{len(rows)} strategies: MSE, size, p50"
        )
    )
    return verdicts


def _write_results(
    rows: list[StrategyRow],
    out: Path,
    settings: StrategySettings,
    model_name: str,
    target: str,
    synthetic: bool,
    shape: tuple[int, ...],
    context: dict[str, str],
) -> tuple[dict[str, Path], list[str]]:
    import onnxruntime as ort

    from edgematrix.core.results import BenchmarkEntry, write_benchmark_json
    from edgematrix.measure.environment import capture_environment
    from edgematrix.report.junit import write_junit
    from edgematrix.report.pareto import pareto_markdown, plot_pareto, points_from_benchmarks

    cell = cell_name(model_name)
    ref = rows[0]
    entries = []
    for row in rows:
        art = row.artifact
        s = np.asarray(row.samples_s)
        extra: dict[str, float | int | str] = {
            "role": "reference" if art.strategy == "fp32" else "candidate",
            "recipe": art.strategy,
            "precision": art.precision,
            "backend": "onnxruntime",
            "backend_version": ort.__version__,
            "mse": round(row.mse, 8),
            "mae": round(row.mae, 8),
            "task_metric": "mse",
            "task_metric_direction": "lower",
            "model_bytes": row.model_bytes,
            "size_vs_reference": round(row.model_bytes / ref.model_bytes, 4),
            "params": art.params,
            "input_shape": "x".join(map(str, shape)),
            "artifact_sha256": row.sha256,
            "p50_ms": round(float(np.percentile(s, 50)) * 1e3, 6),
            "p90_ms": round(float(np.percentile(s, 90)) * 1e3, 6),
            "p99_ms": round(float(np.percentile(s, 99)) * 1e3, 6),
            "speedup_vs_reference": round(ref.p50_ms / row.p50_ms, 4),
            "method": art.method,
            "cell": cell,
            "target": target,
            "model": model_name,
            "dataset": "synthetic-driving" if synthetic else "driving_log",
        }
        entries.append(BenchmarkEntry(f"{cell}[{art.strategy}]", cell, row.samples_s, extra))
    paths = {"benchmark": out / "benchmark.json"}
    doc = write_benchmark_json(
        paths["benchmark"], entries, machine_extra=capture_environment(), latency_config=settings.latency
    )
    verdicts = _gate_verdicts(rows)
    paths["junit"] = write_junit(
        out / "junit.xml", cell, verdicts, {"strategies": ",".join(r.artifact.strategy for r in rows)}
    )
    groups = points_from_benchmarks([doc], source=str(paths["benchmark"]))
    group = groups[(model_name, target)]
    paths["pareto"] = plot_pareto(group, out / "pareto.png")
    (out / "config.json").write_text(
        json.dumps({"settings": {k: str(v) for k, v in vars(settings).items()}, "context": context}, indent=2)
    )
    paths["report"] = out / "report.md"
    paths["report"].write_text(_render_report(cell, rows, verdicts, context, pareto_markdown(group)), encoding="utf-8")
    return paths, [v.gate for v in verdicts if v.failed]


def _size(n: int) -> str:
    return f"{n / 1e3:.0f} kB" if n < 1e6 else f"{n / 1e6:.2f} MB"


def _render_report(
    cell: str, rows: list[StrategyRow], verdicts: list[Any], context: dict[str, str], pareto_md: str
) -> str:
    from edgematrix.report.markdown import MARK

    ref = rows[0]
    failed = any(v.failed for v in verdicts)
    lines = [
        f"# {cell}: {'FAILED' if failed else 'passed'}",
        "",
        "PilotNet steering regression: pruning and quantization strategies on ONNX Runtime CPU. MSE/MAE of the "
        "normalised steering command on the test split (lower is better); latency p50 of one frame, every strategy "
        "timed interleaved in one run, speedups are same-run ratios against FP32.",
        "",
        "| strategy | precision | MSE | MAE | params | size | size vs FP32 | p50 (ms) | speedup vs FP32 |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r.artifact.strategy} | {r.artifact.precision} | {r.mse:.6f} | {r.mae:.5f} | {r.artifact.params:,} "
            f"| {_size(r.model_bytes)} | {r.model_bytes / ref.model_bytes:.3f}× | {r.p50_ms:.3f} "
            f"| {ref.p50_ms / r.p50_ms:.2f}× |"
        )
    lines += ["", "## Strategies", ""]
    lines += [f"- **{r.artifact.strategy}**: {r.artifact.method} (built in {r.artifact.seconds:.0f} s)" for r in rows]
    lines += ["", "## Gates", "", "| gate | verdict | detail |", "|---|---|---|"]
    lines += [f"| {v.gate} | {MARK[v.status]} | {v.message} |" for v in verdicts]
    lines += ["", "## Accuracy vs latency", "", "![Pareto plot](pareto.png)", "", pareto_md]
    lines += ["", "## Run", ""] + [f"- **{k}**: {v}" for k, v in context.items()]
    lines += [
        f"- **generated**: {datetime.now(UTC).isoformat(timespec='seconds')}",
        "- Absolute CPU times move with machine load; compare the speedup column (same-run ratios).",
    ]
    return "\n".join(lines) + "\n"


def quick_settings() -> StrategySettings:
    """Settings for smoke tests: one short fine-tune, few calibration frames, a short timing run."""
    return replace(
        StrategySettings(),
        finetune_epochs=1,
        qat_epochs=1,
        calibration_frames=16,
        latency=LatencyConfig(warmup=2, min_rounds=10, max_rounds=30, min_time_s=0.0, max_time_s=5.0),
    )
