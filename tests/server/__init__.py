"""Tests of edgematrix.server (a package, so its conftest does not shadow the shared `conftest` module of other folders)."""
