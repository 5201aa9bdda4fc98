"""trt_runner built once per test session (native and aarch64 cross), in a temporary cache."""

from __future__ import annotations

import pytest

from edgematrix.backends.trt_cpp import BuiltRunner, build_runner


@pytest.fixture(scope="session")
def runner_cache(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("trt_runner_cache")


@pytest.fixture(scope="session")
def native_runner(runner_cache) -> BuiltRunner:
    return build_runner("native", cache_dir=runner_cache, tensorrt="OFF")


@pytest.fixture(scope="session")
def aarch64_runner(runner_cache) -> BuiltRunner:
    return build_runner("aarch64", cache_dir=runner_cache)
