// The host self-check: a deterministic CPU workload that exercises the same harness, statistics and
// JSON as a TensorRT run, so the binary can be checked where there is no GPU (under qemu-user on
// an x86 host, say). It is NOT a TensorRT measurement, and its facts say so.
//
// Workload: one 3x3 convolution, stride 1, zero padding 1, plus bias and ReLU, float32, batch 1:
//   out[k, y, x] = relu(bias[k] + sum_{c, dy, dx} w[k, c, dy, dx] * in[c, y + dy - 1, x + dx - 1])
// Input, weights and bias come from a 32-bit LCG (Numerical Recipes' constants), in that order:
//   state = state * 1664525 + 1013904223 (mod 2^32);  value = (state >> 8) / 2^23 - 1   (exact in float32)
// so the Python tests recompute the same output with numpy.
//
// Served (--serve), the engine is that model with the input taken from each request: input
// "input" float32 [1, C, H, W] -> output "output" float32 [1, K, H, W], weights and bias still from
// the LCG (drawn after the C*H*W input values, as above), so an ONNX Conv + Relu with the same
// weights computes the same function.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine.h"

namespace trt_runner {

struct SelfTestShape {
    std::int64_t channels = 8;
    std::int64_t height = 32;
    std::int64_t width = 32;
    std::int64_t out_channels = 16;
};

// The LCG stream used for the self-test tensors (and for TensorRT input fill).
class Lcg {
public:
    explicit Lcg(std::uint32_t seed) : state_(seed) {}
    std::uint32_t next_u32() {
        state_ = state_ * 1664525u + 1013904223u;
        return state_;
    }
    // Uniform in [-1, 1), a multiple of 2^-23: exactly representable in float32.
    float next_float() { return static_cast<float>(static_cast<std::int32_t>(next_u32() >> 8) - (1 << 23)) / 8388608.0f; }

private:
    std::uint32_t state_;
};

class CpuSelfTestEngine final : public Engine {
public:
    CpuSelfTestEngine(SelfTestShape shape, std::uint32_t seed);

    std::string backend() const override { return "cpu_selftest"; }
    std::string timer() const override { return "host_steady_clock"; }
    void run() override;
    void synchronize() override {}
    Timing run_timed() override;
    Facts facts() const override;
    std::vector<Tensor> io_spec() const override;
    std::vector<Tensor> infer(const std::vector<Tensor>& inputs) override;

    const std::vector<float>& output() const { return output_; }
    // Sum of the last output, accumulated in double in index order.
    double checksum() const;

private:
    SelfTestShape shape_;
    std::uint32_t seed_;
    std::vector<float> input_, weights_, bias_, output_;
};

}  // namespace trt_runner
