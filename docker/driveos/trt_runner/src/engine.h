// What the timing harness needs from an inference engine.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <variant>
#include <vector>

namespace trt_runner {

// Element types of the I/O protocol (io.h); the codes are part of the protocol.
enum class DType : std::uint8_t {
    kFloat32 = 1,
    kFloat16 = 2,
    kInt8 = 3,
    kInt32 = 4,
    kBool = 5,
    kUInt8 = 6,
    kInt64 = 7,
    kBFloat16 = 8,
    kFp8E4M3 = 9,
};

std::size_t dtype_size(DType t);
const char* dtype_name(DType t);

// One I/O tensor: its description (name, type, role, shape) and, in a request or a reply, its
// bytes in C (row-major) order.
struct Tensor {
    std::string name;
    DType dtype = DType::kFloat32;
    bool is_input = true;
    std::vector<std::int64_t> dims;
    std::vector<unsigned char> data;

    std::int64_t volume() const;
    std::size_t nbytes() const { return static_cast<std::size_t>(volume()) * dtype_size(dtype); }
};

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
    // The engine's inputs then outputs, with resolved shapes and no data.
    virtual std::vector<Tensor> io_spec() const = 0;
    // One inference on inputs that match io_spec() (checked by the caller); returns the outputs
    // with their data, in io_spec() order.
    virtual std::vector<Tensor> infer(const std::vector<Tensor>& inputs) = 0;
};

}  // namespace trt_runner
