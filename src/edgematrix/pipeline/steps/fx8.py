"""TI's 8-bit fixed point (recipes of precision ``fx8``): the symmetric INT8 QDQ model with every scale
rounded up to a power of two, as TDA4's TIDL computes; the INT8 model is measured beside it."""

from __future__ import annotations

from typing import Any

from edgematrix.pipeline.context import Artifact
from edgematrix.pipeline.steps.base import RecipeStep


class Fx8Step(RecipeStep):
    name = "fx8"
    order = 60

    @classmethod
    def applies(cls, recipe: Any) -> bool:
        return str(recipe.precision) == "fx8"

    def build(self) -> None:
        from edgematrix.core.cache import reuse, seal
        from edgematrix.errors import MatrixError
        from edgematrix.optimize.fx8 import fx8_from_qdq

        ctx = self.ctx
        build = ctx.build
        assert build is not None
        if build.candidate.precision != "int8":
            raise MatrixError(
                f"recipe {ctx.cell.recipe_name!r}: fx8 rewrites an INT8 QDQ model; add a [quantize] section "
                f"(the candidate so far is {build.candidate.precision})"
            )
        int8 = build.candidate
        ctx.stages.start("fx8", "power-of-two scales on every QDQ node (TDA4 8-bit fixed point)")
        fx8 = int8.path.with_name(int8.path.stem + "-fx8.onnx")
        if reuse(fx8, "FX8 model") and reuse(fx8.with_suffix(".fx8.json"), "FX8 facts"):
            import json

            summary = json.loads(fx8.with_suffix(".fx8.json").read_text())
        else:
            from edgematrix.core.cache import write_json_entry

            summary = {
                k: v for k, v in fx8_from_qdq(int8.path, fx8).summary().items() if isinstance(v, int | float | str)
            }
            seal(fx8)
            write_json_entry(fx8.with_suffix(".fx8.json"), summary)
        build.extra["int8"] = int8
        build.candidate = Artifact(fx8, "fx8")
        build.facts.update(summary)
        ctx.stages.done(f"{fx8.name}: " + ", ".join(f"{k} {v}" for k, v in summary.items()))

    def verdicts(self) -> list[Any]:
        from edgematrix.errors import EdgeMatrixError
        from edgematrix.gates.verdicts import Verdict
        from edgematrix.optimize.fx8 import verify_power_of_two

        assert self.ctx.build is not None
        try:
            checked = verify_power_of_two(self.ctx.build.candidate.path)
        except EdgeMatrixError as e:
            return [Verdict("fx8_power_of_two_scales", "failed", str(e))]
        return [Verdict("fx8_power_of_two_scales", "passed", f"every QDQ scale is a power of two ({checked})")]

    def report(self) -> list[str]:
        m, primary = self.ctx.measured, self.ctx.primary
        backend = next(b for b, r in m if r == "candidate")  # the backend that ran the emulation
        if (backend, "int8") not in m:
            backend = primary
        c, i, r = (m[backend, role].score.accuracy for role in ("candidate", "int8", "reference"))
        return [
            "",
            "## FX8 (TDA4 fixed point)",
            "",
            f"FX8 {c:.2f} vs INT8 {i:.2f} vs FP32 {r:.2f}: FX8 − INT8 {c - i:+.2f} points, FX8 − FP32 {c - r:+.2f} points.",
        ]
