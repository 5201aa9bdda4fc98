"""TorchRunner on the CPU (this host has no GPU): numerics, refusals, facts, registry.

Tolerances asserted:

- ``fp32`` vs the module itself: max |a - b| <= 1e-6 * max|b| (same ops on a deep copy; measured 0).
- ``bf16`` autocast vs FP32: max |a - b| <= 5e-2 * max|b|. bf16 keeps 8 significand bits (relative
  step 2^-8 = 3.9e-3 per rounding) and convolutions / linears accumulate in f32; a few layers of
  roundings stay well inside 5e-2 (measured ~5e-3 on the tiny UFLD). Also correlation > 0.999.

The CUDA paths (CUDA graphs, torch.compile, TF32, infer_device without sync) run in
benchmarks/gpu_cells.py on a GPU host; here they are checked to be refused with a clear error.
No timing here.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgematrix.backends.base import Runner, backends, create_runner, load_builtin_backends
from edgematrix.backends.torch.runner import MODES, TorchRunner, _BackendFlags
from edgematrix.errors import BackendError
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2

SHAPE = (1, 3, 64, 160)
SRC = str(Path(__file__).resolve().parents[2] / "src")


@pytest.fixture(scope="module")
def model() -> UFLDv2:
    torch.manual_seed(0)
    return UFLDv2(input_size=SHAPE[2:], mlp_mid_dim=32, width=8).eval()


@pytest.fixture(scope="module")
def feed() -> dict[str, np.ndarray]:
    return {"input": np.random.default_rng(0).standard_normal(SHAPE).astype(np.float32)}


def _reference(model: UFLDv2, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    with torch.inference_mode():
        outs = model(torch.from_numpy(feed["input"]))
    return {name: t.numpy() for name, t in zip(OUTPUT_NAMES, outs, strict=True)}


def _cpu_runner(model: UFLDv2, **kw: object) -> TorchRunner:
    return TorchRunner(model, input_shape=SHAPE, device="cpu", output_names=OUTPUT_NAMES, **kw)  # type: ignore[arg-type]


@pytest.mark.parametrize("channels_last", [False, True])
def test_fp32_equals_the_module(model: UFLDv2, feed: dict[str, np.ndarray], channels_last: bool) -> None:
    ref = _reference(model, feed)
    with _cpu_runner(model, mode="fp32", channels_last=channels_last) as runner:
        got = runner.infer(feed)
    assert list(got) == list(OUTPUT_NAMES)
    for name in OUTPUT_NAMES:
        assert got[name].dtype == np.float32
        assert got[name].shape == ref[name].shape
        scale = float(np.abs(ref[name]).max())
        assert float(np.abs(got[name] - ref[name]).max()) <= 1e-6 * scale + 1e-7, name


def test_bf16_autocast_is_close_to_fp32(model: UFLDv2, feed: dict[str, np.ndarray]) -> None:
    ref = _reference(model, feed)
    with _cpu_runner(model, mode="bf16") as runner:
        got = runner.infer(feed)
        device_out = runner.infer_device(torch.from_numpy(feed["input"]))
    assert device_out[0].dtype == torch.bfloat16  # the model really ran in bf16
    for name in OUTPUT_NAMES:
        assert got[name].dtype == np.float32  # infer() converts: numpy has no bf16
        rel = float(np.abs(got[name] - ref[name]).max() / np.abs(ref[name]).max())
        assert rel <= 5e-2, (name, rel)
        assert rel > 0  # not silently FP32
        assert float(np.corrcoef(got[name].ravel(), ref[name].ravel())[0, 1]) > 0.999


def test_infer_device_returns_tensors_and_checks_its_input(model: UFLDv2, feed: dict[str, np.ndarray]) -> None:
    ref = _reference(model, feed)
    with _cpu_runner(model) as runner:
        outs = runner.infer_device(torch.from_numpy(feed["input"]))
        assert isinstance(outs, tuple) and len(outs) == len(OUTPUT_NAMES)
        np.testing.assert_allclose(outs[0].numpy(), ref[OUTPUT_NAMES[0]], rtol=1e-6, atol=1e-7)
        with pytest.raises(BackendError, match=r"expected float32 \[1, 3, 64, 160\] on cpu"):
            runner.infer_device(torch.zeros(2, 3, 64, 160))
        with pytest.raises(BackendError, match="float64"):
            runner.infer_device(torch.zeros(SHAPE, dtype=torch.float64))
    with pytest.raises(BackendError, match="not active"):
        runner.infer_device(torch.from_numpy(feed["input"]))


def test_feed_is_validated_like_every_runner(model: UFLDv2) -> None:
    with _cpu_runner(model) as runner:
        meta = runner.input_metadata()
        assert list(meta) == ["input"] and meta["input"].shape == SHAPE
        with pytest.raises(BackendError, match="dtype float64"):
            runner.infer({"input": np.zeros(SHAPE, np.float64)})
        with pytest.raises(BackendError, match="shape"):
            runner.infer({"input": np.zeros((1, 3, 32, 160), np.float32)})


def test_the_runner_works_on_a_copy(model: UFLDv2, feed: dict[str, np.ndarray]) -> None:
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with _cpu_runner(model, mode="bf16", channels_last=True) as runner:
        runner.infer(feed)
    assert next(model.parameters()).requires_grad  # the user's module is untouched
    assert model.backbone.conv1.weight.is_contiguous()  # not converted to channels_last
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"cuda_graph": True}, r"device='cpu' cannot run cuda_graph=True \(CUDA graphs exist only on CUDA devices\)"),
        ({"compile": "default"}, r"device='cpu' cannot run compile='default'"),
        ({"compile": "max-autotune"}, r"device='cpu' cannot run compile='max-autotune'"),
        ({"mode": "tf32"}, r"device='cpu' cannot run mode='tf32'"),
        ({"mode": "int8"}, r"unknown mode 'int8'; choose one of fp32, tf32, fp16, bf16"),
        ({"compile": "reduce-overhead"}, r"unknown compile mode 'reduce-overhead'"),
    ],
)
def test_cpu_refuses_what_needs_cuda(model: UFLDv2, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(BackendError, match=message):
        _cpu_runner(model, **kwargs)


def test_bad_arguments_are_refused(model: UFLDv2) -> None:
    with pytest.raises(BackendError, match="cuda_graph=True with compile='default' is not supported"):
        TorchRunner(model, input_shape=SHAPE, device="cuda", cuda_graph=True, compile="default")
    with pytest.raises(BackendError, match="channels_last needs a 4-D"):
        TorchRunner(model, input_shape=(1, 80), device="cpu", channels_last=True)
    with pytest.raises(BackendError, match="input_shape must be positive ints"):
        TorchRunner(model, input_shape=(1, 3, -1, 160), device="cpu")
    with pytest.raises(BackendError, match="device 'mps' is not supported; use one of cuda, cpu"):
        TorchRunner(model, input_shape=SHAPE, device="mps")
    with pytest.raises(BackendError, match=r"must be a torch\.nn\.Module"):
        TorchRunner(lambda x: x, input_shape=SHAPE, device="cpu")  # type: ignore[arg-type]
    with (
        pytest.raises(BackendError, match="returns 4 outputs but output_names has 2"),
        TorchRunner(model, input_shape=SHAPE, device="cpu", output_names=("a", "b")),
    ):
        pass


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a host without CUDA")
def test_cuda_on_a_host_without_cuda_fails_at_activation(model: UFLDv2) -> None:
    runner = TorchRunner(model, input_shape=SHAPE, device="cuda", mode="fp16", cuda_graph=True)
    with pytest.raises(BackendError, match=r"sees no CUDA device.*use device='cpu'"):
        runner.activate()
    assert not runner.is_active


def test_facts(model: UFLDv2) -> None:
    with _cpu_runner(model, mode="bf16", channels_last=True, name="cand") as runner:
        facts = runner.facts()
    assert facts["backend"] == "torch"
    assert facts["runner"] == "cand"
    assert facts["version"] == torch.__version__
    assert facts["device"] == "cpu"
    assert facts["mode"] == facts["precision"] == "bf16"
    assert facts["autocast_dtype"] == "bfloat16"
    assert facts["channels_last"] == 1
    assert facts["cuda_graph"] == 0
    assert facts["compile"] == "none"
    assert facts["cudnn_benchmark"] == 0  # no cuDNN on the CPU
    assert facts["allow_tf32"] == 0
    assert facts["input_shape"] == "1x3x64x160"
    assert isinstance(facts["device_name"], str) and facts["device_name"]
    assert all(type(v) in (str, int, float) for v in facts.values())  # plain values for extra_info


def test_default_output_names(model: UFLDv2, feed: dict[str, np.ndarray]) -> None:
    with TorchRunner(model, input_shape=SHAPE, device="cpu", warmup=0) as runner:
        assert list(runner.infer(feed)) == ["output_0", "output_1", "output_2", "output_3"]


def test_backend_flags_are_set_for_one_call_and_restored() -> None:
    b = torch.backends
    before = (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark)
    try:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = False, True, False
        with _BackendFlags(b, tf32=True, benchmark=True):
            assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark) == (True, True, True)
        assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark) == (False, True, False)
        with _BackendFlags(b, tf32=False, benchmark=True):
            assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32) == (False, False)
        assert (b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark) == (False, True, False)
    finally:
        b.cuda.matmul.allow_tf32, b.cudnn.allow_tf32, b.cudnn.benchmark = before


# -- registry -------------------------------------------------------------------------------------


def test_registered_as_torch(model: UFLDv2, feed: dict[str, np.ndarray]) -> None:
    load_builtin_backends()
    assert "torch" in backends.names()
    assert backends.get("torch") is TorchRunner
    assert issubclass(TorchRunner, Runner) and TorchRunner.backend_name == "torch"
    runner = create_runner("torch", module=model, input_shape=SHAPE, device="cpu", name="via-registry")
    assert isinstance(runner, TorchRunner) and runner.name == "via-registry"
    with runner:
        assert runner.facts()["backend"] == "torch"
        assert len(runner.infer(feed)) == 4


def test_modes_are_the_documented_ones() -> None:
    assert MODES == ("fp32", "tf32", "fp16", "bf16")


def test_registering_the_backend_does_not_import_torch() -> None:
    code = (
        "import sys\n"
        "from edgematrix.backends.base import backends, load_builtin_backends\n"
        "load_builtin_backends()\n"
        "print('torch' in backends.names(), 'torch' in sys.modules)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={"PYTHONPATH": SRC}, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "False"]
