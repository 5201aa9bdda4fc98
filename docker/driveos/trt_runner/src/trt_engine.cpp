#include "trt_engine.h"

#include <NvInferRuntime.h>
#include <NvInferVersion.h>
#include <cuda_runtime_api.h>

#include <chrono>
#include <cstring>
#include <fstream>
#include <iostream>
#include <type_traits>

#include "cpu_engine.h"
#include "errors.h"
#include "io.h"

#if !defined(NV_TENSORRT_MAJOR) || (NV_TENSORRT_MAJOR < 8) || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR < 5)
#error "trt_runner needs TensorRT >= 8.5 (name-based I/O: setTensorAddress / enqueueV3)"
#endif

namespace trt_runner {

namespace {

void check_cuda(cudaError_t status, const std::string& what) {
    if (status != cudaSuccess) {
        throw RunnerError(kExitRuntime, what + " failed: " + cudaGetErrorName(status) + " (" +
                                            cudaGetErrorString(status) + ")");
    }
}

class Logger final : public nvinfer1::ILogger {
public:
    explicit Logger(Severity threshold) : threshold_(threshold) {}

    void log(Severity severity, nvinfer1::AsciiChar const* msg) noexcept override {
        if (severity <= threshold_) {
            std::cerr << "[TensorRT] " << label(severity) << ": " << msg << '\n';
        }
        if (severity <= Severity::kERROR) {
            try {
                last_error_ = msg;
            } catch (...) {  // log() must not throw; losing the text only shortens a later message
            }
        }
    }

    std::string last_error() const { return last_error_.empty() ? "no TensorRT error logged" : last_error_; }

private:
    static const char* label(Severity s) {
        switch (s) {
            case Severity::kINTERNAL_ERROR: return "internal error";
            case Severity::kERROR: return "error";
            case Severity::kWARNING: return "warning";
            case Severity::kINFO: return "info";
            case Severity::kVERBOSE: return "verbose";
        }
        return "log";
    }

    Severity threshold_;
    std::string last_error_;
};

std::string version_text(std::int64_t v) {
    // getInferLibVersion(): major*1000 + minor*100 + patch up to 8.x, major*10000 + minor*100 + patch from 9.x on.
    std::int64_t major, minor, patch;
    if (v >= 10000) {
        major = v / 10000;
        minor = (v / 100) % 100;
        patch = v % 100;
    } else {
        major = v / 1000;
        minor = (v / 100) % 10;
        patch = v % 100;
    }
    return std::to_string(major) + "." + std::to_string(minor) + "." + std::to_string(patch);
}

std::size_t element_size(nvinfer1::DataType t) {
    using nvinfer1::DataType;
    switch (t) {
        case DataType::kFLOAT: return 4;
        case DataType::kHALF: return 2;
        case DataType::kINT8: return 1;
        case DataType::kINT32: return 4;
        case DataType::kBOOL: return 1;
        case DataType::kUINT8: return 1;
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 6)
        case DataType::kFP8: return 1;
#endif
#if NV_TENSORRT_MAJOR >= 10
        case DataType::kBF16: return 2;
        case DataType::kINT64: return 8;
#endif
        default: break;
    }
    throw RunnerError(kExitRuntime, "engine I/O tensor has data type " + std::to_string(static_cast<int>(t)) +
                                        ", which trt_runner does not allocate (supported: float32, float16, "
                                        "bfloat16, int8, uint8, int32, int64, bool, fp8)");
}

std::string type_name(nvinfer1::DataType t) {
    using nvinfer1::DataType;
    switch (t) {
        case DataType::kFLOAT: return "float32";
        case DataType::kHALF: return "float16";
        case DataType::kINT8: return "int8";
        case DataType::kINT32: return "int32";
        case DataType::kBOOL: return "bool";
        case DataType::kUINT8: return "uint8";
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 6)
        case DataType::kFP8: return "fp8";
#endif
#if NV_TENSORRT_MAJOR >= 10
        case DataType::kBF16: return "bfloat16";
        case DataType::kINT64: return "int64";
#endif
        default: break;
    }
    return "type" + std::to_string(static_cast<int>(t));
}

// The I/O protocol's code of a TensorRT type (io.h); throws for types the protocol does not carry.
DType protocol_dtype(nvinfer1::DataType t, const std::string& name) {
    using nvinfer1::DataType;
    switch (t) {
        case DataType::kFLOAT: return DType::kFloat32;
        case DataType::kHALF: return DType::kFloat16;
        case DataType::kINT8: return DType::kInt8;
        case DataType::kINT32: return DType::kInt32;
        case DataType::kBOOL: return DType::kBool;
        case DataType::kUINT8: return DType::kUInt8;
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 6)
        case DataType::kFP8: return DType::kFp8E4M3;
#endif
#if NV_TENSORRT_MAJOR >= 10
        case DataType::kBF16: return DType::kBFloat16;
        case DataType::kINT64: return DType::kInt64;
#endif
        default: break;
    }
    throw RunnerError(kExitRuntime, "I/O tensor '" + name + "' has type " + type_name(t) +
                                        ", which --serve does not carry (float32, float16, bfloat16, int8, uint8, "
                                        "int32, int64, bool, fp8)");
}

std::string dims_text(const nvinfer1::Dims& d) {
    std::string s;
    for (int i = 0; i < d.nbDims; ++i) {
        s += (i ? "x" : "") + std::to_string(static_cast<std::int64_t>(d.d[i]));
    }
    return s.empty() ? "scalar" : s;
}

bool has_unknown_dim(const nvinfer1::Dims& d) {
    for (int i = 0; i < d.nbDims; ++i) {
        if (d.d[i] < 0) return true;
    }
    return false;
}

// float16 bits of k / 1024 for |k| < 1024: exact (11 significant bits), no rounding needed.
std::uint16_t half_of_fraction(std::int32_t k) {
    if (k == 0) return 0;
    const auto sign = static_cast<std::uint16_t>(k < 0 ? 0x8000 : 0);
    std::uint32_t m = static_cast<std::uint32_t>(k < 0 ? -k : k);
    int e = 0;
    while ((m >> (e + 1)) != 0) ++e;  // m = 1.f * 2^e, 0 <= e <= 9
    const std::uint16_t exponent = static_cast<std::uint16_t>(e - 10 + 15);
    const std::uint16_t mantissa = static_cast<std::uint16_t>((m - (1u << e)) << (10 - e));
    return static_cast<std::uint16_t>(sign | (exponent << 10) | mantissa);
}

// Deterministic input bytes: floats uniform in [-1, 1), integers and bools 0 or 1 (like
// edgematrix.measure.meter.random_feed), fp8 one of {0, +-0.5, +-1}.
std::vector<unsigned char> fill_bytes(nvinfer1::DataType t, std::size_t bytes, Lcg& lcg) {
    using nvinfer1::DataType;
    std::vector<unsigned char> out(bytes, 0);
    const std::size_t es = element_size(t);
    const std::size_t n = bytes / es;
    for (std::size_t i = 0; i < n; ++i) {
        unsigned char* p = out.data() + i * es;
        switch (t) {
            case DataType::kFLOAT: {
                const float v = lcg.next_float();
                std::memcpy(p, &v, 4);
                break;
            }
            case DataType::kHALF: {
                const auto k = static_cast<std::int32_t>(lcg.next_u32() % 2047u) - 1023;
                const std::uint16_t h = half_of_fraction(k);
                std::memcpy(p, &h, 2);
                break;
            }
#if NV_TENSORRT_MAJOR >= 10
            case DataType::kBF16: {
                const float v = lcg.next_float();
                std::uint32_t bits;
                std::memcpy(&bits, &v, 4);
                const auto b = static_cast<std::uint16_t>(bits >> 16);  // truncation: still in [-1, 1)
                std::memcpy(p, &b, 2);
                break;
            }
            case DataType::kINT64: {
                const std::int64_t v = lcg.next_u32() & 1u;
                std::memcpy(p, &v, 8);
                break;
            }
#endif
#if NV_TENSORRT_MAJOR > 8 || (NV_TENSORRT_MAJOR == 8 && NV_TENSORRT_MINOR >= 6)
            case DataType::kFP8: {
                static const unsigned char kE4M3[5] = {0x00, 0x30, 0x38, 0xB0, 0xB8};  // 0, .5, 1, -.5, -1
                *p = kE4M3[lcg.next_u32() % 5u];
                break;
            }
#endif
            case DataType::kINT32: {
                const std::int32_t v = static_cast<std::int32_t>(lcg.next_u32() & 1u);
                std::memcpy(p, &v, 4);
                break;
            }
            case DataType::kINT8:
            case DataType::kUINT8:
            case DataType::kBOOL:
                *p = static_cast<unsigned char>(lcg.next_u32() & 1u);
                break;
            default:
                break;  // element_size() above already rejected other types
        }
    }
    return out;
}

std::vector<char> read_file(const std::string& path, const std::string& what) {
    std::ifstream in(path, std::ios::binary | std::ios::ate);
    if (!in) {
        throw RunnerError(kExitEngineFile, what + " " + path + " cannot be opened; check the path");
    }
    const std::streamsize size = in.tellg();
    if (size <= 0) {
        throw RunnerError(kExitEngineFile, what + " " + path + " is empty");
    }
    std::vector<char> data(static_cast<std::size_t>(size));
    in.seekg(0);
    if (!in.read(data.data(), size)) {
        throw RunnerError(kExitEngineFile, what + " " + path + " could not be read completely");
    }
    return data;
}

struct DeviceBuffer {
    void* ptr = nullptr;
    std::size_t bytes = 0;
    DeviceBuffer() = default;
    DeviceBuffer(const DeviceBuffer&) = delete;
    DeviceBuffer& operator=(const DeviceBuffer&) = delete;
    ~DeviceBuffer() {
        if (ptr != nullptr) cudaFree(ptr);
    }
};

// Owners of a CUDA stream / event, so a constructor that throws half-way releases what it made.
struct CudaStream {
    cudaStream_t handle = nullptr;
    CudaStream() { check_cuda(cudaStreamCreateWithFlags(&handle, cudaStreamNonBlocking), "cudaStreamCreate"); }
    CudaStream(const CudaStream&) = delete;
    CudaStream& operator=(const CudaStream&) = delete;
    ~CudaStream() {
        if (handle != nullptr) cudaStreamDestroy(handle);
    }
};

struct CudaEvent {
    cudaEvent_t handle = nullptr;
    CudaEvent() { check_cuda(cudaEventCreate(&handle), "cudaEventCreate"); }
    CudaEvent(const CudaEvent&) = delete;
    CudaEvent& operator=(const CudaEvent&) = delete;
    ~CudaEvent() {
        if (handle != nullptr) cudaEventDestroy(handle);
    }
};

struct IoTensor {
    std::string name;
    bool is_input = false;
    nvinfer1::DataType type{};
    nvinfer1::Dims shape{};
    std::size_t bytes = 0;
    std::unique_ptr<DeviceBuffer> buffer;
    std::string source;  // for inputs: "lcg" or the file it was read from
    bool vectorized = false;  // a vectorized format (padded, not C order): not served
};

class TensorRtEngine final : public Engine {
public:
    explicit TensorRtEngine(const TrtOptions& options);
    ~TensorRtEngine() override;

    std::string backend() const override { return "tensorrt"; }
    std::string timer() const override { return "cuda_event"; }
    void run() override { enqueue(); }
    void synchronize() override { check_cuda(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }
    Timing run_timed() override;
    Facts facts() const override { return facts_; }
    std::vector<Tensor> io_spec() const override;
    std::vector<Tensor> infer(const std::vector<Tensor>& inputs) override;

private:
    void enqueue();
    void resolve_input_shapes(const TrtOptions& options);
    void allocate_and_bind(const TrtOptions& options);
    void collect_facts(const TrtOptions& options, std::size_t engine_bytes);

    Logger logger_;
    std::unique_ptr<nvinfer1::IRuntime> runtime_;
    std::unique_ptr<nvinfer1::ICudaEngine> engine_;
    std::unique_ptr<nvinfer1::IExecutionContext> context_;
    // Declared after the TensorRT objects and before the buffers: destroyed in the reverse order.
    std::unique_ptr<CudaStream> stream_owner_;
    std::unique_ptr<CudaEvent> start_owner_, end_owner_;
    cudaStream_t stream_ = nullptr;
    cudaEvent_t start_ = nullptr;
    cudaEvent_t end_ = nullptr;
    std::vector<IoTensor> io_;
    Facts facts_;
};

TensorRtEngine::TensorRtEngine(const TrtOptions& options)
    : logger_(options.verbose ? nvinfer1::ILogger::Severity::kVERBOSE : nvinfer1::ILogger::Severity::kWARNING) {
    const std::vector<char> blob = read_file(options.engine_path, "engine file");

    int device_count = 0;
    check_cuda(cudaGetDeviceCount(&device_count), "cudaGetDeviceCount (is the NVIDIA driver loaded?)");
    if (options.device < 0 || options.device >= device_count) {
        throw RunnerError(kExitUsage, "--device " + std::to_string(options.device) + " does not exist; this host has " +
                                          std::to_string(device_count) + " CUDA device(s)");
    }
    check_cuda(cudaSetDevice(options.device), "cudaSetDevice");

    runtime_.reset(nvinfer1::createInferRuntime(logger_));
    if (!runtime_) {
        throw RunnerError(kExitRuntime, "createInferRuntime failed: " + logger_.last_error());
    }
    engine_.reset(runtime_->deserializeCudaEngine(blob.data(), blob.size()));
    if (!engine_) {
        throw RunnerError(kExitRuntime,
                          "TensorRT could not deserialize " + options.engine_path + ": " + logger_.last_error() +
                              ". An engine only loads with the TensorRT version and GPU it was built for; rebuild it "
                              "on this device (trtexec --onnx=MODEL --saveEngine=FILE)");
    }
    context_.reset(engine_->createExecutionContext());
    if (!context_) {
        throw RunnerError(kExitRuntime, "createExecutionContext failed: " + logger_.last_error());
    }
    stream_owner_ = std::make_unique<CudaStream>();
    start_owner_ = std::make_unique<CudaEvent>();
    end_owner_ = std::make_unique<CudaEvent>();
    stream_ = stream_owner_->handle;
    start_ = start_owner_->handle;
    end_ = end_owner_->handle;

    resolve_input_shapes(options);
    allocate_and_bind(options);
    collect_facts(options, blob.size());
}

TensorRtEngine::~TensorRtEngine() {
    if (stream_ != nullptr) cudaStreamSynchronize(stream_);  // the last enqueue finishes before its buffers go
    // Members then go in reverse declaration order: buffers, events, stream, context, engine, runtime, logger.
}

void TensorRtEngine::resolve_input_shapes(const TrtOptions& options) {
    const std::int32_t n = engine_->getNbIOTensors();
    std::map<std::string, bool> used;
    for (std::int32_t i = 0; i < n; ++i) {
        const char* name = engine_->getIOTensorName(i);
        if (engine_->getTensorIOMode(name) != nvinfer1::TensorIOMode::kINPUT) continue;
        if (engine_->isShapeInferenceIO(name)) {
            throw RunnerError(kExitRuntime, std::string("input '") + name +
                                                "' is a shape tensor (its values set output shapes); trt_runner "
                                                "feeds data tensors only");
        }
        nvinfer1::Dims dims = engine_->getTensorShape(name);
        const auto given = options.shapes.find(name);
        if (given != options.shapes.end()) {
            used[name] = true;
            const std::vector<std::int64_t>& want = given->second;
            if (static_cast<int>(want.size()) != dims.nbDims) {
                throw RunnerError(kExitUsage, std::string("--shape ") + name + " has " + std::to_string(want.size()) +
                                                  " dims; the engine's input is " + dims_text(dims));
            }
            using DimValue = std::remove_reference_t<decltype(dims.d[0])>;  // int32_t up to 8.x, int64_t in 10.x
            for (int d = 0; d < dims.nbDims; ++d) dims.d[d] = static_cast<DimValue>(want[d]);
        } else if (has_unknown_dim(dims)) {
            dims = engine_->getProfileShape(name, 0, nvinfer1::OptProfileSelector::kOPT);
        }
        if (!context_->setInputShape(name, dims)) {
            throw RunnerError(kExitUsage, std::string("TensorRT rejected shape ") + dims_text(dims) + " for input '" +
                                              name + "': " + logger_.last_error() +
                                              " (a shape must lie inside optimization profile 0)");
        }
    }
    for (const auto& [name, dims] : options.shapes) {
        if (!used.count(name)) {
            throw RunnerError(kExitUsage, "--shape names '" + name + "', which is not an input of the engine");
        }
    }
    char const* missing[16] = {};
    const std::int32_t unresolved = context_->inferShapes(16, missing);
    if (unresolved != 0) {
        std::string names;
        for (std::int32_t i = 0; i < unresolved && i < 16; ++i) names += std::string(i ? ", " : "") + missing[i];
        throw RunnerError(kExitRuntime, "TensorRT could not infer the engine's shapes (" +
                                            (unresolved < 0 ? logger_.last_error() : "unset inputs: " + names) + ")");
    }
}

void TensorRtEngine::allocate_and_bind(const TrtOptions& options) {
    Lcg lcg(options.seed);
    std::map<std::string, bool> used;
    const std::int32_t n = engine_->getNbIOTensors();
    for (std::int32_t i = 0; i < n; ++i) {
        IoTensor t;
        t.name = engine_->getIOTensorName(i);
        const char* name = t.name.c_str();
        t.is_input = engine_->getTensorIOMode(name) == nvinfer1::TensorIOMode::kINPUT;
        t.type = engine_->getTensorDataType(name);
        t.shape = context_->getTensorShape(name);
        if (engine_->getTensorLocation(name) != nvinfer1::TensorLocation::kDEVICE) {
            throw RunnerError(kExitRuntime, "I/O tensor '" + t.name + "' lives in host memory; trt_runner binds "
                                                                      "device tensors only");
        }
        if (has_unknown_dim(t.shape)) {
            throw RunnerError(kExitRuntime, "output '" + t.name + "' has a data-dependent shape (" +
                                                dims_text(t.shape) +
                                                "); trt_runner allocates outputs of known size only");
        }
        // Vectorized formats (e.g. kCHW32 for INT8 I/O) pad the vectorized dimension.
        const std::int32_t vec_dim = engine_->getTensorVectorizedDim(name);
        const std::int32_t comps = engine_->getTensorComponentsPerElement(name);
        std::size_t volume = 1;
        for (int d = 0; d < t.shape.nbDims; ++d) {
            auto extent = static_cast<std::size_t>(t.shape.d[d]);
            if (d == vec_dim && comps > 1) {
                t.vectorized = true;
                const auto c = static_cast<std::size_t>(comps);
                extent = (extent + c - 1) / c * c;
            }
            volume *= extent;
        }
        t.bytes = volume * element_size(t.type);
        t.buffer = std::make_unique<DeviceBuffer>();
        t.buffer->bytes = t.bytes;
        check_cuda(cudaMalloc(&t.buffer->ptr, t.bytes == 0 ? 1 : t.bytes), "cudaMalloc for '" + t.name + "'");
        if (t.is_input) {
            std::vector<unsigned char> host;
            const auto file = options.input_files.find(t.name);
            if (file != options.input_files.end()) {
                used[t.name] = true;
                const std::vector<char> raw = read_file(file->second, "input file");
                if (raw.size() != t.bytes) {
                    throw RunnerError(kExitUsage, "input file " + file->second + " has " + std::to_string(raw.size()) +
                                                      " bytes; input '" + t.name + "' (" + type_name(t.type) + "[" +
                                                      dims_text(t.shape) + "]) needs " + std::to_string(t.bytes));
                }
                host.assign(raw.begin(), raw.end());
                t.source = file->second;
            } else {
                host = fill_bytes(t.type, t.bytes, lcg);
                t.source = "lcg";
            }
            check_cuda(cudaMemcpy(t.buffer->ptr, host.data(), t.bytes, cudaMemcpyHostToDevice),
                       "copying input '" + t.name + "' to the device");
        } else {
            check_cuda(cudaMemset(t.buffer->ptr, 0, t.bytes == 0 ? 1 : t.bytes), "cudaMemset");
        }
        if (!context_->setTensorAddress(name, t.buffer->ptr)) {
            throw RunnerError(kExitRuntime, "setTensorAddress failed for '" + t.name + "': " + logger_.last_error());
        }
        io_.push_back(std::move(t));
    }
    for (const auto& [name, path] : options.input_files) {
        if (!used.count(name)) {
            throw RunnerError(kExitUsage, "--input names '" + name + "', which is not an input of the engine");
        }
    }
}

void TensorRtEngine::enqueue() {
    if (!context_->enqueueV3(stream_)) {
        throw RunnerError(kExitRuntime, "enqueueV3 failed: " + logger_.last_error());
    }
}

Timing TensorRtEngine::run_timed() {
    using Clock = std::chrono::steady_clock;
    check_cuda(cudaEventRecord(start_, stream_), "cudaEventRecord");
    const auto h0 = Clock::now();
    enqueue();
    const auto h1 = Clock::now();
    check_cuda(cudaEventRecord(end_, stream_), "cudaEventRecord");
    check_cuda(cudaEventSynchronize(end_), "cudaEventSynchronize");
    float gpu_ms = 0.0f;
    check_cuda(cudaEventElapsedTime(&gpu_ms, start_, end_), "cudaEventElapsedTime");
    return Timing{static_cast<double>(gpu_ms), std::chrono::duration<double, std::milli>(h1 - h0).count()};
}

std::vector<Tensor> TensorRtEngine::io_spec() const {
    std::vector<Tensor> spec;
    for (bool inputs_first : {true, false}) {
        for (const IoTensor& t : io_) {
            if (t.is_input != inputs_first) continue;
            if (t.vectorized) {
                throw RunnerError(kExitRuntime, "I/O tensor '" + t.name +
                                                    "' uses a vectorized format; --serve exchanges C-order "
                                                    "tensors: build the engine with linear I/O (trtexec's default "
                                                    "without --inputIOFormats/--outputIOFormats)");
            }
            Tensor s;
            s.name = t.name;
            s.dtype = protocol_dtype(t.type, t.name);
            s.is_input = t.is_input;
            for (int d = 0; d < t.shape.nbDims; ++d) s.dims.push_back(static_cast<std::int64_t>(t.shape.d[d]));
            spec.push_back(std::move(s));
        }
    }
    return spec;
}

std::vector<Tensor> TensorRtEngine::infer(const std::vector<Tensor>& inputs) {
    // serve() has checked every input against io_spec(): names, types, shapes and byte counts.
    for (const Tensor& in : inputs) {
        for (const IoTensor& t : io_) {
            if (t.is_input && t.name == in.name) {
                check_cuda(cudaMemcpyAsync(t.buffer->ptr, in.data.data(), t.bytes, cudaMemcpyHostToDevice, stream_),
                           "copying input '" + t.name + "' to the device");
            }
        }
    }
    enqueue();
    std::vector<Tensor> outputs;
    for (const Tensor& spec : io_spec()) {
        if (spec.is_input) continue;
        for (const IoTensor& t : io_) {
            if (t.is_input || t.name != spec.name) continue;
            Tensor out = spec;
            out.data.resize(t.bytes);
            check_cuda(cudaMemcpyAsync(out.data.data(), t.buffer->ptr, t.bytes, cudaMemcpyDeviceToHost, stream_),
                       "copying output '" + t.name + "' to the host");
            outputs.push_back(std::move(out));
        }
    }
    synchronize();
    return outputs;
}

void TensorRtEngine::collect_facts(const TrtOptions& options, std::size_t engine_bytes) {
    facts_["measurement"] = std::string(
        "TensorRT enqueueV3 on one CUDA stream; each sample is the GPU time between two CUDA events around "
        "the call (trtexec's GPU Compute Time); host-device copies are not timed");
    facts_["engine"] = options.engine_path;
    facts_["engine_bytes"] = static_cast<std::int64_t>(engine_bytes);
    facts_["tensorrt_version"] = version_text(getInferLibVersion());
    facts_["tensorrt_headers"] = std::to_string(NV_TENSORRT_MAJOR) + "." + std::to_string(NV_TENSORRT_MINOR) + "." +
                                 std::to_string(NV_TENSORRT_PATCH);
    facts_["optimization_profiles"] = static_cast<std::int64_t>(engine_->getNbOptimizationProfiles());
    facts_["input_seed"] = static_cast<std::int64_t>(options.seed);
    int runtime_version = 0, driver_version = 0;
    check_cuda(cudaRuntimeGetVersion(&runtime_version), "cudaRuntimeGetVersion");
    check_cuda(cudaDriverGetVersion(&driver_version), "cudaDriverGetVersion");
    facts_["cuda_runtime_version"] = static_cast<std::int64_t>(runtime_version);
    facts_["cuda_driver_version"] = static_cast<std::int64_t>(driver_version);
    cudaDeviceProp prop{};
    check_cuda(cudaGetDeviceProperties(&prop, options.device), "cudaGetDeviceProperties");
    facts_["device_index"] = static_cast<std::int64_t>(options.device);
    facts_["gpu"] = std::string(prop.name);
    facts_["compute_capability"] = std::to_string(prop.major) + "." + std::to_string(prop.minor);
    facts_["sm_count"] = static_cast<std::int64_t>(prop.multiProcessorCount);
    facts_["integrated_gpu"] = static_cast<std::int64_t>(prop.integrated);
    std::string io;
    for (const IoTensor& t : io_) {
        io += (io.empty() ? "" : "; ") + std::string(t.is_input ? "in " : "out ") + t.name + ": " + type_name(t.type) +
              "[" + dims_text(t.shape) + "]" + (t.is_input ? " from " + t.source : "");
    }
    facts_["io"] = io;
}

}  // namespace

std::unique_ptr<Engine> make_tensorrt_engine(const TrtOptions& options) {
    return std::make_unique<TensorRtEngine>(options);
}

}  // namespace trt_runner
