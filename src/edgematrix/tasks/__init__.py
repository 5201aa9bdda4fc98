"""Task adapters: what the cell pipeline needs to know about one kind of model (data, training,
metric, drawing). Built-in tasks and plugins are keyed by name in
:data:`edgematrix.core.registries.tasks`; :func:`edgematrix.tasks.base.get_task` returns an adapter."""
