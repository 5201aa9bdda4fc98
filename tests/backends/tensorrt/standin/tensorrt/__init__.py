"""A STAND-IN for NVIDIA's ``tensorrt`` Python module, for the tests only. It is not TensorRT.

TensorRT cannot be installed on this project's machines. This module implements only the part of
TensorRT 10's documented Python API (``tensorrt.Runtime``, ``ICudaEngine``, ``IExecutionContext``,
``IOutputAllocator``; the names, signatures and call order of NVIDIA/TensorRT
``python/src/infer/pyCore.cpp`` and its API docs) that Polygraphy's ``EngineFromBytes`` and
``TrtRunner`` call, so that Polygraphy's REAL code runs end to end here:

- ``Runtime.deserialize_cuda_engine(bytes)`` accepts only the stand-in engine format that
  ``tests/backends/tensorrt/fake_trtexec.py`` writes for ``--saveEngine``: the line
  ``EDGEMATRIX STAND-IN ENGINE 1``, a JSON header line (``precision``, ``onnx``), then the ONNX
  model's bytes. Anything else is refused (logged as an error, ``None`` returned, as TensorRT does).
- ``IExecutionContext.execute_async_v3`` reads each input from the device address Polygraphy set
  (``set_tensor_address``; "device" memory is host memory of the stand-in CUDA runtime,
  ``cudart_host.c``), computes the ONNX model with ONNX Runtime on the CPU, asks the output
  allocator for memory (``reallocate_output_async``, else ``reallocate_output``), writes the output
  there and reports its shape (``notify_shape``), as TensorRT 10 does for outputs bound to an
  ``IOutputAllocator``. An FP16 engine rounds its float outputs to float16 (the only trace of its
  precision here); an INT8 engine computes its QDQ model as ONNX Runtime does.

What the tests built on it prove: edgematrix drives Polygraphy's TensorRT runner correctly and
returns what the engine computed. They say nothing about TensorRT's numerics or kernels.
"""

from __future__ import annotations

import ctypes
import enum
import json

import numpy as np

__version__ = "10.6.0"

ENGINE_MAGIC = b"EDGEMATRIX STAND-IN ENGINE 1\n"


class DataType(enum.Enum):
    FLOAT = 0
    HALF = 1
    INT8 = 2
    INT32 = 3
    BOOL = 4
    UINT8 = 5
    FP8 = 6
    BF16 = 7
    INT64 = 8
    INT4 = 9


float32 = DataType.FLOAT
float16 = DataType.HALF
bfloat16 = DataType.BF16
int8 = DataType.INT8
int32 = DataType.INT32
int64 = DataType.INT64
bool = DataType.BOOL
uint8 = DataType.UINT8
fp8 = DataType.FP8
int4 = DataType.INT4

_NUMPY = {
    DataType.FLOAT: np.float32,
    DataType.HALF: np.float16,
    DataType.INT8: np.int8,
    DataType.INT32: np.int32,
    DataType.INT64: np.int64,
    DataType.BOOL: np.bool_,
    DataType.UINT8: np.uint8,
}
_FROM_ORT = {
    "tensor(float)": DataType.FLOAT,
    "tensor(float16)": DataType.HALF,
    "tensor(int8)": DataType.INT8,
    "tensor(int32)": DataType.INT32,
    "tensor(int64)": DataType.INT64,
    "tensor(bool)": DataType.BOOL,
    "tensor(uint8)": DataType.UINT8,
}


class TensorIOMode(enum.Enum):
    NONE = 0
    INPUT = 1
    OUTPUT = 2


class TensorFormat(enum.Enum):
    LINEAR = 0
    CHW2 = 1
    HWC8 = 2
    CHW4 = 3
    CHW16 = 4
    CHW32 = 5
    DHWC8 = 6
    CDHW32 = 7
    HWC = 8
    DLA_LINEAR = 9
    DLA_HWC4 = 10
    HWC16 = 11
    DHWC = 12


class ExecutionContextAllocationStrategy(enum.Enum):
    STATIC = 0
    ON_PROFILE_CHANGE = 1
    USER_MANAGED = 2


class Dims(tuple):
    """TensorRT's ``Dims``: compares equal to a tuple of the same sizes; -1 marks a dynamic size."""


class ILogger:
    class Severity(enum.Enum):
        INTERNAL_ERROR = 0
        ERROR = 1
        WARNING = 2
        INFO = 3
        VERBOSE = 4

    def __init__(self) -> None:
        pass

    def log(self, severity: ILogger.Severity, msg: str) -> None:  # pragma: no cover - overridden
        pass


class Logger(ILogger):
    INTERNAL_ERROR = ILogger.Severity.INTERNAL_ERROR
    ERROR = ILogger.Severity.ERROR
    WARNING = ILogger.Severity.WARNING
    INFO = ILogger.Severity.INFO
    VERBOSE = ILogger.Severity.VERBOSE

    def __init__(self, min_severity: ILogger.Severity = ILogger.Severity.WARNING) -> None:
        super().__init__()
        self.min_severity = min_severity


class IOutputAllocator:
    def __init__(self) -> None:
        pass

    def reallocate_output(self, tensor_name: str, memory: int, size: int, alignment: int) -> int:
        return 0

    def notify_shape(self, tensor_name: str, shape: Dims) -> None:
        pass


class IDebugListener:
    def __init__(self) -> None:
        pass


def init_libnvinfer_plugins(logger: ILogger, namespace: str) -> bool:
    return True


class Runtime:
    def __init__(self, logger: ILogger) -> None:
        self.logger = logger
        self.engine_host_code_allowed = False

    def deserialize_cuda_engine(self, serialized_engine: bytes) -> ICudaEngine | None:
        data = bytes(serialized_engine)
        if not data.startswith(ENGINE_MAGIC):
            self.logger.log(ILogger.Severity.ERROR, "stand-in: not an engine written by fake_trtexec.py")
            return None
        header, _, model = data[len(ENGINE_MAGIC) :].partition(b"\n")
        return ICudaEngine(json.loads(header), model)


class ICudaEngine:
    def __init__(self, header: dict, onnx_bytes: bytes) -> None:
        import onnxruntime as ort

        self.precision = header["precision"]
        self._session = ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
        self._io: list[tuple[str, TensorIOMode, DataType, Dims]] = []
        for mode, values in (
            (TensorIOMode.INPUT, self._session.get_inputs()),
            (TensorIOMode.OUTPUT, self._session.get_outputs()),
        ):
            for v in values:
                shape = Dims(d if isinstance(d, int) else -1 for d in v.shape)
                self._io.append((v.name, mode, _FROM_ORT[v.type], shape))
        self._by_name = {io[0]: io for io in self._io}
        self.streamable_weights_size = 0
        self.num_optimization_profiles = 1

    @property
    def num_io_tensors(self) -> int:
        return len(self._io)

    def get_tensor_name(self, index: int) -> str:
        return self._io[index][0]

    def get_tensor_mode(self, name: str) -> TensorIOMode:
        return self._by_name[name][1] if name in self._by_name else TensorIOMode.NONE

    def get_tensor_dtype(self, name: str) -> DataType:
        return self._by_name[name][2]

    def get_tensor_shape(self, name: str) -> Dims:
        return self._by_name[name][3]

    def get_tensor_format(self, name: str, profile_index: int | None = None) -> TensorFormat:
        return TensorFormat.LINEAR

    def is_shape_inference_io(self, name: str) -> bool:
        return False

    def create_execution_context(
        self, strategy: ExecutionContextAllocationStrategy = ExecutionContextAllocationStrategy.STATIC
    ) -> IExecutionContext:
        return IExecutionContext(self)


class IExecutionContext:
    def __init__(self, engine: ICudaEngine) -> None:
        self.engine = engine
        self.active_optimization_profile = 0
        self._shapes: dict[str, Dims] = {}
        self._addresses: dict[str, int] = {}
        self._allocators: dict[str, IOutputAllocator] = {}
        self.debug_listener: IDebugListener | None = None
        self.all_tensors_debug_state = False
        self.executions = 0

    def get_tensor_shape(self, name: str) -> Dims:
        return self._shapes.get(name, self.engine.get_tensor_shape(name))

    def set_input_shape(self, name: str, shape: tuple[int, ...]) -> bool:
        want = self.engine.get_tensor_shape(name)
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(want) or any(w != -1 and w != s for w, s in zip(want, shape, strict=True)):
            return False
        self._shapes[name] = Dims(shape)
        return True

    def get_tensor_address(self, name: str) -> int:
        return self._addresses.get(name, 0)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._addresses[name] = int(memory)
        return True

    def set_output_allocator(self, name: str, output_allocator: IOutputAllocator) -> bool:
        if self.engine.get_tensor_mode(name) != TensorIOMode.OUTPUT:
            return False
        self._allocators[name] = output_allocator
        return True

    def set_optimization_profile_async(self, profile_index: int, stream_handle: int) -> bool:
        return profile_index == 0

    def set_all_tensors_debug_state(self, flag: bool) -> None:
        self.all_tensors_debug_state = flag  # no tensor of a stand-in engine is marked as a debug tensor

    def set_debug_listener(self, listener: IDebugListener) -> bool:
        self.debug_listener = listener
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        if not stream_handle:
            return False
        feed = {}
        for name, mode, dtype, _ in self.engine._io:
            if mode != TensorIOMode.INPUT:
                continue
            shape = self.get_tensor_shape(name)
            address = self._addresses.get(name, 0)
            if -1 in shape or not address:
                return False  # shape or address not set: TensorRT refuses to enqueue
            count = int(np.prod(shape, dtype=np.int64))
            itemsize = np.dtype(_NUMPY[dtype]).itemsize
            raw = ctypes.string_at(address, count * itemsize)
            feed[name] = np.frombuffer(raw, dtype=_NUMPY[dtype]).reshape(shape)
        names = [n for n, mode, _, _ in self.engine._io if mode == TensorIOMode.OUTPUT]
        results = self.engine._session.run(names, feed)
        for name, value in zip(names, results, strict=True):
            value = np.ascontiguousarray(value)
            if self.engine.precision == "fp16" and value.dtype == np.float32:
                value = value.astype(np.float16).astype(np.float32)
            allocator = self._allocators.get(name)
            if allocator is None:
                return False
            current = self._addresses.get(name, 0)
            if hasattr(allocator, "reallocate_output_async"):  # TensorRT 10 prefers the async form when overridden
                ptr = allocator.reallocate_output_async(name, current, value.nbytes, 256, stream_handle)
            else:
                ptr = allocator.reallocate_output(name, current, value.nbytes, 256)
            if not ptr:
                return False
            ctypes.memmove(int(ptr), value.ctypes.data, value.nbytes)
            self._addresses[name] = int(ptr)
            self._shapes[name] = Dims(value.shape)
            allocator.notify_shape(name, Dims(value.shape))
        self.executions += 1
        return True
