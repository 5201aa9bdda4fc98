#!/usr/bin/env python3
"""A stand-in for NVIDIA's ``trtexec`` used by the tests: it REPLAYS recorded output of real trtexec
runs (tests/backends/tensorrt/data, sources in PROVENANCE.md) and builds no engine.

- ``--help``: prints the first line of a real ``trtexec --help`` (version banner), version taken from
  ``$FAKE_TRTEXEC_BANNER`` (default: TensorRT 10.6's banner).
- otherwise: appends its argv (JSON, one line) to ``$FAKE_TRTEXEC_LOG``; copies the recorded
  layer info / times / profile files to the ``--exportLayerInfo`` / ``--exportTimes`` /
  ``--exportProfile`` paths; writes a STAND-IN engine to ``--saveEngine`` (the line
  ``EDGEMATRIX STAND-IN ENGINE 1``, a JSON header with the precision the flags ask for, then the
  ONNX model's bytes: what ``standin/tensorrt`` deserializes); prints the recorded performance
  summary unless ``--skipInference`` / ``--buildOnly``; exits with ``$FAKE_TRTEXEC_EXIT``
  (default 0) after printing ``$FAKE_TRTEXEC_ERROR`` when set.
- ``--loadEngine=E --loadInputs=name:file,... --exportOutput=F``: reads the raw input files, computes
  the stand-in engine's ONNX model with ONNX Runtime (float outputs of an FP16 engine rounded to
  float16, as the stand-in tensorrt module does) and writes F in the layout of trtexec's
  ``exportJSONOutput`` (samples/common/sampleReporting.cpp), values printed with six significant
  digits like a default C++ stream. The only thing this fake computes.
"""

import json
import os
import shutil
import sys
from pathlib import Path

DATA = Path(os.environ["FAKE_TRTEXEC_DATA"])
BANNER = os.environ.get(
    "FAKE_TRTEXEC_BANNER", "&&&& RUNNING TensorRT.trtexec [TensorRT v100600] [b26] # trtexec --help"
)


def value(flag: str) -> str | None:
    for arg in sys.argv[1:]:
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
    return None


def _split_names(spec: str) -> dict[str, str]:
    """``'a:b':x.bin,c:y.bin`` → {"a:b": "x.bin", "c": "y.bin"} (trtexec's quoting of names with ':' or ',')."""
    out, rest = {}, spec
    while rest:
        if rest.startswith("'"):
            name, rest = rest[1:].split("'", 1)
            rest = rest[1:]  # the ':'
        else:
            name, rest = rest.split(":", 1)
        path, _, rest = rest.partition(",")
        out[name] = path
    return out


def export_output(engine: str, load_inputs: str, shapes: str, out: str) -> None:
    import numpy as np
    import onnxruntime as ort

    data = Path(engine).read_bytes()
    magic = b"EDGEMATRIX STAND-IN ENGINE 1\n"
    assert data.startswith(magic), "not a stand-in engine"
    header, _, model = data[len(magic) :].partition(b"\n")
    precision = json.loads(header)["precision"]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    given = {n: [int(d) for d in s.split("x")] for n, s in (p.split(":") for p in shapes.split(",") if p)}
    types = {"tensor(float)": np.float32, "tensor(int64)": np.int64, "tensor(int32)": np.int32}
    files = _split_names(load_inputs)
    feed = {}
    for i in session.get_inputs():
        shape = given.get(i.name) or list(i.shape)
        feed[i.name] = np.fromfile(files[i.name], dtype=types[i.type]).reshape(shape)
    names = [o.name for o in session.get_outputs()]
    lines, sep = ["["], "  "
    for name, value in zip(names, session.run(names, feed), strict=True):
        if precision == "fp16" and value.dtype == np.float32:
            value = value.astype(np.float16).astype(np.float32)
        lines.append(f'{sep}{{ "name" : "{name}"')
        sep = ", "
        lines.append(f'  {sep}"dimensions" : "{"x".join(str(d) for d in value.shape)}"')
        lines.append(f'  {sep}"values" : [ {sep.join(format(float(v), "g") for v in value.ravel())} ]')
        lines.append("  }")
    lines.append("]")
    Path(out).write_text("\n".join(lines) + "\n")


def main() -> int:
    if "--help" in sys.argv[1:]:
        print(BANNER)
        print("=== Model Options ===")
        return 0
    log = os.environ.get("FAKE_TRTEXEC_LOG")
    if log:
        with open(log, "a", encoding="utf-8") as f:
            f.write(json.dumps(sys.argv[1:]) + "\n")
    if os.environ.get("FAKE_TRTEXEC_ERROR"):
        print(os.environ["FAKE_TRTEXEC_ERROR"], file=sys.stderr)
    code = int(os.environ.get("FAKE_TRTEXEC_EXIT", "0"))
    if code:
        return code
    files = {
        "--exportLayerInfo": os.environ.get("FAKE_TRTEXEC_LAYERS", "trt8_mobilenet_qat.layers.json"),
        "--exportTimes": os.environ.get("FAKE_TRTEXEC_TIMES", "trt8_mobilenet_qat.times.json"),
        "--exportProfile": os.environ.get("FAKE_TRTEXEC_PROFILE", "trt8_mobilenet_qat.profile.json"),
    }
    for flag, name in files.items():
        target = value(flag)
        if target:
            shutil.copyfile(DATA / name, target)
    engine = value("--saveEngine")
    if engine:
        argv = sys.argv[1:]
        precision = "int8" if "--int8" in argv else "fp16" if "--fp16" in argv else "fp32"
        header = json.dumps({"precision": precision, "onnx": value("--onnx")}).encode()
        onnx_bytes = Path(value("--onnx")).read_bytes()
        Path(engine).write_bytes(b"EDGEMATRIX STAND-IN ENGINE 1\n" + header + b"\n" + onnx_bytes)
    if value("--exportOutput"):
        export_output(
            value("--loadEngine"), value("--loadInputs") or "", value("--shapes") or "", value("--exportOutput")
        )
    if "--skipInference" not in sys.argv and "--buildOnly" not in sys.argv:
        print((DATA / os.environ.get("FAKE_TRTEXEC_STDOUT", "issue4177_2024.stdout.txt")).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
