"""TensorRT backend through the ``trtexec`` command line (present in every JetPack / TensorRT image).

- :mod:`.loader`: :class:`TrtexecBuildOptions` → the trtexec argv (FP16 / INT8, QDQ or calibration
  cache, DLA with GPU fallback, timing cache, exports), version differences handled.
- :mod:`.parsers`: ``--exportTimes`` / ``--exportProfile`` / ``--exportLayerInfo`` / stdout summary
  parsers and the realized-precision check.
- :mod:`.runner`: :func:`run_trtexec`, :class:`TrtexecMeter` (a LatencyMeter) and
  :class:`TensorrtRunner` (registry name ``tensorrt``).

- :mod:`.inprocess` / :mod:`.outputs`: numpy feeds on the built engine, through Polygraphy's
  TensorRT runner in-process or trtexec ``--loadInputs`` / ``--exportOutput``.

No module here imports TensorRT or Polygraphy at import time; see docs/tensorrt.md for what was and
was not run on hardware.
"""
