"""benchmarks/gpu_cells.py end to end as a CPU smoke run (--quick --device cpu), in a subprocess.

Checks the files, their structure and that nothing CUDA-only is faked on the CPU: CUDA graphs,
torch.compile and TF32 are recorded as skipped with the runner's error, INT8 as "not measured"; ONNX
Runtime runs on its CPU provider through the same I/O-binding path as on the GPU.
No timing assertions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from edgematrix.core.results import read_benchmark_json

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_cells.py"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    out = tmp_path_factory.mktemp("gpu-results")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    env.pop("OUT", None)
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--device", "cpu", "--out", str(out)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        cwd=ROOT,
    )
    return out, done


def test_smoke_run_writes_every_file(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, done = smoke_run
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    for name in ("benchmark-gpu.json", "summary.json", "batch_sweep.png", "configs.png"):
        path = out / name
        assert path.is_file() and path.stat().st_size > 0, name
    for png in ("batch_sweep.png", "configs.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "weights: RANDOM" in done.stdout  # said in the output, not only in the files


def test_benchmark_json_entries(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, _ = smoke_run
    doc = read_benchmark_json(out / "benchmark-gpu.json")  # validates pytest-benchmark structure
    benches = {b["name"]: b for b in doc["benchmarks"]}
    assert {"b1_fp32", "b1_fp16", "b1_bf16_cl", "sweep_b1_fp32", "sweep_b8_fp16"} <= set(benches)
    roles = {name: b["extra_info"]["role"] for name, b in benches.items()}
    assert [n for n, r in roles.items() if r == "reference"] == ["b1_fp32"]
    assert set(roles.values()) == {"reference", "candidate"}
    for name, bench in benches.items():
        info = bench["extra_info"]
        assert info["backend"] in ("torch", "onnxruntime") and info["weights"] == "random", name
        for key in ("mode", "batch", "channels_last", "cuda_graph", "compile", "per_sample_ms", "fps", "gpu"):
            assert key in info, (name, key)
        assert info["timer"] == "host"  # a CPU smoke run never claims CUDA-event times
    assert benches["sweep_b8_fp16"]["extra_info"]["batch"] == 8
    # both backends in the sweep: ONNX Runtime on its CPU provider, inputs and outputs bound to host memory
    ort = {n: b["extra_info"] for n, b in benches.items() if b["extra_info"]["backend"] == "onnxruntime"}
    assert set(ort) == {f"sweep_b{b}_ort_{p}" for b in (1, 2, 8) for p in ("fp32", "fp16")}
    for name, info in ort.items():
        assert info["provider"] == "CPUExecutionProvider" and info["io_binding"] == "cpu", name
        assert info["input_shape"] == f"{info['batch']}x3x64x160"
        assert info["precision"] == name.rsplit("_", 1)[1]
    assert doc["machine_info"]["gpu"] == "none" or isinstance(doc["machine_info"]["gpu"], str)
    assert "timer" in doc["machine_info"]


def test_summary_records_skips_int8_and_targets(smoke_run: tuple[Path, subprocess.CompletedProcess[str]]) -> None:
    out, done = smoke_run
    summary = json.loads((out / "summary.json").read_text())
    assert summary["complete"] is True and summary["errors"] == {}
    assert summary["weights"] == "random"
    assert summary["int8"]["status"].startswith("not measured")
    assert "no GPU INT8 runtime" in summary["int8"]["status"] or "present" in summary["int8"]["status"]
    assert "int8: not measured" in done.stdout
    skipped = summary["skipped"]
    for name in ("b1_fp16_cl_graph", "b1_tf32", "b1_fp16_cl_compile_max_autotune", "sweep_b8_fp16_cl_graph"):
        assert "BackendError" in skipped[name] and "device='cpu' cannot run" in skipped[name], name
    assert summary["compile"]["max-autotune"]["status"] == "failed"
    targets = summary["targets"]
    assert targets["fp16_graph_b8_vs_fp32_b8"]["status"].startswith("not measured")
    assert targets["best_batch1_vs_max_autotune"]["status"].startswith("not measured")
    assert targets["harness_overhead"]["status"] in ("PASS", "FAIL")
    assert set(summary["batch1"]) == {"fp32", "fp32_cl", "fp16", "fp16_cl", "bf16", "bf16_cl"}
    assert summary["batch1"]["fp32"]["max_rel_diff_vs_fp32"] == 0.0
    # ONNX Runtime vs torch on the same random weights: FP32 to 1e-4, FP16 further off but close
    parity = summary["ort_parity"]
    assert parity["inputs"] == 2
    assert parity["ort_fp32"]["max_rel"] <= 1e-4 and parity["ort_fp32_vs_torch_fp32"]["status"] == "PASS"
    assert 1e-5 < parity["ort_fp16"]["max_rel"] < 2e-2
    assert set(parity["ort_fp32"]["per_output"]) == {"loc_row", "loc_col", "exist_row", "exist_col"}
    assert "use_tf32 is an option of the CUDA execution provider" in skipped["ort_fp32_tf32"]
    assert targets["ort_fp32_vs_torch_fp32"]["status"] == "PASS"
    stream = summary["ort_stream"]
    assert stream["io_binding"] == "cpu" and stream["compute_stream"] == "none" and stream["timer"] == "host"
    assert stream["async_vs_infer_max_abs_diff"] == 0.0
    assert stream["harness_event_p50_ms"] > 0 and stream["host_synchronized_wall_p50_ms"] > 0
