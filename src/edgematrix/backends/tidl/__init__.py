"""TI TIDL backend (registry name ``tidl``): TI's compile options and the onnxruntime-tidl runner.

- :mod:`.options`: :class:`TidlCompileOptions` → the provider-option dict of TI's
  ``TIDLCompilationProvider`` / ``TIDLExecutionProvider`` (TI's key names).
- :mod:`.runner`: :func:`compile_model` and :class:`TidlRunner`; TI's onnxruntime build is imported
  lazily and its absence is reported clearly.

FX8 emulation for hosts without TI tools: :mod:`edgematrix.optimize.fx8`. See docs/ti.md.
"""
