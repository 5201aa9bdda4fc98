#!/usr/bin/env python3
"""A stand-in for NVIDIA's ``trtexec`` used by the tests: it REPLAYS recorded output of real trtexec
runs (tests/backends/tensorrt/data, sources in PROVENANCE.md); it computes nothing.

- ``--help``: prints the first line of a real ``trtexec --help`` (version banner), version taken from
  ``$FAKE_TRTEXEC_BANNER`` (default: TensorRT 10.6's banner).
- otherwise: appends its argv (JSON, one line) to ``$FAKE_TRTEXEC_LOG``; copies the recorded
  layer info / times / profile files to the ``--exportLayerInfo`` / ``--exportTimes`` /
  ``--exportProfile`` paths; writes a placeholder engine to ``--saveEngine``; prints the recorded
  performance summary unless ``--skipInference`` / ``--buildOnly``; exits with
  ``$FAKE_TRTEXEC_EXIT`` (default 0) after printing ``$FAKE_TRTEXEC_ERROR`` when set.
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
        Path(engine).write_bytes(b"fake engine written by tests/backends/tensorrt/fake_trtexec.py")
    if "--skipInference" not in sys.argv and "--buildOnly" not in sys.argv:
        print((DATA / os.environ.get("FAKE_TRTEXEC_STDOUT", "issue4177_2024.stdout.txt")).read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
