"""trt_runner: the C++ TensorRT latency runner of the DriveOS image, built and run from Python.

The runner's sources live in ``docker/driveos/trt_runner`` (C++17, CMake). The DriveOS image's
``cross`` stage compiles it against TensorRT for aarch64; on any host, :func:`build_runner`
compiles it natively or with the distribution's aarch64 cross toolchain (without TensorRT: the
``--cpu-selftest`` host self-check only), and :func:`run_runner` runs it, under qemu-user when
the binary is aarch64 and the host is not, and parses its JSON into a
:class:`~edgematrix.measure.meter.LatencyReport`.
"""

from edgematrix.backends.trt_cpp.build import BuiltRunner, build_runner, default_source_dir, elf_machine, source_hash
from edgematrix.backends.trt_cpp.run import (
    RESULT_SCHEMA,
    RunnerResult,
    TrtCppMeter,
    emulator_for,
    parse_result,
    report_from_json,
    run_runner,
)

__all__ = [
    "RESULT_SCHEMA",
    "BuiltRunner",
    "RunnerResult",
    "TrtCppMeter",
    "build_runner",
    "default_source_dir",
    "elf_machine",
    "emulator_for",
    "parse_result",
    "report_from_json",
    "run_runner",
    "source_hash",
]
