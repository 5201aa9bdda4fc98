"""The ``outputs`` task: a model without labels, scored by how closely its outputs agree with the FP32
reference's — the task of any model brought as it is (an ONNX file, a module of your own).

Data: the images of the model's ``data_root`` folder (subfolders included, sorted by path), preprocessed as
``[models.X.images]`` declares (:mod:`edgematrix.data.images`: size, resize mode, mean/std, channel order,
layout). The last quarter of the files (at most 32; ``eval_images`` sets the count) is the evaluation
split, the rest calibrates (INT8) and fine-tunes (pruning, QAT). Without a folder, seeded random inputs:
uniform-noise pixels through the same preprocessing (32 calibration, 16 evaluation samples, or the
``[models.X.synthetic]`` counts) — and the metric's name, the dataset label and the benchmark records say so.
Inputs other than the image get seeded random values (floats N(0, 1), integers 0 or 1).

Metric of record (:mod:`edgematrix.metrics.agreement`): for every output, the mean cosine similarity of
the candidate's outputs with the FP32 reference's on the evaluation inputs; the metric is the worst
output's, in percent (100 = the reference's outputs; higher is better), so the accuracy gates apply as they
are (``accuracy_drop_vs_reference = 0.5``: cosine ≥ 0.995 of the reference). Per output, the extras carry
``cosine_<out>``, ``snr_db_<out>``, ``max_abs_<out>`` and ``max_rel_<out>``, and ``snr_db`` / ``max_rel`` /
``max_abs`` over all outputs. ``predictions-<role>.json`` holds them with the per-sample cosines.

Fine-tuning (after pruning, for QAT) distils the module toward the unpruned FP32 module's outputs on the
calibration images (:mod:`edgematrix.train.outputs`); with no labels there is nothing to train from
scratch: a module needs its ``checkpoint``.

Build your own task on it: subclass :class:`OutputsTask`, declare ``output_names``, ``metric`` and
``needs_reference = False``, read your labels in :meth:`load_data` (``super().load_data(...)``, then the
files of ``data.test.files``) and score in :meth:`score` (docs/your-model.md walks through one).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from edgematrix.core.onnx_io import TensorSpec
from edgematrix.errors import DataError, EdgeMatrixError, ModelError
from edgematrix.tasks.base import TaskAdapter, TaskData, TaskScore, TrainOutcome

#: the metric of record's name; with random inputs it says so
METRIC = "output agreement (cosine % vs FP32, worst output)"
RANDOM_SUFFIX = " on seeded random inputs"
#: evaluation samples when eval_images does not say: a quarter of the folder, at most this many
MAX_EVAL_IMAGES = 32
#: random inputs: calibration and evaluation samples unless [models.X.synthetic] says
RANDOM_TRAIN, RANDOM_TEST = 32, 16


@dataclass
class InputSplit:
    """Samples of the model's inputs: the images (uint8 RGB ``[N, 3, H, W]`` at the image input's size,
    decoded when sliced), their files (none for random inputs) and each sample's other inputs."""

    images: Any  # edgematrix.data.images.ImageStack or a uint8 array
    files: list[Path] = field(default_factory=list)
    extra: list[dict[str, np.ndarray]] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.images)


def _shape(spec: TensorSpec) -> tuple[int, ...]:
    """The input's declared shape (its dims are all sizes: the loader declared every dynamic one)."""
    return tuple(d for d in spec.dims if isinstance(d, int))


def _key(name: str) -> str:
    """An output name as part of an extra_info key (letters, digits, underscores)."""
    return re.sub(r"[^0-9A-Za-z_]", "_", name)


class OutputsTask(TaskAdapter):
    name = "outputs"
    metric = METRIC
    metric_direction = "higher"
    needs_reference = True
    output_names: ClassVar[tuple[str, ...]] = ()  # the model's own: set per model (ONNX file, or the module's)
    agreement_output = ""  # every output is compared across backends
    train_code: ClassVar[tuple[str, ...]] = ("tasks/outputs", "train/outputs", "data/images")
    summary_extras: ClassVar[tuple[str, ...] | None] = ("snr_db", "max_rel")
    train_function = ""
    distill_function = ""

    def __init__(self) -> None:
        self.specs: list[TensorSpec] = []
        self.image_input = ""
        self.settings: Any = None  # edgematrix.data.images.ImageSettings
        self.random_inputs = False

    # -- the model's inputs ------------------------------------------------------------------------

    def input_specs(self, model_cfg: Any) -> list[TensorSpec]:
        """Every input of the model at its declared shape (an ONNX file's inputs, or a torch module's one)."""
        if model_cfg.onnx is None:
            return [TensorSpec("input", tuple(model_cfg.input_shape), np.dtype(np.float32))]
        from edgematrix.core.onnx_io import read_interface

        interface = read_interface(model_cfg.onnx)
        shapes = dict(model_cfg.input_shapes)
        missing = [s.name for s in interface.inputs if s.name not in shapes]
        if missing:  # the loader fills every input: a config that did not go through it
            raise ModelError(f"{model_cfg.onnx}: no shape for input(s) {', '.join(missing)}; declare input_shapes")
        return [TensorSpec(s.name, tuple(int(d) for d in shapes[s.name]), s.dtype) for s in interface.inputs]

    def _image_input(self, model_cfg: Any, specs: list[TensorSpec]) -> TensorSpec | None:
        if model_cfg.images.input:
            return next(s for s in specs if s.name == model_cfg.images.input)
        four_d = [s for s in specs if len(s.dims) == 4]
        if len(four_d) > 1:
            raise DataError(
                f"the model has {len(four_d)} 4-D inputs ({', '.join(s.name for s in four_d)}); say which takes the "
                "image: [models.X.images] input = 'NAME'"
            )
        return four_d[0] if four_d else None

    def _settings(self, model_cfg: Any, spec: TensorSpec) -> Any:
        from edgematrix.data.images import ImageSettings

        section = model_cfg.images
        layout = section.layout
        if "layout" not in section.model_fields_set and spec.dims[1] != 3 and spec.dims[3] == 3:
            layout = "nhwc"  # [1, H, W, 3]: channels last, as the shape says
        axis = 1 if layout == "nchw" else 3
        if spec.dims[axis] != 3:
            raise DataError(
                f"input {spec.name!r} is {list(spec.dims)}: with layout {layout!r} its dim {axis} holds the 3 colour "
                "channels; set [models.X.images] layout ('nchw' or 'nhwc') or input to the image input"
            )
        dims = _shape(spec)
        h, w = (dims[2], dims[3]) if layout == "nchw" else (dims[1], dims[2])
        if spec.dtype != np.uint8 and not np.issubdtype(spec.dtype, np.floating):
            raise DataError(f"input {spec.name!r} takes {spec.dtype.name}; an image input takes float or uint8 pixels")
        return ImageSettings(
            height=h, width=w, size=tuple(section.size) if section.size else None, resize=section.resize,
            pad_value=section.pad_value, mean=tuple(section.mean), std=tuple(section.std), channels=section.channels,
            layout=layout, extensions=tuple(section.extensions),
        )  # fmt: skip

    # -- data --------------------------------------------------------------------------------------

    def load_data(self, model_cfg: Any, data_root: str | None, cache_dir: Path) -> TaskData:
        from edgematrix.core.cache import content_key
        from edgematrix.data.images import ImageStack, fingerprint, list_images, random_images

        if not type(self).output_names:  # the model's own outputs: an ONNX file's names (a module's: at export)
            setattr(self, "output_names", tuple(self._onnx_outputs(model_cfg)))  # noqa: B010 - a ClassVar per model
        self.specs = self.input_specs(model_cfg)
        image = self._image_input(model_cfg, self.specs)
        self.image_input = image.name if image is not None else ""
        self.settings = self._settings(model_cfg, image) if image is not None else None
        configured = data_root if data_root is not None else model_cfg.data_root
        root_text = os.environ.get("EDGEMATRIX_DATA_ROOT") or configured
        shapes = {s.name: [list(s.dims), s.dtype.name] for s in self.specs}
        settings_key = self.settings.key() if self.settings is not None else None
        if root_text:
            if image is None:
                raise DataError(
                    f"data_root {root_text} holds images, but the model has no image input (its inputs: "
                    + ", ".join(f"{s.name} {list(s.dims)}" for s in self.specs)
                    + "); leave data_root empty for seeded random inputs"
                )
            root = Path(root_text).expanduser()
            if not root.is_dir():
                raise DataError(f"data_root {root} is not a folder; point it at a folder of images, or leave it empty")
            files = list_images(root, self.settings.extensions)
            if not files:
                raise DataError(
                    f"data_root {root} has no image files ({', '.join(self.settings.extensions)}, subfolders "
                    "included); add images or set [models.X.images] extensions"
                )
            n_eval = self._eval_count(model_cfg, len(files))
            cal_files, eval_files = (files[:-n_eval], files[-n_eval:]) if len(files) > 1 else (files, files)
            train = InputSplit(ImageStack(cal_files, self.settings), cal_files)
            test = InputSplit(ImageStack(eval_files, self.settings), eval_files)
            key = content_key("images", fingerprint(root, files), n_eval, settings_key, shapes)
            label = (
                f"{len(files)} images ({len(cal_files)} calibration, {len(eval_files)} evaluation"
                f"{', shared: one image' if len(files) == 1 else ''}; {self.settings.describe()})"
            )
            tag, random = "images", False
        else:
            explicit = "synthetic" in model_cfg.model_fields_set
            n_train = model_cfg.synthetic.train if explicit else RANDOM_TRAIN
            n_test = model_cfg.synthetic.test if explicit else RANDOM_TEST
            if model_cfg.eval_images:
                n_test = min(n_test, model_cfg.eval_images)
            seed = model_cfg.synthetic.seed
            h, w = (self.settings.height, self.settings.width) if self.settings is not None else (1, 1)
            pixels = random_images(n_train + n_test, h, w, seed)
            train, test = InputSplit(pixels[:n_train]), InputSplit(pixels[n_train:])
            root = Path("<no images: seeded random inputs>")
            key = content_key("random-inputs", seed, n_train, n_test, settings_key, shapes)
            label = (
                f"seeded random inputs (seed {seed}, {n_train} calibration / {n_test} evaluation samples; no images: "
                "set data_root to a folder of images for a metric on real inputs)"
            )
            tag, random = "random-inputs", True
        for offset, split in ((0, train), (len(train), test)):
            split.extra = [self._other_inputs(model_cfg.synthetic.seed, offset + i) for i in range(len(split))]
        self.random_inputs = random
        setattr(self, "metric", type(self).metric + (RANDOM_SUFFIX if random else ""))  # noqa: B010 - said everywhere
        return TaskData(root, random, key, label, tag, train, test)

    @staticmethod
    def _onnx_outputs(model_cfg: Any) -> list[str]:
        if model_cfg.onnx is None:
            return []
        from edgematrix.core.onnx_io import read_interface

        return read_interface(model_cfg.onnx).output_names

    @staticmethod
    def _eval_count(model_cfg: Any, n: int) -> int:
        if n == 1:
            return 1
        wanted = model_cfg.eval_images or min(MAX_EVAL_IMAGES, max(1, n // 4))
        return max(1, min(wanted, n - 1))

    def _other_inputs(self, seed: int, index: int) -> dict[str, np.ndarray]:
        rng = np.random.default_rng([seed, 31337, index])
        out = {}
        for s in self.specs:
            if s.name == self.image_input:
                continue
            shape = _shape(s)
            if np.issubdtype(s.dtype, np.floating):
                out[s.name] = rng.standard_normal(shape).astype(s.dtype)
            else:
                out[s.name] = rng.integers(0, 2, size=shape).astype(s.dtype)
        return out

    # -- inputs ------------------------------------------------------------------------------------

    def preprocess(self, images: np.ndarray) -> np.ndarray:
        """uint8 RGB images → the image input, as ``[models.X.images]`` declares."""
        from edgematrix.data.images import to_input

        if self.settings is None:
            raise EdgeMatrixError("the model has no image input: its inputs are seeded random values")
        dtype = next(s.dtype for s in self.specs if s.name == self.image_input)
        return to_input(images, self.settings, dtype)

    def feed(self, split: Any, index: int, input_name: str = "input") -> dict[str, np.ndarray]:
        """Sample ``index`` of ``split``: every input of the model (the image input, the others)."""
        feed = dict(split.extra[index]) if split.extra else {}
        if self.image_input:
            feed[self.image_input] = self.preprocess(split.images[index : index + 1])
        return feed

    # -- training ----------------------------------------------------------------------------------

    def train(self, model: Any, data: TaskData, config: Any, checkpoint: Path, *, progress: bool) -> TrainOutcome:
        raise ModelError(
            f"task {self.name!r} has no labels to train a model from scratch; give the trained weights: "
            "[models.X] checkpoint = 'path/to/state_dict.pt'"
        )

    def finetune(
        self, student: Any, teacher: Any, data: TaskData, config: Any, *, progress: bool, label: str
    ) -> TrainOutcome:
        """Distil ``student`` toward ``teacher``'s outputs on the calibration images (no labels)."""
        from edgematrix.train.outputs import distill_outputs

        images = np.asarray(data.train.images[0 : len(data.train)])
        r = distill_outputs(student, teacher, images, self.preprocess, config, None, progress=progress, label=label)
        return TrainOutcome(r.checkpoint, r.cache_hit, r.seconds, r.history)

    # -- the metric --------------------------------------------------------------------------------

    def score(
        self,
        outputs: Sequence[dict[str, np.ndarray]],
        split: Any,
        out_dir: Path | None,
        role: str,
        *,
        model: Any,
        reference: Sequence[dict[str, np.ndarray]] | None = None,
    ) -> TaskScore:
        """Agreement of ``outputs`` with ``reference`` (the FP32 reference's outputs on the same samples)."""
        from edgematrix.fileio import atomic_write_text
        from edgematrix.metrics.agreement import SNR_CAP_DB, output_agreement

        if reference is None:
            raise EdgeMatrixError(
                f"task {self.name!r} scores agreement with the FP32 reference: score() needs reference= "
                "(the reference's outputs on the same samples)"
            )
        if len(outputs) > len(split):
            raise EdgeMatrixError(f"{len(outputs)} outputs for a split of {len(split)} samples")
        rows = output_agreement(reference, outputs, list(reference[0]))
        extras: dict[str, float] = {
            "snr_db": min(r.snr_db for r in rows),
            "max_abs": min(max(r.max_abs for r in rows), 1e30),
            "max_rel": min(max(r.max_rel for r in rows), 1e30),
            "random_inputs": float(self.random_inputs),
        }
        for r in rows:
            k = _key(r.name)
            extras.update(
                {f"cosine_{k}": r.cosine, f"snr_db_{k}": r.snr_db, f"max_abs_{k}": min(r.max_abs, 1e30),
                 f"max_rel_{k}": min(r.max_rel, 1e30)}
            )  # fmt: skip
        accuracy = 100.0 * min(r.cosine for r in rows)
        out_file = None
        if out_dir is not None:
            out_file = out_dir / f"predictions-{role}.json"
            doc = {
                "metric": self.metric,
                "metric_of_record": accuracy,
                "inputs": "seeded random inputs" if self.random_inputs else "images",
                "files": [str(f) for f in getattr(split, "files", [])[: len(outputs)]],
                "samples": len(outputs),
                "snr_cap_db": SNR_CAP_DB,
                "outputs": {r.name: r.as_dict() for r in rows},
            }
            out_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_text(out_file, json.dumps(doc, indent=1, default=float))
        return TaskScore(accuracy, extras, out_file)

    # -- drawing -----------------------------------------------------------------------------------

    def drive(self, model_cfg: Any, frames: int, seed: int) -> np.ndarray:
        raise EdgeMatrixError(
            f"task {self.name!r} has no drawing of its outputs: `edgematrix demo` draws tasks that decode them "
            "(lane, detection, multitask, steering)"
        )

    def overlay(self, frame: np.ndarray, outputs: dict[str, np.ndarray], model: Any) -> np.ndarray:
        return self.drive(None, 0, 0)
