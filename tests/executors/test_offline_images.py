"""Every target's image in its offline variant, on a real engine: what each one runs here.

- x86_trainer (the x86_gpu target's image): CPU torch; a tiny cell whose every stage, training
  included, runs in it (``--runner docker`` of a CPU target whose image is x86_trainer), and whose
  checkpoint a local cell of the same model then reuses from the shared cache.
- ti: ONNX Runtime and the FX8 emulation; an FX8 model converted and a bundle evaluated in the image
  give this host's bytes and outputs exactly.
- driveos: trt_runner cross-compiled for aarch64 by Debian's toolchain in the image's build, run under
  qemu-user in the image through the trt_cpp backend: served outputs equal ONNX Runtime's.

x86_cpu runs in its container in test_docker_engine.py; the emulated Jetson in tests/pipeline.
Images are built once (`nox -s images` builds the same tags) and found by later runs.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from edgematrix.executors.docker import Mount, TargetImage, run_in_image, target_image
from edgematrix.matrix.loader import load_matrix
from tiny_cells import TINY_GATES, TINY_MODELS_AND_RECIPES, make_workspace, run_cell

REPO = Path(__file__).resolve().parents[2]
TARGETS = load_matrix(REPO / "matrix").targets

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def image(docker_engine: Any) -> Callable[[str], TargetImage]:
    """The offline image of a target of the repository's matrix, built once (the repo's cache, as `nox -s images`)."""
    found: dict[str, TargetImage] = {}

    def get(target: str) -> TargetImage:
        if target not in found:
            found[target] = target_image(
                target, TARGETS[target], cache_dir=REPO / ".cache" / "edgematrix", client=docker_engine
            )
        return found[target]

    return get


def _python(image: TargetImage, script: str, mounts: Sequence[Mount] = ()) -> list[str]:
    """Run ``python3 -c script`` in the image; its output lines (the exit code must be 0)."""
    buf = io.StringIO()
    code = run_in_image(image, ["python3", "-c", script], mounts=mounts, out=buf)
    assert code == 0, buf.getvalue()
    return buf.getvalue().strip().splitlines()


def _writable(folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    folder.chmod(0o777)  # the container runs as the host user; writable whoever that is
    return folder


# -- x86_trainer: the x86_gpu target's image trains a cell's model ------------------------------------


def test_trainer_image_has_cpu_torch_at_the_lock_versions(image: Callable[[str], TargetImage]) -> None:
    from edgematrix.core.toolchain import LOCK_PATH, public_version, read_lock

    trainer = image("x86_gpu")
    assert trainer.spec.name == "x86_trainer" and trainer.arch == "x86_64" and not trainer.emulated
    script = (
        "import json, torch, onnxruntime\n"
        "from edgematrix.core.toolchain import current_environment\n"
        "print(json.dumps({'torch': torch.__version__, 'cuda': torch.version.cuda, 'gpu': torch.cuda.is_available(),\n"
        "  'providers': onnxruntime.get_available_providers(), 'env': current_environment()}))\n"
    )
    doc = json.loads(_python(trainer, script)[-1])
    assert (doc["torch"], doc["cuda"], doc["gpu"]) == ("2.13.0+cpu", None, False)  # CPU build, never CUDA's
    assert "CPUExecutionProvider" in doc["providers"] and "CUDAExecutionProvider" not in doc["providers"]
    lock = read_lock(REPO / LOCK_PATH).environment()
    env = doc["env"]
    assert env["python"] == "3.11" and {"torch", "onnxruntime", "numpy", "onnx"} <= set(env)
    assert {k: public_version(v) for k, v in env.items()} == {k: lock[k] for k in env}


def _trainer_cells() -> str:
    """A CPU target whose image is x86_gpu's (x86_trainer, same build args), and the tiny x86_cpu cell."""
    args = "\n".join(f'{k} = "{v}"' for k, v in TARGETS["x86_gpu"].image_args.items())
    return f"""
[targets.trainer_cpu]
description = "docker/x86_trainer's offline variant on a CPU host: CPU torch trains, ONNX Runtime CPU evaluates"
arch = "x86_64"
backend = "onnxruntime"
providers = ["CPUExecutionProvider"]
precisions = ["fp32", "int8"]
image = "x86_trainer"
offline_image = true
runners = ["local", "docker"]

[targets.trainer_cpu.image_args]
{args}

[[cells]]
target = "trainer_cpu"
model = "ufld_tiny"
recipes = ["int8q"]
{TINY_GATES}
[[cells]]
target = "x86_cpu"
model = "ufld_tiny"
recipes = ["int8q"]
{TINY_GATES}"""


def _references(results: Path) -> dict[str, Any]:
    bench = json.loads((results / "benchmark.json").read_text())
    (ref,) = [b["extra_info"] for b in bench["benchmarks"] if b["extra_info"]["role"] == "reference"
              and b["extra_info"]["backend"] == "onnxruntime"]  # fmt: skip
    return {"ref": ref, "machine": bench["machine_info"]}


def test_a_cell_trains_in_the_trainer_image_and_a_local_cell_reuses_its_checkpoint(
    image: Callable[[str], TargetImage], tmp_path_factory: pytest.TempPathFactory
) -> None:
    trainer = image("x86_gpu")
    ws = make_workspace(tmp_path_factory, "trainer", TINY_MODELS_AND_RECIPES + _trainer_cells())
    assert run_cell(ws, "trainer_cpu_int8q", "--runner", "docker", "--offline-base", results="in-trainer") == 0
    inside = _references(ws / "in-trainer" / "trainer_cpu_int8q")
    assert inside["machine"]["container_image"] == trainer.tag  # the very image `nox -s images` builds for x86_gpu
    report = (ws / "in-trainer" / "trainer_cpu_int8q" / "report.md").read_text()
    assert re.search(r"\*\*training\*\*: trained in \d+ s", report), report  # trained there, not found in a cache
    checkpoints = {p: p.stat().st_mtime_ns for p in (ws / "cache").rglob("*.pt")}
    assert len(checkpoints) == 1, checkpoints
    assert inside["ref"]["accuracy"] >= 0 and inside["ref"]["runner"] == "local"  # local to the container

    # this host's own cell of the same model finds that checkpoint (the training key has torch 2.13.0 either
    # way) and its FP32 ONNX: the model the host evaluates is the one the trainer image trained
    assert run_cell(ws, "x86_cpu_int8q", "--runner", "local", results="on-host") == 0
    host = _references(ws / "on-host" / "x86_cpu_int8q")
    assert "**training**: cached checkpoint" in (ws / "on-host" / "x86_cpu_int8q" / "report.md").read_text()
    assert {p: p.stat().st_mtime_ns for p in (ws / "cache").rglob("*.pt")} == checkpoints
    assert host["ref"]["artifact_sha256"] == inside["ref"]["artifact_sha256"]
    assert host["ref"]["accuracy"] == inside["ref"]["accuracy"]  # same ONNX file, same ONNX Runtime 1.31.1


# -- ti: the FX8 emulation of TDA4's fixed point, in the image ---------------------------------------


@pytest.fixture(scope="module")
def ti_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A UFLD-v2 (random weights: equality, not accuracy, is checked), its FP32 ONNX and its symmetric INT8 QDQ
    model (the TensorRT / TIDL form FX8 starts from), and this host's FX8 conversion of it."""
    import torch

    from edgematrix.export.onnx_export import export_onnx
    from edgematrix.models import create_model
    from edgematrix.models.ufld import OUTPUT_NAMES
    from edgematrix.optimize.fx8 import fx8_from_qdq
    from edgematrix.optimize.quantize import QuantizeConfig, quantize_static_qdq

    folder = tmp_path_factory.mktemp("ti-models")
    torch.manual_seed(0)
    model = create_model("ufld_v2", [1, 3, 64, 160], width=8, mlp_mid_dim=64).eval()
    export_onnx(model, (1, 3, 64, 160), folder / "fp32.onnx", output_names=OUTPUT_NAMES)
    rng = np.random.default_rng(5)
    calibration = [rng.random((1, 3, 64, 160), dtype=np.float32) for _ in range(4)]
    config = QuantizeConfig.tensorrt(method="minmax")
    quantize_static_qdq(folder / "fp32.onnx", folder / "int8.onnx", calibration, input_name="input", config=config)
    fx8_from_qdq(folder / "int8.onnx", folder / "host-fx8.onnx")
    return {name: folder / f"{name}.onnx" for name in ("fp32", "int8", "host-fx8")}


def test_ti_image_runs_the_fx8_emulation_as_this_host_does(
    image: Callable[[str], TargetImage], ti_models: dict[str, Path], tmp_path: Path
) -> None:
    from edgematrix.server.bundle import EvalBundle, run_bundle_local
    from edgematrix.server.wire import npz_to_arrays

    ti = image("ti")
    assert ti.spec.name == "ti" and ti.arch == "x86_64" and ti.spec.build_args["TIDL_TOOLS_TAG"] == ""
    facts = _python(
        ti, "import os, onnxruntime; print(repr(os.environ.get('TIDL_TOOLS_PATH'))); print(onnxruntime.__version__)"
    )
    assert facts[-2:] == ["''", "1.31.1"]  # no TI tools (the ti target's local runner needs them), the lock's ORT

    models = tmp_path / "models"
    models.mkdir()
    for name in ("fp32", "int8"):
        shutil.copy2(ti_models[name], models / f"{name}.onnx")
    rng = np.random.default_rng(9)
    bundle = EvalBundle({"input": rng.random((6, 1, 3, 64, 160), dtype=np.float32)})
    bundle.save(tmp_path / "bundle")
    out = _writable(tmp_path / "out")
    mounts = [Mount(models, "/models"), Mount(tmp_path / "bundle", "/bundle"), Mount(out, "/out", writable=True)]

    # in the image: the FX8 rewrite of the INT8 model, and its check that every QDQ scale is a power of two
    script = (
        "import json\n"
        "from edgematrix.optimize.fx8 import fx8_from_qdq, verify_power_of_two\n"
        "report = fx8_from_qdq('/models/int8.onnx', '/out/fx8.onnx')\n"
        "print(json.dumps({'summary': report.summary(), 'checked': str(verify_power_of_two('/out/fx8.onnx'))}))\n"
    )
    doc = json.loads(_python(ti, script, mounts)[-1])
    assert (out / "fx8.onnx").read_bytes() == ti_models["host-fx8"].read_bytes()  # the same model, byte for byte
    assert doc["summary"]["fx8_scales_rewritten"] > 0, doc  # the emulation is not the INT8 model under another name

    # in the image: the bundle through the three models on ONNX Runtime, as an emulated device evaluation does
    buf = io.StringIO()
    command = ["python3", "-m", "edgematrix.executors.on_device", "--bundle", "/bundle", "--out", "/out",
               "/models/fp32.onnx", "/models/int8.onnx", "/out/fx8.onnx"]  # fmt: skip
    assert run_in_image(ti, command, mounts=mounts, out=buf) == 0, buf.getvalue()
    host_models = {"fp32": ti_models["fp32"], "int8": ti_models["int8"], "fx8": ti_models["host-fx8"]}
    for name, path in host_models.items():
        inside = npz_to_arrays((out / f"{name}.npz").read_bytes())
        here = run_bundle_local(path, bundle)
        assert sorted(inside) == sorted(here) == ["exist_col", "exist_row", "loc_col", "loc_row"]
        for key in here:  # same ONNX Runtime build on the same CPU: identical, not merely close
            assert inside[key].shape == here[key].shape and np.array_equal(inside[key], here[key]), (name, key)
        timing = json.loads((out / f"{name}.json").read_text())
        assert timing["facts"]["machine"] == "x86_64" and timing["facts"]["samples"] == 6
    fx8 = npz_to_arrays((out / "fx8.npz").read_bytes())
    int8 = npz_to_arrays((out / "int8.npz").read_bytes())
    assert not np.array_equal(fx8["loc_row"], int8["loc_row"])  # power-of-two scales compute other numbers


# -- driveos: the C++ runner, cross-compiled in the image's build, run under qemu-user in the image ----------


C, H, W, K, SEED = 3, 6, 5, 4, 7


def test_driveos_image_runs_its_cross_compiled_runner_under_qemu(
    image: Callable[[str], TargetImage], tmp_path: Path
) -> None:
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from edgematrix.backends.trt_cpp.runner import selftest_weights
    from edgematrix.server.bundle import EvalBundle
    from edgematrix.server.wire import npz_to_arrays

    driveos = image("driveos")
    assert driveos.arch == "x86_64" and driveos.spec.build_args["TRT_RUNNER_ENGINE"] == "cpu-selftest"
    rng = np.random.default_rng(13)
    bundle = EvalBundle({"input": rng.standard_normal((5, 1, C, H, W)).astype(np.float32)})
    bundle.save(tmp_path / "bundle")
    out = _writable(tmp_path / "out")
    # in the image: the trt_cpp backend as on the board (it finds /opt/edgematrix/bin/trt_runner), serving
    # every sample of the bundle through `trt_runner --serve`, then timing what it serves with its harness
    script = f"""
import json, subprocess
from pathlib import Path
from edgematrix.backends.base import create_runner, load_builtin_backends
from edgematrix.backends.trt_cpp.build import elf_machine
from edgematrix.backends.trt_cpp.run import emulator_for
from edgematrix.measure.harness import LatencyConfig
from edgematrix.server.bundle import EvalBundle, stack_outputs
from edgematrix.server.wire import arrays_to_npz
binary = Path("/opt/edgematrix/bin/trt_runner")
load_builtin_backends()
bundle = EvalBundle.load("/bundle")
with create_runner("trt_cpp", selftest=True, selftest_size=({C}, {H}, {W}), selftest_out_channels={K}, seed={SEED}) as r:
    outputs = stack_outputs([r.infer(bundle.feed(i)) for i in range(bundle.samples)])
    facts = r.facts()
    report = r.measure(LatencyConfig(warmup=1, min_rounds=5, max_rounds=5, min_time_s=0.0, max_time_s=60.0))
Path("/out/outputs.npz").write_bytes(arrays_to_npz(outputs))
dynamic = subprocess.run(["aarch64-linux-gnu-readelf", "-d", str(binary)], capture_output=True, text=True).stdout
print(json.dumps({{"machine": elf_machine(binary), "emulator": emulator_for("aarch64"), "facts": dict(facts),
    "dynamic": dynamic.strip(), "report": report.as_dict()}}))
"""
    doc = json.loads(
        _python(driveos, script, [Mount(tmp_path / "bundle", "/bundle"), Mount(out, "/out", writable=True)])[-1]
    )
    assert doc["machine"] == "aarch64" and doc["emulator"] == ["/usr/bin/qemu-aarch64-static"]
    assert "no dynamic section" in doc["dynamic"]  # static: no aarch64 sysroot needed under qemu
    facts = doc["facts"]
    assert facts["backend"] == "trt_cpp" and facts["mode"] == "cpu_selftest"
    assert (facts["runner_binary"], facts["runner_machine"], facts["emulated"]) == (
        "/opt/edgematrix/bin/trt_runner", "aarch64", 1)  # fmt: skip

    # the served outputs are ONNX Runtime's for the same function (Conv 3x3 with the runner's LCG weights + Relu)
    weights, bias = selftest_weights(SEED, C, H, W, K)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w", "b"], ["c"], pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
         helper.make_node("Relu", ["c"], ["output"])],
        "selftest",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, C, H, W])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, K, H, W])],
        [numpy_helper.from_array(weights, "w"), numpy_helper.from_array(bias, "b")],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    served = npz_to_arrays((out / "outputs.npz").read_bytes())["output"]
    assert served.shape == (5, 1, K, H, W) and served.dtype == np.float32
    for i in range(5):
        (want,) = session.run(["output"], bundle.feed(i))
        np.testing.assert_allclose(served[i], want, rtol=1e-5, atol=1e-5)
    assert (served == 0).any() and (served > 0).any()

    # its harness ran under qemu in the image: five timed rounds whose statistics are numpy's of its samples
    report = doc["report"]
    samples = np.asarray(report["samples_ms"])
    assert report["backend"] == "cpu_selftest" and report["rounds"] == len(samples) == 5 and (samples > 0).all()
    for q in (50, 90, 99):
        assert report[f"p{q}_ms"] == float(np.percentile(samples, q))
    assert report["facts"]["selftest_input"] == f"{C}x{H}x{W}" and report["facts"]["selftest_seed"] == SEED


@pytest.mark.parametrize("target", ["x86_gpu", "ti", "driveos"])
def test_a_vendor_variant_names_its_missing_base_and_pulls_nothing(docker_engine: Any, target: str) -> None:
    """Every FROM is checked before anything runs: DriveOS's PDK (not BASE_IMAGE) included."""
    from edgematrix.executors.images import ImageError, base_images, target_image_spec

    spec = target_image_spec(REPO, target, TARGETS[target].model_dump())
    (base,) = base_images(spec)
    with pytest.raises(ImageError, match=rf"base image '{re.escape(base)}' of docker/{spec.name}/ is not on this host"):
        target_image(
            target, TARGETS[target], cache_dir=REPO / ".cache" / "edgematrix", offline=False, client=docker_engine
        )
    assert not docker_engine.images.list(name=base.rpartition(":")[0])
