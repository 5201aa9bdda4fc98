"""On-device accuracy validation: a pickle-free bundle, run locally and through the server, scored on the host."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from edgematrix.errors import RemoteError, WireFormatError
from edgematrix.server.app import DeviceServer
from edgematrix.server.bundle import EvalBundle, compare_outputs, run_bundle_local, validate_outputs
from edgematrix.server.client import run_bundle_remote
from edgematrix.server.wire import encode_frame

from .serverkit import TOKEN


@pytest.fixture
def bundle() -> EvalBundle:
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 16)).astype(np.float32)
    return EvalBundle.from_batch({"x": x}, ids=[f"img{i}.jpg" for i in range(6)], meta={"task": "toy"})


def top1(outputs: dict[str, np.ndarray]) -> float:
    """A toy task metric: percent of samples whose argmax is class 0 (what a task's scorer would compute)."""
    return float(np.mean(outputs["probs"][:, 0].argmax(-1) == 0) * 100)


def test_bundle_save_load_round_trip(tmp_path: Path, bundle: EvalBundle) -> None:
    folder = bundle.save(tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["samples"] == 6 and manifest["inputs"]["x"] == {"dtype": "<f4", "sample_shape": [1, 16]}
    loaded = EvalBundle.load(folder)
    np.testing.assert_array_equal(loaded.inputs["x"], bundle.inputs["x"])
    assert loaded.ids == bundle.ids and loaded.meta == {"task": "toy"}


def test_bundle_load_detects_tampering_and_refuses_pickled_arrays(tmp_path: Path, bundle: EvalBundle) -> None:
    folder = bundle.save(tmp_path / "b")
    data = bytearray((folder / "inputs.npz").read_bytes())
    data[-40] ^= 0xFF
    (folder / "inputs.npz").write_bytes(bytes(data))
    with pytest.raises(WireFormatError, match="does not match the sha256"):
        EvalBundle.load(folder)
    with pytest.raises(WireFormatError, match="numeric array"):
        EvalBundle({"x": np.array([{"a": 1}], dtype=object)})
    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object))  # numpy pickles object arrays
    from edgematrix.server.wire import npz_to_arrays

    with pytest.raises(WireFormatError, match="has dtype object; only bool, integer and float arrays travel"):
        npz_to_arrays((tmp_path / "obj.npz").read_bytes())


def test_remote_run_equals_local_run(server: DeviceServer, mlp_model: Path, bundle: EvalBundle) -> None:
    local = run_bundle_local(mlp_model, bundle)
    remote = run_bundle_remote(server.url, mlp_model, bundle, token=TOKEN)
    assert set(remote) == {"probs"} and remote["probs"].shape == (6, 1, 4)
    np.testing.assert_array_equal(remote["probs"], local["probs"])
    result = validate_outputs(bundle, local, remote, top1)
    assert result.delta == 0.0 and result.outputs["probs"].max_abs == 0.0
    assert result.host_metric == top1(local)


def test_validation_reports_metric_delta_and_output_diffs(bundle: EvalBundle, mlp_model: Path) -> None:
    host = run_bundle_local(mlp_model, bundle)
    device = {"probs": host["probs"].copy()}
    device["probs"][0, 0] = device["probs"][0, 0][::-1]  # one sample's prediction flips on "the device"
    result = validate_outputs(bundle, host, device, top1)
    assert result.delta == pytest.approx(top1(device) - top1(host)) and result.delta != 0
    assert result.outputs["probs"].max_abs == pytest.approx(float(np.abs(host["probs"] - device["probs"]).max()))
    assert result.as_dict()["samples"] == 6
    with pytest.raises(WireFormatError, match="differ in names"):
        compare_outputs(host, {"other": device["probs"]})


def test_run_with_wrong_input_name_is_a_clear_422(server: DeviceServer, mlp_model: Path) -> None:
    wrong = EvalBundle.from_batch({"image": np.zeros((2, 16), np.float32)})
    with pytest.raises(
        RemoteError, match=r"answered 422: .*feed has inputs \['image'\]; expected \{x: float32\[1, 16\]\}"
    ):
        run_bundle_remote(server.url, mlp_model, wrong, token=TOKEN)


def test_run_refuses_a_bundle_that_is_not_npz(server: DeviceServer, mlp_model: Path) -> None:
    import urllib.error
    import urllib.request

    body = encode_frame({}, {"model": mlp_model.read_bytes(), "bundle": b"PK not really"})
    req = urllib.request.Request(server.url + "/v1/run", data=body, headers={"Authorization": f"Bearer {TOKEN}"})
    with pytest.raises(urllib.error.HTTPError) as info:
        urllib.request.urlopen(req, timeout=30)
    assert info.value.code == 400
    assert "bundle is not a valid .npz" in json.loads(info.value.read())["error"]["message"]
