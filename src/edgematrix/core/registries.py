"""The registries of every extension axis, and the names of their built-ins.

The names live here, in the lowest layer, so that the matrix schema validates against the registries
(the single source of names) without importing a model, a runtime or a task. Each built-in is a
``"module:attribute"`` string, imported when first asked for; a plugin registers through its
distribution's entry points in the group named below (see :mod:`edgematrix.registry`).
"""

from __future__ import annotations

from typing import Any

from edgematrix.registry import Registry

#: model families: ``factory(input_shape, **params) -> torch.nn.Module``
families: Registry[Any] = Registry(
    "model family",
    builtin={
        "ufld_v2": "edgematrix.models:build_ufld_v2",
        "pilotnet": "edgematrix.models:build_pilotnet",
        "multitask_seg_depth": "edgematrix.models:build_multitask_seg_depth",
        "ssdlite": "edgematrix.models:build_ssdlite",
    },
    group="edgematrix.families",
)

#: tasks: a :class:`edgematrix.tasks.base.TaskAdapter` subclass
tasks: Registry[Any] = Registry(
    "task",
    builtin={
        "lane": "edgematrix.tasks.lane:LaneTask",
        "detection": "edgematrix.tasks.detection:DetectionTask",
        "multitask": "edgematrix.tasks.multitask:MultiTaskTask",
        "steering": "edgematrix.tasks.steering:SteeringTask",
        "outputs": "edgematrix.tasks.outputs:OutputsTask",
    },
    group="edgematrix.tasks",
)

#: backends: a :class:`edgematrix.backends.base.Runner` subclass
backends: Registry[Any] = Registry(
    "backend",
    builtin={
        "onnxruntime": "edgematrix.backends.onnxruntime.runner:OnnxrtRunner",
        "openvino": "edgematrix.backends.openvino.runner:OpenvinoRunner",
        "torch": "edgematrix.backends.torch.runner:TorchRunner",
        "tensorrt": "edgematrix.backends.tensorrt.runner:TensorrtRunner",
        "tidl": "edgematrix.backends.tidl.runner:TidlRunner",
        "trt_cpp": "edgematrix.backends.trt_cpp.runner:TrtCppRunner",
        "split": "edgematrix.backends.split.runner:SplitRunner",
    },
    group="edgematrix.backends",
)

ALL = {"families": families, "tasks": tasks, "backends": backends}

#: recipe steps: a :class:`edgematrix.pipeline.steps.base.RecipeStep` subclass
recipe_steps: Registry[Any] = Registry(
    "recipe step",
    builtin={
        "prune": "edgematrix.pipeline.steps.prune:PruneStep",
        "prune_ratio": "edgematrix.pipeline.steps.prune_ratio:FixedRatioPruneStep",
        "dynamic_int8": "edgematrix.pipeline.steps.dynamic:DynamicInt8Step",
        "qat": "edgematrix.pipeline.steps.qat:QatStep",
        "ptq": "edgematrix.pipeline.steps.quantize:PtqStep",
        "mixed_precision": "edgematrix.pipeline.steps.mixed:MixedPrecisionStep",
        "fx8": "edgematrix.pipeline.steps.fx8:Fx8Step",
        "fp16": "edgematrix.pipeline.steps.fp16:Fp16Step",
        "split": "edgematrix.pipeline.steps.split:SplitStep",
    },
    group="edgematrix.recipe_steps",
)

ALL["recipe_steps"] = recipe_steps
