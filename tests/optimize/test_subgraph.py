"""deploy_split (per-subgraph precision), head calibration features, trtexec_flags."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from edgematrix.backends.split.manifest import file_sha256, load_manifest
from edgematrix.backends.tensorrt.loader import build_command
from edgematrix.errors import EdgeMatrixError
from edgematrix.export.split import SplitResult, split_model
from edgematrix.matrix.schema import SplitSection, SubgraphPlacement
from edgematrix.optimize.quantize import zero_points
from edgematrix.optimize.subgraph import (
    FP16_CPU_NOTE,
    Placement,
    deploy_split,
    encoder_features,
    trtexec_flags,
    trtexec_options,
)
from split_models import INPUT_SHAPE, OUTPUTS, exported


@pytest.fixture(scope="module")
def split_one(tmp_path_factory: pytest.TempPathFactory) -> SplitResult:
    return split_model(exported("one_feature").path, tmp_path_factory.mktemp("split1"), heads=list(OUTPUTS))


@pytest.fixture(scope="module")
def split_two(tmp_path_factory: pytest.TempPathFactory) -> SplitResult:
    return split_model(exported("two_features").path, tmp_path_factory.mktemp("split2"), heads=list(OUTPUTS))


def _images(n: int, seed: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(INPUT_SHAPE, dtype=np.float32) for _ in range(n)]


def _ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def _run(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_head_calibration_features_are_computed_once_and_reused(split_one: SplitResult, tmp_path: Path) -> None:
    images, cache = _images(6), tmp_path / "cache"
    first = deploy_split(split_one, tmp_path / "a", {"seg": {"precision": "int8"}}, calibration=images, cache_dir=cache)
    assert first.features is not None and first.features.computed
    npy = sorted(first.features.folder.glob("*.npy"))
    assert [p.name for p in npy] == ["0.npy"]
    stamp = npy[0].stat().st_mtime_ns
    # the cached features are the FP32 encoder's outputs on the images
    want = np.stack([_run(split_one.encoder, {"input": im})[0] for im in images])
    np.testing.assert_array_equal(np.load(npy[0]), want)
    assert first.features.arrays["features"].shape == (6, 1, 16, 16, 16)

    second = deploy_split(
        split_one, tmp_path / "b", {"seg": {"precision": "int8"}}, calibration=images, cache_dir=cache
    )
    assert second.features is not None and not second.features.computed  # read back, not recomputed
    assert npy[0].stat().st_mtime_ns == stamp
    assert second.features.key == first.features.key
    np.testing.assert_array_equal(second.features.arrays["features"], want)
    # other images: another cache entry
    third = encoder_features(split_one.encoder, _images(6, seed=4), cache)
    assert third.computed and third.key != first.features.key


def test_int8_subgraphs_have_qdq_nodes_and_fp32_ones_do_not(split_one: SplitResult, tmp_path: Path) -> None:
    deployed = deploy_split(
        split_one,
        tmp_path / "int8",
        {"encoder": {"precision": "int8"}, "seg": {"precision": "int8"}},
        calibration=_images(4),
    )
    assert "QuantizeLinear" in _ops(deployed.files["encoder"])
    assert "QuantizeLinear" in _ops(deployed.files["seg"])
    assert "QuantizeLinear" not in _ops(deployed.files["depth"])
    assert deployed.quantized["seg"].qdq_pairs == _ops(deployed.files["seg"]).count("QuantizeLinear")
    fp32 = deploy_split(split_one, tmp_path / "fp32", {"seg": {"precision": "int8"}}, calibration=_images(4))
    assert "QuantizeLinear" not in _ops(fp32.files["encoder"])
    assert file_sha256(fp32.files["encoder"]) == file_sha256(split_one.encoder)  # fp32 is the split file as is
    manifest = load_manifest(deployed.manifest)
    assert [(s.name, s.precision, s.file) for s in manifest.subgraphs] == [
        ("encoder", "int8", "encoder.int8.onnx"),
        ("seg", "int8", "seg.int8.onnx"),
        ("depth", "fp32", "depth.fp32.onnx"),
    ]
    # the INT8 head computes what the FP32 head does on real features (within quantization error)
    feats = _run(split_one.encoder, {"input": _images(1, seed=9)[0]})[0]
    ref = _run(split_one.heads["seg"], {"features": feats})[0]
    got = _run(deployed.files["seg"], {"features": feats})[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


def test_a_head_reading_two_feature_maps_is_quantized_with_a_scale_per_map(
    split_two: SplitResult, tmp_path: Path
) -> None:
    deployed = deploy_split(split_two, tmp_path / "d", {"seg": {"precision": "int8"}}, calibration=_images(6))
    head = onnx.load(str(deployed.files["seg"]))
    assert [i.name for i in head.graph.input] == ["features_0", "features_1"]
    assert not any(n.name.startswith("edgematrix_unpack") for n in head.graph.node)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in head.graph.initializer}
    scales = {}
    for node in head.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in ("features_0", "features_1"):
            scales[node.input[0]] = float(inits[node.input[1]])
    assert set(scales) == {"features_0", "features_1"}
    assert scales["features_0"] != scales["features_1"]
    feats = _run(split_two.encoder, {"input": _images(1, seed=9)[0]})
    feed = {"features_0": feats[0], "features_1": feats[1]}
    ref, got = _run(split_two.heads["seg"], feed)[0], _run(deployed.files["seg"], feed)[0]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


def test_fp16_keeps_float32_io_and_notes_that_cpu_gains_nothing(split_one: SplitResult, tmp_path: Path) -> None:
    deployed = deploy_split(
        split_one, tmp_path / "f", {"depth": {"precision": "fp16"}, "seg": {"precision": "fp16", "device": "gpu"}}
    )
    model = onnx.load(str(deployed.files["depth"]))
    assert {i.type.tensor_type.elem_type for i in [*model.graph.input, *model.graph.output]} == {onnx.TensorProto.FLOAT}
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert deployed.notes["depth"] == (FP16_CPU_NOTE,)
    assert deployed.notes["seg"] == ()  # fp16 on a GPU is the point
    feats = _run(split_one.encoder, {"input": _images(1)[0]})[0]
    ref, got = (
        _run(split_one.heads["depth"], {"features": feats})[0],
        _run(deployed.files["depth"], {"features": feats})[0],
    )
    np.testing.assert_allclose(got, ref, atol=5e-3)
    rows = {s["name"]: s for s in json.loads(deployed.manifest.read_text())["subgraphs"]}
    assert rows["depth"]["notes"] == [FP16_CPU_NOTE]
    assert rows["seg"]["trtexec_flags"] == ["--fp16"] and rows["seg"]["device"] == "gpu"


def test_tensorrt_placements_get_symmetric_int8(split_one: SplitResult, tmp_path: Path) -> None:
    deployed = deploy_split(
        split_one,
        tmp_path / "t",
        {"seg": {"precision": "int8", "device": "dla1"}, "depth": {"precision": "int8"}},
        calibration=_images(4),
    )
    dla = zero_points(onnx.load(str(deployed.files["seg"])))
    cpu = zero_points(onnx.load(str(deployed.files["depth"])))
    assert dla and all(z.dtype == np.int8 and not z.any() for z in dla.values())  # TensorRT: int8, zero point 0
    assert cpu and all(z.dtype == np.uint8 for z in cpu.values())  # ORT CPU: U8S8
    manifest = load_manifest(deployed.manifest)
    assert manifest.entry("seg").trtexec_flags == ("--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback")
    assert manifest.entry("depth").trtexec_flags == ()


@pytest.mark.parametrize(
    ("placement", "flags"),
    [
        (Placement("fp32", "gpu"), []),
        (Placement("fp16", "gpu"), ["--fp16"]),
        (Placement("int8", "gpu"), ["--int8", "--fp16"]),
        (Placement("fp16", "dla0"), ["--fp16", "--useDLACore=0", "--allowGPUFallback"]),
        (Placement("int8", "dla1"), ["--int8", "--fp16", "--useDLACore=1", "--allowGPUFallback"]),
    ],
)
def test_trtexec_flags_agree_with_the_tensorrt_backend(placement: Placement, flags: list[str]) -> None:
    assert trtexec_flags(placement) == flags
    options = trtexec_options(placement, "head.onnx", build_only=True)
    argv = build_command(options, explicit_quantization=placement.precision == "int8")
    assert [a for a in argv if a in flags or a.startswith("--useDLACore")] == flags


def test_trtexec_flags_match_nvidias_documented_dla_commands() -> None:
    # TensorRT developer guide, "Working with DLA" → "Using trtexec"
    documented = "./trtexec --onnx=data/resnet50/ResNet50.onnx --useDLACore=0 --fp16 --allowGPUFallback"
    assert set(trtexec_flags(Placement("fp16", "dla0"))) == {
        a for a in shlex.split(documented)[1:] if "=" not in a or "DLA" in a
    }
    # NVIDIA DL4AGX mtmi README (the seed): the depth head as INT8 on DLA0 (cuDLA standalone, no GPU fallback)
    mtmi = (
        "trtexec --onnx=onnx_files/mtmi_depth_head.onnx --int8 --saveEngine=loadables/mtmi_depth_i8_dla.loadable "
        "--useDLACore=0 --inputIOFormats=int8:chw32 --outputIOFormats=int8:dla_linear --buildOnly --verbose "
        "--buildDLAStandalone --calib=calibration/calibration_cache_depth.bin"
    )
    ours = trtexec_flags(Placement("int8", "dla0"), fp16_fallback=False, allow_gpu_fallback=False)
    assert ours == ["--int8", "--useDLACore=0"]
    assert set(ours) <= set(shlex.split(mtmi))


def test_placements_are_validated() -> None:
    with pytest.raises(EdgeMatrixError, match="DLA runs FP16 or INT8 only"):
        Placement("fp32", "dla0")
    with pytest.raises(EdgeMatrixError, match=r"use cpu, gpu or dla0\.\.dla9"):
        Placement("fp16", "npu")
    with pytest.raises(EdgeMatrixError, match="not built with TensorRT"):
        trtexec_flags(Placement("int8", "cpu"))
    with pytest.raises(EdgeMatrixError, match=r"placement keys \['cores'\] unknown"):
        Placement.of({"cores": 2})
    section = SplitSection(encoder=SubgraphPlacement(precision="fp16", device="gpu"), heads={"seg": {"threads": 1}})
    resolved = {k: Placement.of(v) for k, v in section.placements(["seg", "depth"]).items()}
    assert resolved == {
        "encoder": Placement("fp16", "gpu", 0),
        "seg": Placement("fp32", "cpu", 1),
        "depth": Placement("fp32", "cpu", 0),
    }


def test_deploy_refuses_bad_requests(split_one: SplitResult, tmp_path: Path) -> None:
    with pytest.raises(EdgeMatrixError, match=r"\['seg'\] are int8 but no calibration images"):
        deploy_split(split_one, tmp_path / "x", {"seg": {"precision": "int8"}})
    with pytest.raises(EdgeMatrixError, match=r"unknown subgraph\(s\) \['lanes'\]; subgraphs: encoder, seg, depth"):
        deploy_split(split_one, tmp_path / "x", {"lanes": {"precision": "fp16"}})
    with pytest.raises(EdgeMatrixError, match="is the FP32 split's folder"):
        deploy_split(split_one, split_one.out_dir)
    done = deploy_split(split_one, tmp_path / "y", {"seg": {"precision": "fp16"}})
    with pytest.raises(EdgeMatrixError, match="already deployed"):
        deploy_split(done.manifest, tmp_path / "z")
