"""A small x86 CPU cell locally and inside its container, alternated, in one job.

    PYTHONPATH=src python benchmarks/container_vs_local.py [--pairs 3] [--workdir /tmp/cvl]

Runs ``x86_cpu_int8s`` (a small UFLD-v2: width 32, 160×416, trained once into the work folder's
cache) with ``--runner local`` and ``--runner docker --offline-base`` alternately (local, docker,
docker, local, ...), all on the same cache, so both run the same ONNX files. Prints per run the
ONNX Runtime FP32 and INT8 p50 and accuracy, then the container/local ratio of the medians of
those p50s (target 0.9-1.1) and whether accuracies are equal. Needs a Docker engine; the image is
built on the offline base when missing (that time is reported, not mixed into the ratio).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

from edgematrix.cli import main as cli

REPO = Path(__file__).resolve().parents[1]
CELL = "x86_cpu_int8s"
MATRIX = """
[models.ufld_small]
description = "UFLD-v2 small (width 32, 160x416), for the container benchmark"
family = "ufld_v2"
task = "lane"
dataset = "tusimple"
input_shape = [1, 3, 160, 416]

[models.ufld_small.params]
width = 32
mlp_mid_dim = 128

[models.ufld_small.synthetic]
train = 120
test = 40
seed = 5

[models.ufld_small.train]
epochs = 2
batch_size = 8

[recipes.int8s]
description = "INT8 PTQ (small benchmark)"
precision = "int8"

[recipes.int8s.quantize]
method = "minmax"
calibration_images = 16

[recipes.int8s.latency]
warmup = 10
min_rounds = 200
max_rounds = 2000
min_time_s = 8
max_time_s = 60

[[cells]]
target = "x86_cpu"
model = "ufld_small"
recipes = ["int8s"]

[cells.gates]
accuracy_drop_vs_reference = 100.0
min_accuracy = 0.0
"""


def _run(work: Path, runner: str, tag: str) -> dict[str, dict[str, float]]:
    results = work / f"results-{tag}"
    args = ["--matrix", str(work / "matrix"), "run", CELL, "--results", str(results), "--cache", str(work / "cache"),
            "--no-progress", "--runner", runner]  # fmt: skip
    if runner == "docker":
        args.append("--offline-base")
    code = cli(args)
    if code != 0:
        sys.exit(f"{runner} run exited with {code}")
    doc = json.loads((results / CELL / "benchmark.json").read_text())
    out = {}
    for b in doc["benchmarks"]:
        e = b["extra_info"]
        if e["backend"] == "onnxruntime":
            out[e["role"]] = {"p50_ms": b["stats"]["median"] * 1e3, "accuracy": e["accuracy"]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--pairs", type=int, default=3)
    p.add_argument("--workdir", type=Path, default=Path("/tmp/edgematrix-container-vs-local"))
    args = p.parse_args()
    work = args.workdir
    (work / "matrix").mkdir(parents=True, exist_ok=True)
    (work / "matrix" / "targets.toml").write_text((REPO / "matrix" / "targets.toml").read_text())
    (work / "matrix" / "small.toml").write_text(MATRIX)

    t0 = time.perf_counter()
    _run(work, "local", "warm-local")  # trains and exports into the cache (not measured)
    t1 = time.perf_counter()
    _run(work, "docker", "warm-docker")  # builds the image if missing (not measured)
    t2 = time.perf_counter()
    print(f"warm-up: local {t1 - t0:.0f} s (training, export), docker {t2 - t1:.0f} s (image build if missing)")

    runs: dict[str, list[dict[str, dict[str, float]]]] = {"local": [], "docker": []}
    order = [("local", "docker") if i % 2 == 0 else ("docker", "local") for i in range(args.pairs)]
    for i, pair in enumerate(order):
        for runner in pair:
            r = _run(work, runner, f"{runner}-{i}")
            runs[runner].append(r)
            print(f"pair {i} {runner:<6}: FP32 p50 {r['reference']['p50_ms']:.3f} ms, INT8 p50 "
                  f"{r['candidate']['p50_ms']:.3f} ms, accuracy {r['reference']['accuracy']:.2f} / "
                  f"{r['candidate']['accuracy']:.2f}")  # fmt: skip

    print()
    for role, label in (("reference", "FP32"), ("candidate", "INT8")):
        local = statistics.median(r[role]["p50_ms"] for r in runs["local"])
        dock = statistics.median(r[role]["p50_ms"] for r in runs["docker"])
        print(
            f"{label}: median p50 local {local:.3f} ms, container {dock:.3f} ms -> container/local {dock / local:.3f}"
        )
    accs = {
        (runner, role): {r[role]["accuracy"] for r in rs}
        for runner, rs in runs.items()
        for role in ("reference", "candidate")
    }
    same = all(
        accs["local", role] == accs["docker", role] and len(accs["local", role]) == 1
        for role in ("reference", "candidate")
    )
    print(f"accuracy equal in every run (local vs container): {same} {accs}")


if __name__ == "__main__":
    main()
