#include "harness.h"

#include <chrono>
#include <sstream>

#include "errors.h"

namespace trt_runner {

namespace {
std::string format_number(double v) {
    std::ostringstream out;
    out << v;
    return out.str();
}
}  // namespace

void LatencyConfig::validate() const {
    if (warmup < 0) {
        throw RunnerError(kExitUsage, "warmup must be >= 0, got " + std::to_string(warmup));
    }
    if (!(1 <= min_rounds && min_rounds <= max_rounds)) {
        throw RunnerError(kExitUsage, "need 1 <= min_rounds <= max_rounds, got " + std::to_string(min_rounds) +
                                          " and " + std::to_string(max_rounds));
    }
    if (!(0.0 <= min_time_s && min_time_s <= max_time_s)) {
        throw RunnerError(kExitUsage, "need 0 <= min_time_s <= max_time_s, got " + format_number(min_time_s) +
                                          " and " + format_number(max_time_s));
    }
}

bool enough_rounds(const LatencyConfig& config, std::int64_t rounds, double elapsed_s) {
    if (rounds >= config.max_rounds || elapsed_s >= config.max_time_s) {
        return true;
    }
    return rounds >= config.min_rounds && elapsed_s >= config.min_time_s;
}

Measurement measure(Engine& engine, const LatencyConfig& config) {
    config.validate();
    for (std::int64_t i = 0; i < config.warmup; ++i) {
        engine.run();
    }
    engine.synchronize();  // warm-up work must not land inside the first timed round

    using Clock = std::chrono::steady_clock;  // monotonic, like time.perf_counter_ns
    Measurement m;
    const auto start = Clock::now();
    std::int64_t rounds = 0;
    while (true) {
        const Timing t = engine.run_timed();
        m.samples_ms.push_back(t.ms);
        m.host_samples_ms.push_back(t.host_ms);
        ++rounds;
        const std::chrono::duration<double> elapsed = Clock::now() - start;
        m.elapsed_s = elapsed.count();
        if (enough_rounds(config, rounds, m.elapsed_s)) {
            break;
        }
    }
    return m;
}

}  // namespace trt_runner
