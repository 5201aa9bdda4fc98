// What the timing harness needs from an inference engine.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>

namespace trt_runner {

// A fact about the run: plain string / integer / float, like edgematrix's Runner.facts().
using Fact = std::variant<std::string, std::int64_t, double>;
using Facts = std::map<std::string, Fact>;

// One timed call.
struct Timing {
    double ms = 0.0;       // the measured latency (GPU time between CUDA events, or host wall time)
    double host_ms = 0.0;  // host wall time spent in the call itself (enqueue time for a GPU engine)
};

class Engine {
public:
    virtual ~Engine() = default;

    // Registry-style name written as the JSON's "backend" ("tensorrt", "cpu_selftest").
    virtual std::string backend() const = 0;
    // What a sample measures, written as the fact "timer" ("cuda_event", "host_steady_clock").
    virtual std::string timer() const = 0;
    // One untimed inference (warm-up).
    virtual void run() = 0;
    // Wait until all work issued so far has finished (after the warm-up).
    virtual void synchronize() = 0;
    // One timed inference; returns when its time can be read.
    virtual Timing run_timed() = 0;
    // What this engine is and what it ran on.
    virtual Facts facts() const = 0;
};

}  // namespace trt_runner
