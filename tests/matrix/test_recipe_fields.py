"""Recipe sections of the strategies: a fixed pruning ratio (ratio / scope) next to the latency-aware
speedup, and dynamic-range INT8 (quantize.mode); which recipe step each one selects."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from edgematrix.matrix.schema import PruneSection, QuantizeSection, Recipe
from edgematrix.pipeline.steps.base import step_classes


def _steps(recipe: Recipe) -> list[str]:
    return [c.name for c in step_classes() if c.applies(recipe)]


def test_prune_takes_exactly_one_of_speedup_and_ratio() -> None:
    assert PruneSection(speedup=2.0).ratio is None
    fixed = PruneSection(ratio=0.4, scope="global", max_layer_ratio=0.8, ignored_layers=["head.7"])
    assert (fixed.speedup, fixed.ratio, fixed.scope, fixed.max_layer_ratio) == (None, 0.4, "global", 0.8)
    assert PruneSection(ratio=0.3).scope == "local"
    with pytest.raises(ValidationError, match=r"exactly one of speedup .* and ratio .*; got both"):
        PruneSection(speedup=2.0, ratio=0.4)
    with pytest.raises(ValidationError, match="got neither"):
        PruneSection()
    with pytest.raises(ValidationError, match="less than 1"):
        PruneSection(ratio=1.0)


def test_fields_of_the_other_kind_of_pruning_are_refused() -> None:
    with pytest.raises(ValidationError, match="scope apply to a fixed ratio; the latency-aware search prunes"):
        PruneSection(speedup=2.0, scope="global")
    with pytest.raises(ValidationError, match="max_probes, tolerance configure the latency-aware search"):
        PruneSection(ratio=0.4, tolerance=0.1, max_probes=4)
    with pytest.raises(ValidationError, match="max_layer_ratio bounds global pruning; with scope = 'local'"):
        PruneSection(ratio=0.4, max_layer_ratio=0.5)
    with pytest.raises(ValidationError, match=r"max_layer_ratio 0\.3 is below ratio 0\.4"):
        PruneSection(ratio=0.4, scope="global", max_layer_ratio=0.3)


def test_dynamic_quantization_has_no_calibration_fields() -> None:
    q = QuantizeSection(mode="dynamic", per_channel=False)
    assert q.mode == "dynamic" and QuantizeSection().mode == "static"
    with pytest.raises(ValidationError, match=r"calibration_images, method configure.* static quantization"):
        QuantizeSection(mode="dynamic", method="minmax", calibration_images=8)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"precision": "fx8"}, "produces an INT8 model; precision must be 'int8', not 'fx8'"),
        ({"prune": {"ratio": 0.4}}, r"quantizes the FP32 model alone; remove \[prune\]"),
        ({"qat": {}}, r"remove \[qat\]"),
    ],
)
def test_dynamic_quantization_stands_alone(extra: dict, message: str) -> None:
    raw = {"description": "d", "precision": "int8", "quantize": {"mode": "dynamic"}, **extra}
    with pytest.raises(ValidationError, match=message):
        Recipe.model_validate(raw)


def test_each_section_selects_its_step() -> None:
    def recipe(**kw: object) -> Recipe:
        return Recipe.model_validate({"description": "d", **kw})

    q = {"method": "minmax", "calibration_images": 4}
    assert _steps(recipe(precision="fp32", prune={"ratio": 0.4, "scope": "global"})) == ["prune_ratio"]
    assert _steps(recipe(precision="fp32", prune={"speedup": 2.0})) == ["prune"]
    assert _steps(recipe(precision="int8", prune={"ratio": 0.4}, quantize=q)) == ["prune_ratio"]  # it quantizes
    assert _steps(recipe(precision="int8", quantize={"mode": "dynamic"})) == ["dynamic_int8"]
    assert _steps(recipe(precision="int8", quantize=q)) == ["ptq"]
