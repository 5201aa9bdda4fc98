// TensorRT engine (compiled only when TRT_RUNNER_WITH_TENSORRT is set, i.e. TensorRT and the CUDA
// runtime were found at configure time; the DriveOS image's cross stage builds it).
//
// Loads a serialized engine (.engine / .plan, e.g. from trtexec --saveEngine) with the nvinfer1
// runtime, resolves input shapes (given, or the optimization profile's kOPT shape for dynamic
// dims), allocates one device buffer per I/O tensor, binds them with setTensorAddress and runs
// enqueueV3 on its own CUDA stream (TensorRT >= 8.5, the name-based I/O API that 10.x requires).
// A timed call is bracketed by two CUDA events on that stream: the sample is the GPU time between
// them, which is what trtexec reports as "GPU Compute Time"; host-device copies are not inside it.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "engine.h"

namespace trt_runner {

struct TrtOptions {
    std::string engine_path;
    int device = 0;
    std::uint32_t seed = 2026;                                   // input fill when no file is given
    std::map<std::string, std::vector<std::int64_t>> shapes;     // --shape NAME=1x3x288x800
    std::map<std::string, std::string> input_files;              // --input NAME=FILE (raw bytes)
    bool verbose = false;                                        // TensorRT log at kVERBOSE, else kWARNING
};

std::unique_ptr<Engine> make_tensorrt_engine(const TrtOptions& options);

}  // namespace trt_runner
