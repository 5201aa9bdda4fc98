#include "cpu_engine.h"

#include <chrono>
#include <cstring>

#include "errors.h"

namespace trt_runner {

CpuSelfTestEngine::CpuSelfTestEngine(SelfTestShape shape, std::uint32_t seed) : shape_(shape), seed_(seed) {
    const std::int64_t limit = 1 << 20;
    if (shape.channels < 1 || shape.height < 1 || shape.width < 1 || shape.out_channels < 1 ||
        shape.channels > 4096 || shape.out_channels > 4096 || shape.height * shape.width > limit) {
        throw RunnerError(kExitUsage, "self-test sizes must be positive (channels and output channels up to 4096, "
                                      "height x width up to 2^20 pixels)");
    }
    const auto c = static_cast<std::size_t>(shape.channels);
    const auto k = static_cast<std::size_t>(shape.out_channels);
    const auto hw = static_cast<std::size_t>(shape.height * shape.width);
    Lcg lcg(seed);
    input_.resize(c * hw);
    for (float& v : input_) v = lcg.next_float();
    weights_.resize(k * c * 9);
    for (float& v : weights_) v = lcg.next_float();
    bias_.resize(k);
    for (float& v : bias_) v = lcg.next_float();
    output_.assign(k * hw, 0.0f);
}

void CpuSelfTestEngine::run() {
    const std::int64_t C = shape_.channels, H = shape_.height, W = shape_.width, K = shape_.out_channels;
    for (std::int64_t k = 0; k < K; ++k) {
        for (std::int64_t y = 0; y < H; ++y) {
            for (std::int64_t x = 0; x < W; ++x) {
                float acc = bias_[static_cast<std::size_t>(k)];
                for (std::int64_t c = 0; c < C; ++c) {
                    const float* w = &weights_[static_cast<std::size_t>((k * C + c) * 9)];
                    const float* in = &input_[static_cast<std::size_t>(c * H * W)];
                    for (std::int64_t dy = 0; dy < 3; ++dy) {
                        const std::int64_t yy = y + dy - 1;
                        if (yy < 0 || yy >= H) continue;
                        for (std::int64_t dx = 0; dx < 3; ++dx) {
                            const std::int64_t xx = x + dx - 1;
                            if (xx < 0 || xx >= W) continue;
                            acc += w[dy * 3 + dx] * in[yy * W + xx];
                        }
                    }
                }
                output_[static_cast<std::size_t>((k * H + y) * W + x)] = acc > 0.0f ? acc : 0.0f;
            }
        }
    }
}

Timing CpuSelfTestEngine::run_timed() {
    using Clock = std::chrono::steady_clock;
    const auto t0 = Clock::now();
    run();
    const auto t1 = Clock::now();
    const double ms = std::chrono::duration<double, std::milli>(t1 - t0).count();
    return Timing{ms, ms};
}

std::vector<Tensor> CpuSelfTestEngine::io_spec() const {
    Tensor in;
    in.name = "input";
    in.is_input = true;
    in.dims = {1, shape_.channels, shape_.height, shape_.width};
    Tensor out;
    out.name = "output";
    out.is_input = false;
    out.dims = {1, shape_.out_channels, shape_.height, shape_.width};
    return {in, out};
}

std::vector<Tensor> CpuSelfTestEngine::infer(const std::vector<Tensor>& inputs) {
    const Tensor& in = inputs.at(0);  // serve() checked name, type, shape and size against io_spec()
    std::memcpy(input_.data(), in.data.data(), input_.size() * sizeof(float));
    run();
    Tensor out = io_spec()[1];
    out.data.resize(output_.size() * sizeof(float));
    std::memcpy(out.data.data(), output_.data(), out.data.size());
    return {out};
}

double CpuSelfTestEngine::checksum() const {
    double sum = 0.0;
    for (const float v : output_) sum += static_cast<double>(v);
    return sum;
}

Facts CpuSelfTestEngine::facts() const {
    const std::string dims = std::to_string(shape_.channels) + "x" + std::to_string(shape_.height) + "x" +
                             std::to_string(shape_.width);
    Facts f;
    f["measurement"] = std::string(
        "host self-check of trt_runner's harness and JSON on the CPU (a direct 3x3 convolution); "
        "not a TensorRT measurement");
    f["workload"] = std::string("conv2d 3x3 stride 1 pad 1 + bias + ReLU, float32, input 1x") + dims + ", " +
                    std::to_string(shape_.out_channels) + " output channels";
    f["selftest_input"] = dims;
    f["selftest_out_channels"] = static_cast<std::int64_t>(shape_.out_channels);
    f["selftest_seed"] = static_cast<std::int64_t>(seed_);
    f["selftest_macs"] = static_cast<std::int64_t>(shape_.out_channels * shape_.channels * 9 * shape_.height *
                                                   shape_.width);  // upper bound: border taps are skipped
    f["selftest_checksum"] = checksum();
    return f;
}

}  // namespace trt_runner
