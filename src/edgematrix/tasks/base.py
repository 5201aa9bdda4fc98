"""Task adapters: everything the cell benchmark needs to know about one kind of model.

The cell pipeline (data → train → export → recipe → accuracy → latency → gates) is the same for a
lane detector, a detector and a multi-task network; what differs is behind a :class:`TaskAdapter`,
keyed by the matrix model's ``task``:

- ``load_data``: the dataset (real folder, or a synthetic one written in the same format into the cache)
- ``train`` / ``finetune``: the training loop (cached by the caller's content key) and the
  distillation fine-tune used after pruning and for QAT
- ``output_names``: the ONNX output names of the exported model; ``agreement_output`` the one compared
  across backends
- ``evaluate``: run a :class:`~edgematrix.backends.base.Runner` over the test split and score it with
  the task metric (``TaskScore.accuracy`` is the primary metric in points, higher is better; other
  figures in ``extras``), writing the predictions in the dataset's submission format
- ``drive`` / ``overlay``: a short synthetic drive and a drawing of the model's outputs on a frame,
  for ``edgematrix demo``

Adapters live in their own modules and are imported when first asked for, so importing this module
imports no torch.
"""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from edgematrix.backends.base import Runner
from edgematrix.core.registries import tasks
from edgematrix.errors import EdgeMatrixError

if TYPE_CHECKING:
    from pydantic import BaseModel


@dataclass
class TaskScore:
    accuracy: float  # the task's primary metric in points (percent); higher is better
    extras: dict[str, float] = field(default_factory=dict)
    predictions_file: Path | None = None


@dataclass
class TaskData:
    """A dataset resolved for one model: where it is, whether it is synthetic, and its two splits.

    A split has ``images`` (uint8 [N, 3, H, W] at the model's input size) and ``len(split)``; the rest
    (labels, file names) is the task's own.
    """

    root: Path
    synthetic: bool
    key: str  # content fingerprint of the dataset (keys the training cache)
    label: str  # for people: "synthetic TuSimple", "COCO-format detection (synthetic)"
    tag: str  # for benchmark extra_info ``dataset``: "synthetic-tusimple", "tusimple", "synthetic-coco"
    train: Any
    test: Any


@dataclass
class TrainOutcome:
    checkpoint: Path | None
    cache_hit: bool
    seconds: float
    history: list[dict[str, float]] = field(default_factory=list)


MEAN = np.array([0.485, 0.456, 0.406], np.float32) * 255
STD = np.array([0.229, 0.224, 0.225], np.float32) * 255


def imagenet_preprocess(images: np.ndarray) -> np.ndarray:
    """uint8 [N, H, W, 3] or [N, 3, H, W] RGB -> float32 NCHW normalised with ImageNet mean/std."""
    x = images if images.shape[1] == 3 else images.transpose(0, 3, 1, 2)
    return ((x.astype(np.float32) - MEAN[None, :, None, None]) / STD[None, :, None, None]).astype(np.float32)


class TaskAdapter(ABC):
    """One task's data, training, metric and drawing; see the module docstring."""

    name: ClassVar[str]
    metric: ClassVar[str]  # the primary metric's name in reports: "TuSimple accuracy", "mAP@[.5:.95]", "mIoU"
    metric_direction: ClassVar[str] = "higher"  # "higher" or "lower" is better (an error such as MSE)
    #: the metric compares a model's outputs with the FP32 reference's (a task without labels): the pipeline
    #: then passes ``reference=`` (the reference of record's per-sample outputs) to :meth:`score`
    needs_reference: ClassVar[bool] = False
    #: the metric decodes outputs with the torch model (``score(model=...)``: its geometry): a model given
    #: only as an ONNX file cannot be scored by it (refused when the matrix is validated)
    needs_module: ClassVar[bool] = False
    output_names: ClassVar[tuple[str, ...]]
    agreement_output: ClassVar[str]  # output compared across backends / against the FP32 reference
    train_code: ClassVar[tuple[str, ...]]  # edgematrix subpackages/modules whose code keys the training cache
    # the task's own keys of [models.NAME.train] (a pydantic model; None: the task takes none), validated and
    # completed with their defaults when the matrix is loaded (resolve_train)
    train_params: ClassVar[type[BaseModel] | None] = None
    # extras shown in the summary tables (all of them stay in benchmark.json); None = every extra
    summary_extras: ClassVar[tuple[str, ...] | None] = None

    @abstractmethod
    def load_data(self, model_cfg: Any, data_root: str | None, cache_dir: Path) -> TaskData:
        """Resolve ``data_root`` (``None``: the model's own ``data_root``; ``EDGEMATRIX_DATA_ROOT`` wins;
        empty: synthetic data generated into ``cache_dir / "data"``) and load both splits at the model's
        input size (``model_cfg.eval_images`` caps the test split). A missing/corrupt dataset raises
        :class:`~edgematrix.errors.DataError` naming the path and the expected layout."""

    # "module:function" of the task's training loop, called as
    # (model, data.train, config, checkpoint, *, progress) -> an object with checkpoint, cache_hit, seconds, history
    train_function: ClassVar[str]
    # "module:function" of its distillation fine-tune, called as
    # (student, teacher, data.train, config, None, *, progress, label) -> the same kind of object
    distill_function: ClassVar[str]

    @classmethod
    def resolve_train(cls, train: Any, where: str) -> Any:
        """``train`` (the model's TrainConfig) with the task's own keys validated by ``train_params`` and
        completed with their defaults; a key neither shared nor the task's is a MatrixError naming both sets."""
        from pydantic import ValidationError

        from edgematrix.errors import MatrixError

        extra = dict(train.model_extra or {})
        own = list(cls.train_params.model_fields) if cls.train_params is not None else []
        valid = (
            f"valid keys: {', '.join(type(train).model_fields)}; task {cls.name!r}'s own: {', '.join(own) or 'none'}"
        )
        unknown = sorted(set(extra) - set(own))
        if unknown:
            raise MatrixError("; ".join(f"{where}.train.{k}: unknown key" for k in unknown) + f" ({valid})")
        if cls.train_params is None:
            return train
        try:
            params = cls.train_params.model_validate(extra)
        except ValidationError as e:
            problems = "; ".join(
                f"{where}.train.{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in e.errors()
            )
            raise MatrixError(problems) from None
        return train.model_copy(update=params.model_dump())

    def train(self, model: Any, data: TaskData, config: Any, checkpoint: Path, *, progress: bool) -> TrainOutcome:
        """Train ``model`` in place with ``config`` (matrix TrainConfig); reuse ``checkpoint`` when it exists."""
        r = _function(self.train_function)(model, data.train, config, checkpoint, progress=progress)
        return TrainOutcome(r.checkpoint, r.cache_hit, r.seconds, r.history)

    def finetune(
        self, student: Any, teacher: Any, data: TaskData, config: Any, *, progress: bool, label: str
    ) -> TrainOutcome:
        """Fine-tune ``student`` in place (task loss + distillation from ``teacher`` weighted by
        ``config.alpha``; ``config`` is :class:`edgematrix.train.distill.DistillConfig`). Used after
        pruning and for QAT (``student`` holds ModelOpt fake quantizers: keep it contiguous)."""
        fn = _function(self.distill_function)
        r = fn(student, teacher, data.train, config, None, progress=progress, label=label)
        return TrainOutcome(r.checkpoint, r.cache_hit, r.seconds, r.history)

    def distill_config(self, section: Any, train: Any, **overrides: Any) -> Any:
        """The distillation fine-tune's :class:`~edgematrix.train.distill.DistillConfig` from a recipe's
        ``[finetune]`` / ``[qat]`` ``section`` and the model's ``[train]`` config (the task's own loss
        parameters of ``train_params`` that the fine-tune takes too: UFLD's soft labels and expectation loss)."""
        import dataclasses

        from edgematrix.train.distill import DistillConfig

        known = {f.name for f in dataclasses.fields(DistillConfig)}
        own = {k: v for k, v in (train.model_extra or {}).items() if k in known}
        return DistillConfig(
            epochs=section.epochs, batch_size=section.batch_size, lr=section.lr, weight_decay=section.weight_decay,
            warmup_fraction=section.warmup_fraction, alpha=section.alpha, temperature=section.temperature,
            seed=section.seed, amp=section.amp, flip=train.flip, **{**own, **overrides},
        )  # fmt: skip

    def holdout(self, split: Any, n: int) -> Any:
        """The last ``n`` samples of ``split`` as a split of its own (scoring held-out training images: the
        mixed-precision search; calibration takes the first images)."""
        raise EdgeMatrixError(
            f"task {self.name!r} has no held-out subset of its training split: mixed precision by sensitivity "
            "runs on lane models"
        )

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (NHWC or NCHW) -> the model's float32 NCHW input."""
        return imagenet_preprocess(images)

    @abstractmethod
    def score(
        self, outputs: Sequence[dict[str, np.ndarray]], split: Any, out_dir: Path | None, role: str, *, model: Any
    ) -> TaskScore:
        """Score per-sample batch-1 ``outputs`` (sample i at index i; they may cover only the first n samples
        of ``split``: those are scored) with the task metric. With ``out_dir``, write
        ``out_dir/predictions-<role>.*`` (and the labels, once) in the dataset's own submission format.
        The score depends on the outputs alone: nothing measured while they were computed enters it."""

    def feed(self, split: Any, index: int, input_name: str = "input") -> dict[str, np.ndarray]:
        """The model's batch-1 inputs for sample ``index`` of ``split`` (every input of the model: a task of
        several inputs returns them all, whatever ``input_name``)."""
        return {input_name: self.preprocess(split.images[index : index + 1])}

    def feeds(self, split: Any, input_name: str = "input") -> list[dict[str, np.ndarray]]:
        """The model's batch-1 inputs for every sample of ``split``, in order."""
        return [self.feed(split, i, input_name) for i in range(len(split))]

    def evaluate(
        self,
        runner: Runner,
        split: Any,
        out_dir: Path | None,
        role: str,
        *,
        model: Any,
        input_name: str = "input",
        progress: Callable[[int], Any] | None = None,
    ) -> TaskScore:
        """Run ``runner`` on every sample of ``split`` (batch 1) and :meth:`score` its outputs."""
        return self.score(self.infer_all(runner, split, input_name, progress), split, out_dir, role, model=model)

    @abstractmethod
    def drive(self, model_cfg: Any, frames: int, seed: int) -> np.ndarray:
        """A short synthetic drive at the model's input size: uint8 [T, H, W, 3], smooth from frame to frame."""

    @abstractmethod
    def overlay(self, frame: np.ndarray, outputs: dict[str, np.ndarray], model: Any) -> np.ndarray:
        """``frame`` (uint8 [H, W, 3]) with the decoded ``outputs`` of one batch-1 inference drawn on it."""

    def infer_all(
        self, runner: Runner, split: Any, input_name: str, progress: Callable[[int], Any] | None = None
    ) -> list[dict[str, np.ndarray]]:
        """Batch-1 outputs of every image of ``split``. Nothing is timed here: a metric of record
        depends on the model's outputs alone, never on how busy the machine was while scoring."""
        outputs = []
        for i in range(len(split)):
            outputs.append(runner.infer({input_name: self.preprocess(split.images[i : i + 1])}))
            if progress:
                progress(1)
        return outputs

    def record_latency(self, score: TaskScore, p50_ms: float) -> None:
        """Write the model's measured latency (the latency stage's p50 for this backend and role) into
        the predictions file where the task's submission format carries one. Default: no such field."""
        return None

    def latency_rule(self, p50_ms: float) -> str:
        """What the dataset's official evaluator would do with a model of this latency, when its rules
        depend on time ("" when they do not). Reported beside the metric of record, never folded into it."""
        return ""


def _function(spec: str) -> Callable[..., Any]:
    module, name = spec.split(":")
    fn: Callable[..., Any] = getattr(importlib.import_module(module), name)
    return fn


_instances: dict[str, TaskAdapter] = {}


def get_task(name: str) -> TaskAdapter:
    """The adapter of task ``name`` (built-in or plugin; an unknown name lists the known ones)."""
    if name not in _instances:
        adapter = tasks.get(name)()
        if not isinstance(adapter, TaskAdapter):
            raise EdgeMatrixError(f"task {name!r} is {type(adapter).__name__}, not a TaskAdapter subclass")
        _instances[name] = adapter
    return _instances[name]


def stack_outputs(outputs: Sequence[dict[str, Any]], names: Sequence[str]) -> dict[str, np.ndarray]:
    """Per-sample output dicts -> one array per name, sample i at index i."""
    return {k: np.stack([np.asarray(o[k]) for o in outputs]) for k in names}
