"""Recipe steps: each optimization a recipe composes (prune, QAT, PTQ, mixed precision, FX8, FP16,
split) is one registered class that owns its stages, artifacts, verdicts and report section
(:class:`edgematrix.pipeline.steps.base.RecipeStep`; registry
:data:`edgematrix.core.registries.recipe_steps`, plugins through the ``edgematrix.recipe_steps``
entry points)."""
