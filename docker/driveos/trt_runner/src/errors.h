// Exit codes and the error type every part of trt_runner throws.
//
// The Python side (edgematrix.backends.trt_cpp.run) maps these codes to its errors, so they are
// part of the runner's interface: change them in both places or not at all.
#pragma once

#include <stdexcept>
#include <string>

namespace trt_runner {

enum ExitCode : int {
    kExitOk = 0,
    kExitUsage = 2,          // bad command line or measurement config
    kExitEngineFile = 3,     // engine file missing, unreadable or empty
    kExitNoTensorRT = 4,     // this build has no TensorRT support
    kExitRuntime = 5,        // TensorRT / CUDA / engine failure while loading or running
    kExitOutput = 6,         // the result (JSON or output dump) could not be written
};

// An error with the exit code the process ends with. what() is the message for the user: it says
// what was asked, what was found and what to do.
class RunnerError : public std::runtime_error {
public:
    RunnerError(ExitCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
    ExitCode code() const noexcept { return code_; }

private:
    ExitCode code_;
};

}  // namespace trt_runner
