// The result document, in the shape edgematrix.measure.meter.LatencyReport.as_dict() has, plus
// stddev_ms, the per-round host times, the stop-rule inputs and a schema tag. Written by hand (a
// dozen keys) so the runner needs no third-party library in the DriveOS image.
#pragma once

#include <string>
#include <vector>

#include "engine.h"
#include "harness.h"
#include "stats.h"

namespace trt_runner {

inline constexpr const char* kResultSchema = "edgematrix.trt_runner/1";

std::string json_string(const std::string& s);
// Shortest text that reads back as the same double (always with '.' or an exponent);
// throws RunnerError(kExitRuntime) for NaN / infinity, which JSON cannot carry.
std::string json_number(double v);

std::string result_json(const std::string& backend, const Summary& summary, const Measurement& measurement,
                        const LatencyConfig& config, const Facts& facts);

}  // namespace trt_runner
