"""TIDL compile options as TI's onnxruntime-tidl build takes them (``TIDLCompilationProvider``).

Option keys are TI's own, from TexasInstruments/edgeai-tidl-tools ``examples/osrt_python``
(``common_utils.py``: ``required_options`` / ``optional_options``; ``ort/onnxrt_ep.py``: compile with
``providers=['TIDLCompilationProvider', 'CPUExecutionProvider']``, run with
``['TIDLExecutionProvider', 'CPUExecutionProvider']``, both with ``provider_options=[options, {}]``)
and ``docs/tidl_fsg_quantization.md``. The values of ``advanced_options:quantization_scale_type``
are those of TI's edgeai-benchmark (``QUANTScaleType``): 0 non-power-of-2 (default), 1 power-of-2
(recommended for TDA4VM), 3 pre-quantized TFLite, 4 asymmetric (not on TDA4VM / AM68PA).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import BackendError

TIDL_TOOLS_ENV = "TIDL_TOOLS_PATH"
TENSOR_BITS = (8, 16, 32)
ACCURACY_LEVELS = (0, 1, 9)  # 0 simple calibration, 1 advanced bias calibration, 9 expert (advanced_options:*)
QUANTIZATION_SCALE_TYPES = {0: "non-power-of-2", 1: "power-of-2", 3: "pre-quantized TFLite", 4: "asymmetric"}
DEBUG_LEVELS = range(0, 7)

#: option keys TI documents besides the typed fields (passed through ``extra`` after a key check)
KNOWN_EXTRA_KEYS = frozenset(
    {
        "platform",
        "version",
        "model_type",
        "priority",
        "max_pre_empt_delay",
        "ti_internal_nc_flag",
        "advanced_options:high_resolution_optimization",
        "advanced_options:pre_batchnorm_fold",
        "advanced_options:activation_clipping",
        "advanced_options:weight_clipping",
        "advanced_options:bias_calibration",
        "advanced_options:channel_wise_quantization",
        "advanced_options:quant_params_proto_path",
        "advanced_options:inference_mode",
        "advanced_options:num_cores",
        "object_detection:meta_layers_names_list",
        "object_detection:meta_arch_type",
        "object_detection:confidence_threshold",
        "object_detection:nms_threshold",
        "object_detection:top_k",
        "object_detection:keep_top_k",
    }
)


@dataclass(frozen=True)
class TidlCompileOptions:
    """Typed TIDL compile options; :meth:`provider_options` gives TI's key/value dict.

    - ``artifacts_folder``: where compilation writes the TIDL network / IO binaries and inference
      reads them.
    - ``tidl_tools_path``: TI's tidl_tools folder (default ``$TIDL_TOOLS_PATH``).
    - ``tensor_bits``: 8 (TDA4 deployment), 16 or 32 (float reference run of the tools).
    - ``accuracy_level``: 0 simple calibration, 1 advanced bias calibration (TI: 50+ frames help),
      9 expert mode (the ``advanced_options:*`` clipping switches in ``extra`` apply).
    - ``calibration_frames`` / ``calibration_iterations``: ``advanced_options:calibration_*``.
    - ``quantization_scale_type``: see the module docstring (TDA4VM: 0 or 1, symmetric only).
    - ``prequantized_model``: the ONNX is QDQ (``advanced_options:prequantized_model`` = 1): TIDL
      takes its scales instead of calibrating.
    - ``deny_list_layer_type`` / ``deny_list_layer_name``: ops / nodes kept on the ARM (ONNX Runtime CPU).
    - ``output_feature_16bit_names_list`` / ``params_16bit_names_list``: manual mixed precision;
      ``mixed_precision_factor``: automated mixed precision (-1 off).
    """

    artifacts_folder: Path
    tidl_tools_path: Path | None = None
    tensor_bits: int = 8
    debug_level: int = 0
    accuracy_level: int = 1
    calibration_frames: int = 50
    calibration_iterations: int = 50
    max_num_subgraphs: int = 16
    quantization_scale_type: int = 0
    prequantized_model: bool = False
    add_data_convert_ops: int | None = None
    deny_list_layer_type: tuple[str, ...] = ()
    deny_list_layer_name: tuple[str, ...] = ()
    output_feature_16bit_names_list: tuple[str, ...] = ()
    params_16bit_names_list: tuple[str, ...] = ()
    mixed_precision_factor: float | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tensor_bits not in TENSOR_BITS:
            raise BackendError(f"tensor_bits must be one of {TENSOR_BITS}, got {self.tensor_bits}")
        if self.accuracy_level not in ACCURACY_LEVELS:
            raise BackendError(f"accuracy_level must be one of {ACCURACY_LEVELS}, got {self.accuracy_level}")
        if self.debug_level not in DEBUG_LEVELS:
            raise BackendError(f"debug_level must be 0..6, got {self.debug_level}")
        if self.quantization_scale_type not in QUANTIZATION_SCALE_TYPES:
            names = ", ".join(f"{k} ({v})" for k, v in QUANTIZATION_SCALE_TYPES.items())
            raise BackendError(f"quantization_scale_type must be one of {names}; got {self.quantization_scale_type}")
        for name in ("calibration_frames", "calibration_iterations", "max_num_subgraphs"):
            if getattr(self, name) < 1:
                raise BackendError(f"{name} must be >= 1, got {getattr(self, name)}")
        unknown = sorted(k for k in self.extra if k not in KNOWN_EXTRA_KEYS)
        if unknown:
            raise BackendError(
                f"unknown TIDL option(s) {unknown} in extra; typed fields cover the common ones, known extra keys: "
                + ", ".join(sorted(KNOWN_EXTRA_KEYS))
            )

    def tools_path(self) -> Path:
        """``tidl_tools_path`` or ``$TIDL_TOOLS_PATH``; an error saying how to get TI's tools otherwise."""
        path = self.tidl_tools_path or (Path(os.environ[TIDL_TOOLS_ENV]) if os.environ.get(TIDL_TOOLS_ENV) else None)
        if path is None or not Path(path).is_dir():
            where = f"{str(path)!r} is not a folder" if path is not None else f"${TIDL_TOOLS_ENV} is not set"
            raise BackendError(
                f"TIDL tools not found ({where}). Compiling for TI needs TI's tidl_tools: run edgeai-tidl-tools' "
                f"setup.sh (it downloads tidl_tools for your SOC) and export {TIDL_TOOLS_ENV} to that folder, or use the "
                "TI image / device runner (--runner docker or --runner remote)"
            )
        return Path(path)

    def provider_options(self, *, tools_path: Path | None = None) -> dict[str, Any]:
        """The dict for ``TIDLCompilationProvider`` (TI's key names)."""
        options: dict[str, Any] = {
            "tidl_tools_path": str(tools_path or self.tools_path()),
            "artifacts_folder": str(self.artifacts_folder),
            "tensor_bits": self.tensor_bits,
            "debug_level": self.debug_level,
            "max_num_subgraphs": self.max_num_subgraphs,
            "accuracy_level": self.accuracy_level,
            "deny_list:layer_type": ", ".join(self.deny_list_layer_type),
            "deny_list:layer_name": ", ".join(self.deny_list_layer_name),
            "advanced_options:calibration_frames": self.calibration_frames,
            "advanced_options:calibration_iterations": self.calibration_iterations,
            "advanced_options:quantization_scale_type": self.quantization_scale_type,
            "advanced_options:output_feature_16bit_names_list": ", ".join(self.output_feature_16bit_names_list),
            "advanced_options:params_16bit_names_list": ", ".join(self.params_16bit_names_list),
        }
        if self.prequantized_model:
            options["advanced_options:prequantized_model"] = 1
        if self.add_data_convert_ops is not None:
            options["advanced_options:add_data_convert_ops"] = self.add_data_convert_ops
        if self.mixed_precision_factor is not None:
            options["advanced_options:mixed_precision_factor"] = self.mixed_precision_factor
        options.update(self.extra)
        return options

    def inference_options(self, *, tools_path: Path | None = None) -> dict[str, Any]:
        """The dict for ``TIDLExecutionProvider``: the artifacts (plus the tools on an x86 host, which
        runs TIDL's host emulation; a TDA4 board has the runtime in its firmware)."""
        options: dict[str, Any] = {"artifacts_folder": str(self.artifacts_folder), "debug_level": self.debug_level}
        if tools_path is not None:
            options["tidl_tools_path"] = str(tools_path)
        return options
