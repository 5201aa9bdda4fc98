"""The recipe step interface and how a recipe's steps are composed.

A step is built once per cell run with the run's :class:`~edgematrix.pipeline.context.CellContext`
and takes part in every stage:

- ``build``: after the source stage; reads ``ctx.build`` (the candidate so far) and replaces or
  extends it (a new candidate artifact, models measured beside it in ``extra``, recipe facts);
- ``after_measure``: stages of its own after the latency stage (the split pipeline's throughput run);
- ``verdicts``: its gates (JUnit testcases), judged on the same-run measurements in ``ctx.measured``;
- ``facts``: same-run facts for the candidate's ``extra_info`` (e.g. the speedup vs the unpruned model);
- ``report``: its markdown section of report.md.

The steps of a recipe are the registered steps whose :meth:`RecipeStep.applies` accepts it, built
in ``order``. Adding a step is one module with a subclass plus its entry in the registry.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar

from edgematrix.core.registries import recipe_steps
from edgematrix.errors import EdgeMatrixError
from edgematrix.pipeline.context import CellContext, Fact


class RecipeStep(ABC):
    """One optimization of a recipe (see the module docstring)."""

    name: ClassVar[str]
    order: ClassVar[int]  # build order among the steps of one recipe (lower first)
    #: the step changes the torch model (pruning, QAT, distillation): a model given only as ONNX cannot take it
    needs_torch: ClassVar[bool] = False

    def __init__(self, ctx: CellContext) -> None:
        self.ctx = ctx

    @classmethod
    @abstractmethod
    def applies(cls, recipe: Any) -> bool:
        """Whether ``recipe`` (a :class:`edgematrix.matrix.schema.Recipe`) includes this step."""

    def stage_count(self) -> int:
        """How many progress stages :meth:`build` and :meth:`after_measure` print."""
        return 1

    @abstractmethod
    def build(self) -> None:
        """Make this step's artifacts into ``self.ctx.build``."""

    def after_measure(self) -> None:  # noqa: B027 - optional hook
        """Stages after the latency stage (default: none)."""

    def verdicts(self) -> list[Any]:
        """This step's gates on the same-run measurements (``edgematrix.gates.verdicts.Verdict``)."""
        return []

    def facts(self) -> dict[str, Fact]:
        """Same-run facts added to the candidate's ``extra_info``."""
        return {}

    def report(self) -> list[str]:
        """Markdown lines of this step's section of report.md."""
        return []


def step_classes() -> list[type[RecipeStep]]:
    """Every registered step class (built-ins and plugins), in build order."""
    classes = []
    for name in recipe_steps.names():
        cls = recipe_steps.get(name)
        if not (isinstance(cls, type) and issubclass(cls, RecipeStep)):
            raise EdgeMatrixError(f"recipe step {name!r} is {cls!r}, not a RecipeStep subclass")
        classes.append(cls)
    return sorted(classes, key=lambda c: (c.order, c.name))


def compose(ctx: CellContext) -> list[RecipeStep]:
    """The steps of the cell's recipe, in build order, each bound to ``ctx``."""
    return [cls(ctx) for cls in step_classes() if cls.applies(ctx.cell.recipe)]
