"""QAT with ModelOpt: BatchNorm folding, fake quantization, QDQ export that ONNX Runtime runs like torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from edgematrix.data.lanes import load_split, preprocess
from edgematrix.data.synthetic_lanes import SyntheticConfig, generate
from edgematrix.models.ufld import OUTPUT_NAMES, UFLDv2
from edgematrix.optimize.qat import fold_batchnorm, qat_lane_model
from edgematrix.train.distill import DistillConfig


def tiny() -> UFLDv2:
    torch.manual_seed(0)
    model = UFLDv2((64, 160), width=8, mlp_mid_dim=32, use_aux=True)
    model.train()
    with torch.no_grad():  # non-trivial BatchNorm statistics
        model(torch.randn(4, 3, 64, 160))
    return model.eval()


def test_fold_batchnorm_keeps_outputs() -> None:
    model = tiny()
    x = torch.randn(2, 3, 64, 160)
    with torch.no_grad():
        ref = model(x)
        folded = fold_batchnorm(model)
        out = model(x)
    # stem + 2 per BasicBlock (8 blocks) + 3 downsample branches + aux (3 branches + head)
    assert folded == 1 + 16 + 3 + 4
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    for a, b in zip(out, ref, strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_qat_exports_qdq_that_onnxruntime_runs_like_torch(tmp_path: Path) -> None:
    root = generate(tmp_path / "syn", SyntheticConfig(train=6, test=1, seed=2))
    split = load_split(root, "train", (64, 160))
    calib = [preprocess(split.images[i : i + 1]) for i in range(4)]
    model = tiny()
    cfg = DistillConfig(epochs=1, batch_size=3, lr=1e-4, amp="off")
    out, fp32 = tmp_path / "qat.onnx", tmp_path / "qat-fp32.onnx"
    res = qat_lane_model(
        model, model, split, calib, cfg, out, fp32, input_shape=(1, 3, 64, 160), output_names=OUTPUT_NAMES,
        progress=False,
    )  # fmt: skip
    assert out.is_file() and fp32.is_file() and res.folded_batchnorms == 20  # aux dropped before folding
    proto = onnx.load(str(out))
    ops = [n.op_type for n in proto.graph.node]
    assert ops.count("DequantizeLinear") == res.qdq_pairs > 0 and "QuantizeLinear" in ops
    assert "BatchNormalization" not in ops and "Constant" not in ops
    # weights are stored as int8 behind DequantizeLinear (no float weight + QuantizeLinear): PTQ's form
    inits = {t.name: t for t in proto.graph.initializer}
    conv_weights = [
        inits[n.input[0]] for n in proto.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in inits
    ]
    assert conv_weights and all(t.data_type == onnx.TensorProto.INT8 for t in conv_weights)
    assert not any(n.op_type == "QuantizeLinear" and n.input[0] in inits for n in proto.graph.node)
    assert res.max_rel_diff < 1e-2
    # a fresh session on another image: the QDQ model agrees with the FP32 model to int8 precision
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = preprocess(split.images[5:6])
    got = sess.run(["loc_row"], {"input": x})[0]
    with torch.no_grad():
        want = model(torch.from_numpy(x))[0].numpy()
    assert np.corrcoef(got.ravel(), want.ravel())[0, 1] > 0.9
    # the FP32 export holds the QAT-trained weights without quantizers: no Q/DQ, same outputs shape
    plain = onnx.load(str(fp32))
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in plain.graph.node)
    fp_out = ort.InferenceSession(str(fp32), providers=["CPUExecutionProvider"]).run(["loc_row"], {"input": x})[0]
    assert fp_out.shape == got.shape and np.corrcoef(fp_out.ravel(), got.ravel())[0, 1] > 0.9
    # the original model is untouched (QAT trains a copy)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
