"""Mixed precision by sensitivity: keep the layers whose quantization costs the most accuracy in float.

1. Score the FP32 model and the fully quantized one.
2. Sensitivity of each candidate layer (Conv / Gemm / MatMul): quantize everything *but* that layer
   and score it; its gain is that score minus the full-INT8 score ("all-but-one": the layer's
   quantization effect in the context of all the others, which is what the deployed model sees).
3. Greedy: add layers to the float set in order of gain and re-quantize + re-score after each,
   until the score is within ``budget`` points of FP32 (or ``max_float_layers`` are in float).

Quantizing and scoring are the caller's (``quantize(excluded, out) -> path``, ``evaluate(path) ->
score``), so the search works for any precision form and metric; the cell passes ONNX Runtime's
quantizer (``nodes_to_exclude``) and the task's accuracy on a held-out subset.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from edgematrix.errors import EdgeMatrixError

QUANTIZABLE_COMPUTE = ("Conv", "Gemm", "MatMul", "ConvTranspose")

Quantize = Callable[[tuple[str, ...], Path], Path]
Evaluate = Callable[[Path], float]


@dataclass(frozen=True)
class LayerSensitivity:
    node: str
    op_type: str
    score_kept_float: float  # score with every other layer quantized
    gain: float  # score_kept_float - full INT8 score


@dataclass
class MixedPrecisionResult:
    path: Path
    budget: float
    fp32_score: float
    int8_score: float
    final_score: float
    float_nodes: list[str]
    sensitivities: list[LayerSensitivity] = field(default_factory=list)
    evaluations: int = 0

    @property
    def met(self) -> bool:
        return self.fp32_score - self.final_score <= self.budget

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "budget": self.budget,
            "fp32_score": self.fp32_score,
            "int8_score": self.int8_score,
            "final_score": self.final_score,
            "float_nodes": list(self.float_nodes),
            "met": self.met,
            "evaluations": self.evaluations,
            "sensitivities": [asdict(s) for s in self.sensitivities],
        }


def candidate_nodes(
    onnx_path: str | os.PathLike[str], op_types: Sequence[str] = QUANTIZABLE_COMPUTE
) -> list[tuple[str, str]]:
    """``(node name, op type)`` of the compute nodes of an FP32 ONNX model, in graph order."""
    from edgematrix.export.onnx_export import load_onnx

    proto = load_onnx(onnx_path)
    nodes = [(n.name, n.op_type) for n in proto.graph.node if n.op_type in op_types]
    unnamed = [op for name, op in nodes if not name]
    if unnamed:
        raise EdgeMatrixError(
            f"{onnx_path} has {len(unnamed)} unnamed {'/'.join(sorted(set(unnamed)))} node(s); "
            "nodes_to_exclude needs node names: re-export the model (torch.onnx names every node)"
        )
    return nodes


def mixed_precision_search(
    fp32_path: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    budget: float,
    quantize: Quantize,
    evaluate: Evaluate,
    max_float_layers: int = 8,
    op_types: Sequence[str] = QUANTIZABLE_COMPUTE,
    progress: Callable[[str], None] | None = None,
) -> MixedPrecisionResult:
    """Find the smallest set of float layers (by greedy sensitivity) that meets ``budget``."""
    if budget < 0:
        raise EdgeMatrixError(f"accuracy_budget must be >= 0 points; got {budget}")
    if max_float_layers < 0:
        raise EdgeMatrixError(f"max_float_layers must be >= 0; got {max_float_layers}")
    nodes = candidate_nodes(fp32_path, op_types)
    if not nodes:
        raise EdgeMatrixError(f"{fp32_path} has no {'/'.join(op_types)} nodes to quantize")
    return _search_impl(Path(fp32_path), Path(out_dir), budget, quantize, evaluate, max_float_layers, nodes, progress)


def _search_impl(
    fp32_path: Path,
    out_dir: Path,
    budget: float,
    quantize: Quantize,
    evaluate: Evaluate,
    max_float_layers: int,
    nodes: list[tuple[str, str]],
    progress: Callable[[str], None] | None,
) -> MixedPrecisionResult:
    out_dir.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    fp32 = evaluate(fp32_path)
    full_path = quantize((), out_dir / "int8-full.onnx")
    full = evaluate(full_path)
    evaluations = 2
    say(f"FP32 {fp32:.3f}, full INT8 {full:.3f} (budget {budget:g})")
    result = MixedPrecisionResult(full_path, budget, fp32, full, full, [], [], evaluations)
    if fp32 - full <= budget or max_float_layers == 0:
        result.evaluations = evaluations
        return result
    sens = []
    for i, (name, op) in enumerate(nodes):
        path = quantize((name,), out_dir / f"all-but-{i}.onnx")
        score = evaluate(path)
        evaluations += 1
        sens.append(LayerSensitivity(name, op, score, score - full))
        path.unlink(missing_ok=True)
        say(f"[{i + 1}/{len(nodes)}] {name} kept float: {score:.3f} ({score - full:+.3f})")
    ranked = sorted(sens, key=lambda s: (-s.gain, s.node))
    result.sensitivities = ranked
    kept: list[str] = []
    best_path, best_score = full_path, full
    for s in ranked[:max_float_layers]:
        kept.append(s.node)
        path = quantize(tuple(kept), out_dir / f"mixed-{len(kept)}.onnx")
        score = evaluate(path)
        evaluations += 1
        say(f"float: {', '.join(kept)} → {score:.3f}")
        best_path, best_score = path, score
        if fp32 - score <= budget:
            break
    result.path, result.final_score, result.float_nodes, result.evaluations = best_path, best_score, kept, evaluations
    return result
