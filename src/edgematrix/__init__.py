"""edgematrix: a containerized build-and-benchmark matrix for edge perception models."""

__version__ = "0.1.0"
