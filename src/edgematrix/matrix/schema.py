"""Pydantic schema of the matrix TOML files (``extra="forbid"`` everywhere)."""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Name = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
Arch = Literal["x86_64", "aarch64"]
Precision = Literal["fp32", "fp16", "int8", "fx8"]
# backend and task names are checked against their registries (edgematrix.core.registries) by the loader:
# the registries are the single source of names, plugins included
BackendName = Annotated[str, Field(pattern=r"^[a-z][a-z0-9_]*$")]
RunnerName = Literal["local", "docker", "remote", "emulated"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Target(_Strict):
    description: str
    arch: Arch
    backend: BackendName = Field(description="the primary backend: its FP32 run is the reference of record")
    backends: list[BackendName] = Field(
        default_factory=list,
        description="all backends the cell runs the same artifacts on, measured interleaved (default: [backend])",
    )
    providers: list[str] = Field(default_factory=list, description="ONNX Runtime execution providers, in order")
    precisions: list[Precision]
    device: str = Field("", description="device model, e.g. 'NVIDIA Jetson AGX Orin 64GB'")
    threads: int = Field(0, ge=0, description="intra-op threads; 0 = the cores available to the process")
    image: str = Field("", description="folder under docker/ with the target's image recipe (one folder name)")
    image_args: dict[str, str] = Field(
        default_factory=dict,
        description="pinned build args of docker/<image>/Dockerfile (base image, SDK and package versions)",
    )
    image_arch: Arch | None = Field(
        None,
        description="architecture of the image when it differs from the target's (TI's PC tools, DriveOS cross-compile: x86_64)",
    )
    gpus: bool = Field(False, description="containers of this target get the host's GPUs (--gpus all)")
    offline_image: bool = Field(
        False,
        description="the image also builds on the debootstrap base of Debian's packages (`nox -s images`, no registry)",
    )
    runner_labels: list[str] = Field(default_factory=list, description="CI runner labels that provide this target")
    runners: list[RunnerName] = Field(default_factory=lambda: list[RunnerName](["local"]))
    requires: list[str] = Field(
        default_factory=list,
        description="what the host must have: module:NAME, command:NAME, path:/abs/path or env:NAME",
    )
    extras: list[str] = Field(default_factory=list, description="pyproject extras the session installs")
    system_site_packages: bool = Field(False, description="let the session see vendor Python packages (JetPack)")

    @field_validator("image")
    @classmethod
    def _image_in_docker(cls, value: str) -> str:
        if value and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]*", value):
            raise ValueError(
                f"image {value!r} must name one folder under docker/ (letters, digits, '_', '-'), "
                "e.g. 'jetson'; a path would leave docker/"
            )
        return value

    @model_validator(mode="after")
    def _backends(self) -> Target:
        if self.backends and self.backend not in self.backends:
            raise ValueError(f"backends {self.backends} must include the primary backend {self.backend!r}")
        if len(set(self.backends)) != len(self.backends):
            raise ValueError(f"backends {self.backends} lists a backend twice")
        return self

    @property
    def all_backends(self) -> list[str]:
        """The primary backend first, then the others in the order given."""
        return [self.backend, *[b for b in self.backends if b != self.backend]]


class SyntheticData(_Strict):
    train: int = Field(600, ge=1)
    test: int = Field(150, ge=1)
    seed: int = 0


class TrainConfig(_Strict):
    """``[models.NAME.train]``: the training loop's settings every task shares. A task's own training
    parameters (UFLD's soft-label sigma and expectation-loss weight, say) go in the same table; the task
    declares and validates them (``TaskAdapter.train_params``) when the matrix is loaded, so an unknown
    key is an error naming the task's parameters."""

    model_config = ConfigDict(extra="allow", frozen=True)

    epochs: int = Field(6, ge=1)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_fraction: float = Field(0.15, ge=0, lt=1)
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: a CUDA GPU when torch sees one")
    flip: bool = Field(True, description="horizontal flips in training (the task mirrors its labels)")


#: a task or family given by import path instead of a registered name: ``"package.module:Attribute"``
IMPORT_PATH = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
TaskName = Annotated[str, Field(pattern=rf"^([a-z][a-z0-9_]*|{IMPORT_PATH})$")]
Shape = Annotated[list[int], Field(min_length=1)]


class ImagesSection(_Strict):
    """How an image becomes the model's input (the ``outputs`` task and the tasks built on it).

    An image (from the model's ``data_root`` folder, or seeded random pixels without one) is decoded as
    RGB, resized to ``size`` by ``resize``, centre-cropped to the input's height × width when ``size`` is
    larger, reordered to ``channels``, normalised as ``(pixel - mean) / std`` on 0..255 pixel values and laid
    out as ``layout``. An input of dtype uint8 takes the pixels as they are (no mean/std).
    """

    input: str = Field("", description="the input that takes the image; default: the model's only 4-D input")
    size: Annotated[list[int], Field(min_length=2, max_length=2)] | None = Field(
        None, description="[height, width] to resize to before the centre crop; default: the input's own"
    )
    resize: Literal["stretch", "letterbox", "crop"] = Field(
        "stretch",
        description="stretch: to size exactly (aspect ratio not kept); letterbox: fit inside size keeping the "
        "aspect ratio, padded with pad_value; crop: cover size keeping the aspect ratio, centre-cropped",
    )
    pad_value: int = Field(114, ge=0, le=255, description="letterbox padding, in pixel values")
    mean: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [0.0, 0.0, 0.0], description="per channel (in `channels` order), 0..255 units"
    )
    std: Annotated[list[float], Field(min_length=3, max_length=3)] = Field(
        default_factory=lambda: [255.0, 255.0, 255.0],
        description="per channel, 0..255 units; the default maps pixels to 0..1",
    )
    channels: Literal["rgb", "bgr"] = "rgb"
    layout: Literal["nchw", "nhwc"] = "nchw"
    extensions: list[str] = Field(
        default_factory=lambda: [".jpg", ".jpeg", ".png", ".bmp", ".webp"],
        description="image files read from the folder (and its subfolders), in sorted path order",
    )

    @field_validator("size")
    @classmethod
    def _positive(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and min(value) < 1:
            raise ValueError(f"size {value} must be [height, width] of positive sizes")
        return value

    @field_validator("std")
    @classmethod
    def _nonzero(cls, value: list[float]) -> list[float]:
        if any(v == 0 for v in value):
            raise ValueError(f"std {value} has a zero: pixels are divided by it")
        return value


class Model(_Strict):
    """A model of the matrix: where it comes from (exactly one of ``family``, ``factory``, ``onnx``), its
    task, inputs, data and, when edgematrix trains it, the training recipe.

    Paths (``onnx``, ``checkpoint``, ``data_root``) are relative to the folder that holds the matrix folder
    (the repository root); the loader resolves them.
    """

    description: str
    family: str | None = Field(None, description="a registered model family (built-in or plugin)")
    factory: str | None = Field(
        None,
        pattern=rf"^{IMPORT_PATH}$",
        description="'package.module:function' returning a torch.nn.Module, called with params (and input_shape "
        "when it takes one): your own module",
    )
    onnx: str | None = Field(None, min_length=1, description="an existing ONNX file: no training, no export")
    checkpoint: str | None = Field(
        None,
        min_length=1,
        description="a state dict (torch.save; loaded with weights_only=True) to start from instead of training",
    )
    task: TaskName
    dataset: Annotated[str, Field(pattern=r"^([a-z][a-z0-9_]*)?$")] = Field(
        "", description="the dataset format (tusimple, coco, scenes, driving_log, images); default: the task's"
    )
    input_shape: list[int] = Field(
        default_factory=list,
        description="the input's shape (a torch model's one input, 'input'); ONNX models: filled from input_shapes",
    )
    input_shapes: dict[str, Shape] = Field(
        default_factory=dict,
        description="ONNX models: the shape of each input by name (required for inputs with dynamic dimensions)",
    )
    images: ImagesSection = ImagesSection()
    packages: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=list,
        description="pip requirements the model's Nox sessions install beside edgematrix: your package with its "
        "factory and plugins, e.g. './mypkg' (a path relative to the repository) or 'mypkg==1.2'",
    )
    params: dict[str, int | float | str | bool] = Field(default_factory=dict)
    data_root: str = Field("", description="path to the real dataset; empty = synthetic data in the cache")
    synthetic: SyntheticData = SyntheticData()
    train: TrainConfig = TrainConfig()
    eval_images: int = Field(0, ge=0, description="cap on test images evaluated; 0 = all")

    @property
    def source(self) -> str:
        """Where the model comes from: ``family``, ``factory`` or ``onnx``."""
        return "onnx" if self.onnx else "factory" if self.factory else "family"

    @property
    def origin(self) -> str:
        """The family name, the factory's import path or the ONNX file (for people and cache keys)."""
        return str(self.onnx or self.factory or self.family)

    def shape_text(self) -> str:
        """The input shape(s) as benchmark records carry them: ``1x3x288x800``; with several inputs
        ``name:1x3x640x640,other:1x2``."""
        shapes = self.input_shapes or ({"input": self.input_shape} if self.input_shape else {})
        if len(shapes) == 1 and self.input_shape:
            return "x".join(map(str, self.input_shape))
        return ",".join(f"{n}:{'x'.join(map(str, s))}" for n, s in shapes.items())

    @model_validator(mode="after")
    def _source(self) -> Model:
        given = [k for k in ("family", "factory", "onnx") if getattr(self, k) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise ValueError(
                "give exactly one model source: family = 'name' (a registered family), factory = "
                f"'package.module:function' (your torch module) or onnx = 'path/to/model.onnx'; got {got}"
            )
        dims = [*self.input_shape, *(d for s in self.input_shapes.values() for d in s)]
        if any(d < 1 for d in dims):
            raise ValueError(
                "input_shape / input_shapes declare the shape to build and measure at: every size is >= 1 "
                f"(a dynamic dimension gets its size here), got input_shape {self.input_shape}, input_shapes "
                f"{self.input_shapes}"
            )
        if self.onnx is not None:
            weights = {"checkpoint": self.checkpoint is not None, "params": bool(self.params)}
            weights["train"] = self.train != TrainConfig()
            torch_only = [k for k, v in weights.items() if v]
            if torch_only:
                raise ValueError(
                    f"{', '.join(torch_only)}: an ONNX model is not built, trained or loaded from a checkpoint by "
                    "edgematrix (its file holds the weights); remove them, or give factory + checkpoint instead"
                )
            # both are set once resolved (input_shape: the image input's, written to config.json): consistent
            if self.input_shape and self.input_shapes and self.input_shape not in self.input_shapes.values():
                raise ValueError(
                    f"give input_shape (a one-input model) or input_shapes (by input name), not both; input_shape "
                    f"{self.input_shape} is none of input_shapes {self.input_shapes}"
                )
            return self
        if self.input_shapes:
            raise ValueError(
                f"input_shapes: a torch model ({self.source} {self.origin!r}) has one input, exported as 'input'; "
                "declare input_shape = [...] instead"
            )
        if not self.input_shape:
            raise ValueError(f"input_shape: a torch model ({self.source} {self.origin!r}) needs its input shape")
        if self.family is not None and (len(self.input_shape) != 4 or self.input_shape[:2] != [1, 3]):
            raise ValueError(f"input_shape must be [1, 3, H, W] (batch 1, RGB), got {self.input_shape}")
        if self.input_shape[0] != 1:
            raise ValueError(f"input_shape must have batch 1 (edge engines run batch 1), got {self.input_shape}")
        return self


class QuantizeSection(_Strict):
    mode: Literal["static", "dynamic"] = Field(
        "static",
        description="static: QDQ with calibrated activation ranges (PTQ); dynamic: ONNX Runtime dynamic-range "
        "quantization (int8 weights, activations quantized at run time: ConvInteger / MatMulInteger; no "
        "calibration, so method, calibration_images, percentile, activations and pad_input_channels do not apply)",
    )
    method: Literal["minmax", "entropy", "percentile"] = "percentile"
    calibration_images: int = Field(64, ge=1)
    per_channel: bool = True
    percentile: float = Field(99.999, gt=50, le=100)
    pad_input_channels: int = Field(
        4, ge=0, description="zero-pad the input convolutions' channels to this multiple before quantizing (0 = off)"
    )
    activations: Literal["auto", "symmetric", "asymmetric"] = Field(
        "auto",
        description="auto: asymmetric uint8 (U8S8, ORT CPU's fast path) on onnxruntime targets, symmetric int8 "
        "(zero points 0, TensorRT's explicit-quantization form) on tensorrt / tidl targets",
    )
    accuracy_budget: float | None = Field(
        None,
        ge=0,
        description="mixed precision: keep the most quantization-sensitive layers in float until the accuracy "
        "(points, on a held-out subset of the training split) is within this budget of FP32; unset = all INT8",
    )
    sensitivity_images: int = Field(32, ge=1, description="mixed precision: images scored per sensitivity probe")
    max_float_layers: int = Field(8, ge=0, description="mixed precision: at most this many layers stay in float")

    def symmetric_for(self, backend: str) -> bool:
        if self.activations == "auto":
            return backend != "onnxruntime"
        return self.activations == "symmetric"

    @model_validator(mode="after")
    def _dynamic(self) -> QuantizeSection:
        static_only = {"method", "calibration_images", "percentile", "activations", "pad_input_channels"}
        static_only |= {"accuracy_budget", "sensitivity_images", "max_float_layers"}
        given = sorted(static_only & self.model_fields_set)
        if self.mode == "dynamic" and given:
            raise ValueError(
                f"mode 'dynamic' quantizes activations at run time: {', '.join(given)} configure(s) static "
                "quantization; remove them (or use mode = 'static')"
            )
        return self


class LatencySection(_Strict):
    warmup: int = Field(10, ge=0)
    min_rounds: int = Field(50, ge=5)
    max_rounds: int = Field(
        20000,
        ge=5,
        description="a cap for sub-millisecond models; min_time_s decides (400 stopped a 0.3 ms model after 0.3 s, too "
        "short for the contention record's CPU-tick shares)",
    )
    min_time_s: float = Field(10.0, ge=0)
    max_time_s: float = Field(120.0, gt=0)


class PruneSection(_Strict):
    """Structured pruning (torch-pruning): latency-aware to ``speedup``× in the deployed precision, or a
    fixed ``ratio`` of the channels (``scope``: per layer or ranked across layers). Exactly one of the two."""

    speedup: float | None = Field(
        None, gt=1, description="requested p50 ratio unpruned / pruned, both in the recipe's precision"
    )
    ratio: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="fixed pruning ratio instead of a speedup: this fraction of the channels / neurons is removed "
        "(no latency search)",
    )
    scope: Literal["local", "global"] = Field(
        "local",
        description="with ratio: local removes the ratio from every layer (per-layer ranking); global ranks the "
        "channels of all layers together and removes the ratio of the total (no layer loses more than "
        "max_layer_ratio)",
    )
    max_layer_ratio: float = Field(
        0.8, gt=0, lt=1, description="scope = 'global': the largest fraction any one layer loses"
    )
    round_to: int = Field(8, ge=1, description="channel counts after pruning are multiples of this")
    ignored_layers: list[str] = Field(
        default_factory=lambda: ["pool", "cls"], description="modules (dotted names) whose output channels stay"
    )
    importance: Literal["magnitude", "fpgm", "lamp"] = "magnitude"
    tolerance: float = Field(0.10, gt=0, lt=1, description="width of the landing range (see bound)")
    bound: Literal["at_least", "nearest"] = Field(
        "at_least",
        description="at_least: land in [speedup, speedup × (1 + tolerance)] (N× is a floor); "
        "nearest: land in speedup × (1 ± tolerance)",
    )
    max_probes: int = Field(8, ge=1, le=50)
    max_ratio: float = Field(0.9, gt=0, lt=1, description="largest uniform pruning ratio tried")
    pairs: int = Field(
        8,
        ge=3,
        description="paired blocks (unpruned and pruned in the same interleaved rounds) per probe; its speedup is "
        "the median of the blocks' ratios, with a bootstrap interval",
    )
    remeasure: int = Field(
        2,
        ge=0,
        description="more batches of `pairs` blocks for a probe inside the range whose interval crosses its edge",
    )
    confidence: float = Field(0.9, ge=0.5, lt=1, description="a probe lands when this interval lies inside the range")
    probe_rounds: int = Field(30, ge=5, description="latency rounds per paired block (at least)")
    probe_min_time_s: float = Field(2.0, ge=0, description="seconds of latency rounds per paired block (at least)")

    @model_validator(mode="after")
    def _one_target(self) -> PruneSection:
        if (self.speedup is None) == (self.ratio is None):
            got = "both" if self.speedup is not None else "neither"
            raise ValueError(
                f"give exactly one of speedup (latency-aware search) and ratio (fixed fraction of channels); got {got}"
            )
        set_ = self.model_fields_set
        if self.speedup is not None:
            fixed_only = sorted({"scope", "max_layer_ratio"} & set_)
            if fixed_only:
                raise ValueError(
                    f"{', '.join(fixed_only)} apply to a fixed ratio; the latency-aware search prunes every layer "
                    "by the same ratio: remove them or give ratio instead of speedup"
                )
        else:
            search = {"tolerance", "bound", "max_probes", "max_ratio", "pairs", "remeasure", "confidence"}
            search_only = sorted((search | {"probe_rounds", "probe_min_time_s"}) & set_)
            if search_only:
                raise ValueError(
                    f"{', '.join(search_only)} configure the latency-aware search (speedup); a fixed ratio "
                    "does not search: remove them"
                )
            if self.scope == "local" and "max_layer_ratio" in set_:
                raise ValueError("max_layer_ratio bounds global pruning; with scope = 'local' every layer loses ratio")
            ratio = float(self.ratio or 0.0)
            if self.scope == "global" and self.max_layer_ratio < ratio:
                raise ValueError(
                    f"max_layer_ratio {self.max_layer_ratio} is below ratio {ratio}: global pruning could not "
                    "remove the ratio"
                )
        return self


class FinetuneSection(_Strict):
    """Fine-tuning by knowledge distillation from the unpruned FP32 model (plus the task loss)."""

    epochs: int = Field(2, ge=1)
    batch_size: int = Field(8, ge=1)
    lr: float = Field(5e-4, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    alpha: float = Field(0.5, ge=0, le=1, description="weight of the distillation loss; 1 - alpha weighs the task loss")
    temperature: float = Field(2.0, gt=0, description="softmax temperature of the distillation loss")
    seed: int = 0
    amp: Literal["auto", "bf16", "off"] = "auto"


class QatSection(FinetuneSection):
    """Quantization-aware fine-tuning (NVIDIA ModelOpt fake quantization), distilled from the FP32 model."""

    calibration_images: int = Field(32, ge=1, description="images calibrating the fake quantizers before training")
    amp: Literal["auto", "bf16", "off"] = "off"
    export_tolerance: float = Field(
        1e-2,
        gt=0,
        description="gate qat_export_matches_torch: max |ONNX Runtime QDQ - torch fake-quant| / max |torch| "
        "(a few int8 rounding steps, not a broken export)",
    )


class SubgraphPlacement(_Strict):
    """Precision and placement of one subgraph of a split model."""

    precision: Literal["fp32", "fp16", "int8"] = "fp32"
    device: str = Field(
        "cpu", pattern=r"^(cpu|gpu|dla[0-9])$", description="where it runs: cpu, gpu, dla0/dla1 (TensorRT DLA core)"
    )
    threads: int = Field(0, ge=0, description="intra-op threads of this stage on a CPU; 0 = the target's setting")


class SplitSection(_Strict):
    """Split a multi-head model into encoder + head subgraphs, each with its own precision and placement."""

    encoder: SubgraphPlacement = SubgraphPlacement()
    heads: dict[str, SubgraphPlacement] = Field(
        default_factory=dict, description="per head, keyed by the model's output name; others get default_head"
    )
    default_head: SubgraphPlacement = SubgraphPlacement()
    calibration_images: int = Field(
        64, ge=1, description="INT8 heads are calibrated on the encoder's features of this many images (cached)"
    )
    pipeline: bool = Field(True, description="also run encoder(t+1) overlapped with heads(t) and report throughput")
    frames: int = Field(96, ge=8, description="frames streamed for the pipelined vs sequential throughput")

    def placements(self, heads: list[str]) -> dict[str, SubgraphPlacement]:
        return {"encoder": self.encoder, **{h: self.heads.get(h, self.default_head) for h in heads}}

    def precisions(self) -> set[str]:
        return {self.encoder.precision, self.default_head.precision, *(p.precision for p in self.heads.values())}


class Recipe(_Strict):
    description: str
    precision: Precision
    quantize: QuantizeSection | None = None
    prune: PruneSection | None = None
    finetune: FinetuneSection | None = None
    qat: QatSection | None = None
    split: SplitSection | None = None
    latency: LatencySection = LatencySection()
    steps: dict[Name, dict[str, int | float | str | bool | list[int | float | str | bool]]] = Field(
        default_factory=dict,
        description="settings of plugin recipe steps (entry-point group edgematrix.recipe_steps), by step name: "
        "[recipes.X.steps.my_step]; a plugin step's applies() looks for its name here",
    )

    @model_validator(mode="after")
    def _quant(self) -> Recipe:
        if self.precision in ("int8", "fx8") and self.quantize is None:
            raise ValueError(f"precision {self.precision!r} needs a [quantize] section (method, calibration_images)")
        if self.precision in ("fp32", "fp16") and self.quantize is not None:
            raise ValueError(f"precision {self.precision!r} does not quantize; remove the [quantize] section")
        if self.finetune is not None and self.prune is None:
            raise ValueError("finetune: distillation fine-tunes a pruned model; add a [prune] section or remove it")
        if self.qat is not None:
            if self.precision != "int8":
                raise ValueError(f"qat: QAT produces an INT8 model; precision must be 'int8', not {self.precision!r}")
            if self.prune is not None:
                raise ValueError("qat: QAT of a pruned model is not supported; use prune + [quantize] (PTQ)")
        if self.split is not None:
            if self.prune is not None or self.qat is not None:
                raise ValueError("split: a split recipe places subgraphs of the FP32 model; drop [prune] / [qat]")
            lowest = next(p for p in ("int8", "fp16", "fp32") if p in self.split.precisions())
            if self.precision != lowest:
                raise ValueError(
                    f"split: the lowest subgraph precision is {lowest!r}, so the recipe's precision must be "
                    f"{lowest!r}, not {self.precision!r}"
                )
        if self.quantize is not None and self.quantize.mode == "dynamic":
            if self.precision != "int8":
                raise ValueError(
                    f"quantize.mode 'dynamic' produces an INT8 model; precision must be 'int8', not {self.precision!r}"
                )
            others = [k for k in ("prune", "qat", "split") if getattr(self, k) is not None]
            if others:
                raise ValueError(
                    f"quantize.mode 'dynamic' quantizes the FP32 model alone; remove [{'], ['.join(others)}] "
                    "(pruning and QAT deploy through static INT8)"
                )
        if self.quantize is not None and self.quantize.accuracy_budget is not None:
            if self.qat is not None:
                raise ValueError("quantize.accuracy_budget: mixed precision applies to PTQ, not to a [qat] recipe")
            if self.prune is not None:
                raise ValueError("quantize.accuracy_budget: mixed precision of a pruned model is not supported")
        return self


class Gates(_Strict):
    accuracy_drop_vs_reference: float = Field(
        0.5, ge=0, description="points the candidate may lose vs its FP32 reference"
    )
    accuracy_drop_vs_baseline: float = Field(
        1.0, ge=0, description="points the candidate may lose vs the stored baseline"
    )
    latency_regression: float = Field(
        0.10, ge=0, description="fraction by which candidate/reference p50 may exceed the baseline's ratio"
    )
    min_accuracy: float = Field(0.0, ge=0, le=100, description="absolute floor for the candidate's accuracy (points)")
    latency_min_effect: float = Field(
        0.05, ge=0, lt=1, description="statistical latency gate: smallest slowdown reported as a regression (5% = 0.05)"
    )
    latency_confidence: float = Field(0.95, gt=0.5, lt=1, description="confidence of the latency gate's interval")


class CellSpec(_Strict):
    target: Name
    model: Name
    recipes: list[Name] = Field(min_length=1)
    gates: Gates | None = None
    description: str = ""
    name: str = Field(
        "{target}_{recipe}",
        pattern=r"^[a-z0-9_]*(\{(target|model|recipe)\}[a-z0-9_]*)+$",
        description="session name pattern; cells of a second model on a target name it: {target}_{model}_{recipe}",
    )
    schedule: Literal["pull_request", "nightly"] = Field(
        "pull_request",
        description="when CI runs these cells: on every pull request, or only in the nightly full-matrix run",
    )


class Defaults(_Strict):
    gates: Gates = Gates()


class MatrixFile(_Strict):
    """One TOML file; the loader merges all files of the matrix folder."""

    targets: dict[Name, Target] = Field(default_factory=dict)
    models: dict[Name, Model] = Field(default_factory=dict)
    recipes: dict[Name, Recipe] = Field(default_factory=dict)
    cells: list[CellSpec] = Field(default_factory=list)
    defaults: Defaults | None = None
