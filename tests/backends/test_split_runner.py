"""The ``split`` backend against the whole model, on tiny multi-head torch models (real ONNX Runtime)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from edgematrix.backends.base import backends, create_runner
from edgematrix.backends.split.runner import SplitRunner
from edgematrix.errors import BackendError, ModelError
from edgematrix.export.split import SplitResult, split_model
from edgematrix.optimize.subgraph import deploy_split
from split_models import INPUT_SHAPE, OUTPUTS, exported, frames, whole_outputs


@pytest.fixture(scope="module", params=["one_feature", "two_features"])
def split(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> SplitResult:
    return split_model(exported(request.param).path, tmp_path_factory.mktemp(request.param), heads=list(OUTPUTS))


def test_split_is_a_registered_backend() -> None:
    assert "split" in backends.names()
    assert backends.get("split") is SplitRunner


def test_outputs_equal_the_whole_models_by_the_original_names(split: SplitResult) -> None:
    with create_runner("split", path=split.manifest, intra_op_threads=1) as runner:
        assert isinstance(runner, SplitRunner)
        meta = runner.input_metadata()
        assert list(meta) == ["input"] and meta["input"].shape == INPUT_SHAPE
        for feed in frames(3, seed=21):
            got = runner.infer(feed)
            want = whole_outputs(split.source, feed)
            assert list(got) == list(OUTPUTS)
            for name in OUTPUTS:
                np.testing.assert_allclose(got[name], want[name], atol=1e-5, rtol=0)
            features = runner.run_encoder(feed)
            assert list(features) == [f.name for f in split.features]
            staged = runner.run_heads(features)
            for name in OUTPUTS:
                np.testing.assert_array_equal(staged[name], got[name])


def test_facts_list_the_subgraphs_and_their_threads(split: SplitResult) -> None:
    with create_runner("split", path=split.manifest, threads={"encoder": 2, "seg": 1}, intra_op_threads=1) as runner:
        facts = runner.facts()
    assert facts["backend"] == "split"
    assert facts["subgraphs"] == "encoder,seg,depth"
    assert facts["precision"] == "fp32"
    assert (facts["subgraph.encoder.threads"], facts["subgraph.seg.threads"], facts["subgraph.depth.threads"]) == (
        2,
        1,
        1,
    )
    assert facts["subgraph.seg.provider"] == "CPUExecutionProvider"
    assert facts["model_bytes"] == sum(p.stat().st_size for p in [split.encoder, *split.heads.values()])
    assert all(isinstance(v, str | int | float) for v in facts.values())


def test_a_deployed_int8_split_runs_close_to_the_whole_model(split: SplitResult, tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    images = [rng.standard_normal(INPUT_SHAPE, dtype=np.float32) for _ in range(8)]
    deployed = deploy_split(split, tmp_path, {"depth": {"precision": "int8", "threads": 1}}, calibration=images)
    feed = frames(1, seed=8)[0]
    with create_runner("split", path=deployed.manifest) as runner:
        got = runner.infer(feed)
        facts = runner.facts()
    want = whole_outputs(split.source, feed)
    np.testing.assert_allclose(got["seg"], want["seg"], atol=1e-5)  # the fp32 head is untouched
    assert not np.array_equal(got["depth"], want["depth"])  # the int8 one computes in int8 ...
    np.testing.assert_allclose(got["depth"], want["depth"], atol=0.05)  # ... close to fp32 (sigmoid output)
    assert facts["precision"] == "int8" and facts["subgraph.depth.precision"] == "int8"
    assert facts["subgraph.depth.threads"] == 1


def test_a_gpu_placement_needs_a_gpu_build_unless_run_on_cpu(split: SplitResult, tmp_path: Path) -> None:
    deployed = deploy_split(split, tmp_path, {"seg": {"precision": "fp16", "device": "gpu"}})
    with (
        pytest.raises(BackendError, match=r"TensorrtExecutionProvider.*onnxruntime-gpu"),
        create_runner("split", path=deployed.manifest),
    ):
        pass
    feed = frames(1, seed=2)[0]
    with create_runner("split", path=deployed.manifest, run_on="cpu") as runner:
        got = runner.infer(feed)
        assert runner.facts()["subgraph.seg.device"] == "gpu"  # recorded placement
        assert runner.facts()["subgraph.seg.provider"] == "CPUExecutionProvider"  # where it ran
    np.testing.assert_allclose(got["seg"], whole_outputs(split.source, feed)["seg"], atol=1e-2)


def test_bad_feeds_manifests_and_options_are_refused(split: SplitResult, tmp_path: Path) -> None:
    with (
        create_runner("split", path=split.manifest) as runner,
        pytest.raises(BackendError, match=r"missing \['input'\]"),
    ):
        runner.infer({"x": np.zeros(INPUT_SHAPE, np.float32)})
    with pytest.raises(ModelError, match="does not exist"), create_runner("split", path=tmp_path / "none.json"):
        pass
    with (
        pytest.raises(BackendError, match=r"threads for unknown subgraph\(s\) \['lanes'\]"),
        create_runner("split", path=split.manifest, threads={"lanes": 1}),
    ):
        pass
    with pytest.raises(BackendError, match="inner_backend 'tensorrt' is not one of"):
        create_runner("split", path=split.manifest, inner_backend="tensorrt")
    runner = create_runner("split", path=split.manifest)
    with pytest.raises(BackendError, match="not active"):
        runner.run_encoder(frames(1)[0])


def test_a_subgraph_file_changed_after_the_manifest_is_refused(split: SplitResult, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    copy.mkdir()
    for path in [split.manifest, split.encoder, *split.heads.values()]:
        (copy / path.name).write_bytes(path.read_bytes())
    head = onnx.load(str(copy / "depth.onnx"))
    head.doc_string = "edited"
    onnx.save(head, str(copy / "depth.onnx"))
    with (
        pytest.raises(ModelError, match="changed after the manifest was written"),
        create_runner("split", path=copy / "manifest.json"),
    ):
        pass
    with create_runner("split", path=copy / "manifest.json", verify=False) as runner:  # explicitly unchecked
        assert list(runner.infer(frames(1)[0])) == list(OUTPUTS)
