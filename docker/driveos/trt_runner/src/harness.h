// The timing loop of edgematrix.measure.harness for one engine: warm-up, then timed rounds until
// the shared stop rule (enough_rounds) says stop. Same defaults and the same validation as
// edgematrix.measure.harness.LatencyConfig.
#pragma once

#include <cstdint>
#include <vector>

#include "engine.h"

namespace trt_runner {

struct LatencyConfig {
    std::int64_t warmup = 10;
    std::int64_t min_rounds = 50;
    std::int64_t max_rounds = 1000;
    double min_time_s = 5.0;
    double max_time_s = 120.0;

    // Throws RunnerError(kExitUsage) with LatencyConfig's message when out of range.
    void validate() const;
};

// Both minimums reached, or either maximum.
bool enough_rounds(const LatencyConfig& config, std::int64_t rounds, double elapsed_s);

struct Measurement {
    std::vector<double> samples_ms;       // Timing::ms of every round
    std::vector<double> host_samples_ms;  // Timing::host_ms of every round
    double elapsed_s = 0.0;               // steady clock from the first timed round to the stop decision
};

Measurement measure(Engine& engine, const LatencyConfig& config);

}  // namespace trt_runner
