// Command line of trt_runner (see usage() in options.cpp).
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "cpu_engine.h"
#include "harness.h"
#include "trt_engine.h"

namespace trt_runner {

enum class Mode { kTensorRT, kCpuSelfTest, kStopRule, kHelp, kVersion };

struct Options {
    Mode mode = Mode::kTensorRT;
    LatencyConfig config;
    std::string out = "-";                       // result JSON; "-" = stdout
    TrtOptions trt;
    SelfTestShape selftest;
    std::uint32_t seed = 2026;
    std::optional<std::string> save_output;      // self-test output as raw float32
    bool serve = false;                          // --serve: answer inference requests (io.h) instead of timing
};

std::string usage();
// Throws RunnerError(kExitUsage) with the offending argument named.
Options parse_options(const std::vector<std::string>& args);

}  // namespace trt_runner
