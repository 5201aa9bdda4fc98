"""Outputs of a TensorRT engine through trtexec: ``--loadInputs`` files in, ``--exportOutput`` JSON out.

trtexec (``samples/common/sampleReporting.cpp``, ``exportJSONOutput``) writes one object per output::

    [
      { "name" : "probs"
      , "dimensions" : "1x5"
      , "values" : [ 0.0435101, 0.0340782, 0.0555826, 0.195444, 0.671385 ]
      }
    ]

``dimensions`` is the context's tensor shape joined with ``x``; ``values`` are printed with the
stream's default format (six significant digits), so a float output read back differs from the
engine's by up to 5e-7 relative, and non-finite values appear as ``inf`` / ``nan`` (not JSON: read
here). ``--loadInputs=name:file`` takes the raw C-order bytes of an input (NVIDIA/TensorRT issue
#850: "raw binary encoded files"), which :func:`write_input_file` writes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from edgematrix.errors import BackendError

#: JSON has no inf / nan; trtexec prints C++'s spelling of them
_NON_FINITE = re.compile(r"(?<![\w.\"])(-?)(inf|nan)(?![\w\"])", re.IGNORECASE)


def _finite_json(text: str) -> str:
    def spell(m: re.Match[str]) -> str:
        return f"{m.group(1)}Infinity" if m.group(2).lower() == "inf" else "NaN"  # Python's json has no -NaN

    return _NON_FINITE.sub(spell, text)


def parse_dimensions(text: str) -> tuple[int, ...]:
    """``"1x3x8x8"`` → (1, 3, 8, 8); ``""`` (a scalar) → ()."""
    text = text.strip()
    if not text:
        return ()
    try:
        dims = tuple(int(d) for d in text.split("x"))
    except ValueError:
        raise BackendError(f"trtexec --exportOutput: dimensions {text!r} are not NxMx...") from None
    if any(d < 0 for d in dims):
        raise BackendError(f"trtexec --exportOutput: dimensions {text!r} are not known sizes")
    return dims


def parse_export_output(data: str | Path, dtypes: Mapping[str, np.dtype] | None = None) -> dict[str, np.ndarray]:
    """The output arrays of a ``--exportOutput`` file (or its text), in file order.

    ``dtypes`` gives an output's dtype (the engine's; float32 when not given): values are parsed as
    printed and cast to it.
    """
    text = data.read_text() if isinstance(data, Path) else data
    try:
        records = json.loads(_finite_json(text))
    except json.JSONDecodeError as exc:
        raise BackendError(f"trtexec --exportOutput is not JSON: {exc}") from None
    if not isinstance(records, list):
        raise BackendError(f"trtexec --exportOutput must be a list of outputs, got {type(records).__name__}")
    outputs: dict[str, np.ndarray] = {}
    for i, record in enumerate(records):
        if not isinstance(record, dict) or not {"name", "dimensions", "values"} <= set(record):
            raise BackendError(f"trtexec --exportOutput record {i} lacks name / dimensions / values: {record!r:.200}")
        name = str(record["name"])
        shape = parse_dimensions(str(record["dimensions"]))
        values = record["values"]
        if not isinstance(values, list) or any(isinstance(v, bool) or not isinstance(v, int | float) for v in values):
            raise BackendError(f"trtexec --exportOutput: values of {name!r} must be a list of numbers")
        expected = int(np.prod(shape, dtype=np.int64))
        if len(values) != expected:
            raise BackendError(
                f"trtexec --exportOutput: {name!r} has {len(values)} values for dimensions {list(shape)} ({expected})"
            )
        dtype = np.dtype((dtypes or {}).get(name, np.float32))
        outputs[name] = np.asarray(values, dtype=np.float64).astype(dtype).reshape(shape)
    return outputs


def write_input_file(array: np.ndarray, path: Path) -> Path:
    """``array``'s raw bytes in C order, as ``--loadInputs`` reads them."""
    np.ascontiguousarray(array).tofile(path)
    return path
