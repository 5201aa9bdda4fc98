#include "options.h"

#include <cerrno>
#include <cmath>
#include <cstdlib>

#include "errors.h"

namespace trt_runner {

std::string usage() {
    return R"(usage:
  trt_runner --engine FILE [timing options] [--shape NAME=DxDx..] [--input NAME=FILE] [--device N]
             [--seed N] [--verbose] [--out result.json]
  trt_runner --cpu-selftest [timing options] [--selftest-size CxHxW] [--selftest-out-channels K]
             [--seed N] [--save-output FILE] [--out result.json]
  trt_runner --engine FILE --serve [--shape NAME=DxDx..] [--device N] [--verbose]
  trt_runner --cpu-selftest --serve [--selftest-size CxHxW] [--selftest-out-channels K] [--seed N]
  trt_runner --stop-rule-stdin [timing options]
  trt_runner --version | --help

Times a serialized TensorRT engine with edgematrix's latency harness (warm-up, then rounds until
both --min-rounds and --min-time-s are reached, or --max-rounds / --max-time-s) and writes the
statistics as JSON (p50/p90/p99/mean/stddev in ms, per-round samples, facts).

timing options (defaults as edgematrix.measure.harness.LatencyConfig):
  --warmup N         untimed runs before the timed rounds (10)
  --min-rounds N     (50)      --max-rounds N     (1000)
  --min-time-s S     (5.0)     --max-time-s S     (120.0)

TensorRT (only in builds with TensorRT, e.g. the DriveOS image's):
  --engine FILE      serialized engine (trtexec --saveEngine); each sample is the GPU time of one
                     enqueueV3 between two CUDA events
  --shape NAME=DIMS  shape of a dynamic input (default: the optimization profile's opt shape)
  --input NAME=FILE  raw bytes for an input (default: deterministic pseudo-random data)
  --device N         CUDA device (0)

host self-check (no GPU, no TensorRT; not a TensorRT measurement):
  --cpu-selftest     time a deterministic 3x3 convolution on the CPU through the same harness
  --selftest-size    input CxHxW (8x32x32)     --selftest-out-channels K (16)
  --save-output FILE write the last self-test output as raw float32 (K x H x W)

  --serve            run inference requests instead of timing: after loading, the engine's I/O spec
                     goes to standard output, then each INPUTS frame read from standard input is
                     answered with an OUTPUTS (or ERROR) frame, until an END frame or end of input
                     (protocol edgematrix.trt_runner.io/1, src/io.h). The self-check serves its
                     convolution with the input taken from each request.

  --stop-rule-stdin  read "ROUNDS ELAPSED_S" lines, print 1 (stop) or 0 (go on) for each
  --seed N           seed of the generated inputs (2026)
  --out FILE         where the JSON goes ("-" = standard output, the default)

exit codes: 0 ok, 2 usage, 3 engine file missing/unreadable, 4 TensorRT not compiled in,
            5 TensorRT/CUDA failure, 6 result not writable
)";
}

namespace {

[[noreturn]] void bad(const std::string& message) { throw RunnerError(kExitUsage, message + "\n\n" + usage()); }

std::int64_t parse_int(const std::string& flag, const std::string& text) {
    errno = 0;
    char* end = nullptr;
    const long long v = std::strtoll(text.c_str(), &end, 10);
    if (text.empty() || *end != '\0' || errno == ERANGE) {
        bad(flag + " needs an integer, got '" + text + "'");
    }
    return v;
}

double parse_seconds(const std::string& flag, const std::string& text) {
    errno = 0;
    char* end = nullptr;
    const double v = std::strtod(text.c_str(), &end);
    if (text.empty() || *end != '\0' || errno == ERANGE || !std::isfinite(v)) {
        bad(flag + " needs a number of seconds, got '" + text + "'");
    }
    return v;
}

std::vector<std::int64_t> parse_dims(const std::string& flag, const std::string& text) {
    std::vector<std::int64_t> dims;
    std::size_t start = 0;
    while (true) {
        const std::size_t x = text.find('x', start);
        const std::string part = text.substr(start, x == std::string::npos ? std::string::npos : x - start);
        const std::int64_t v = parse_int(flag, part);
        if (v < 0) bad(flag + " dims must be >= 0, got '" + text + "'");
        dims.push_back(v);
        if (x == std::string::npos) break;
        start = x + 1;
    }
    return dims;
}

std::pair<std::string, std::string> parse_assignment(const std::string& flag, const std::string& text) {
    const std::size_t eq = text.find('=');
    if (eq == std::string::npos || eq == 0 || eq + 1 == text.size()) {
        bad(flag + " needs NAME=VALUE, got '" + text + "'");
    }
    return {text.substr(0, eq), text.substr(eq + 1)};
}

}  // namespace

Options parse_options(const std::vector<std::string>& args) {
    Options o;
    bool have_engine = false, have_selftest = false, have_stop_rule = false;
    std::vector<std::string> timed_only;  // flags that mean nothing to --serve
    for (std::size_t i = 0; i < args.size(); ++i) {
        const std::string& flag = args[i];
        auto value = [&]() -> std::string {
            if (i + 1 >= args.size()) bad(flag + " needs a value");
            return args[++i];
        };
        if (flag == "--help" || flag == "-h") {
            o.mode = Mode::kHelp;
            return o;
        } else if (flag == "--version") {
            o.mode = Mode::kVersion;
            return o;
        } else if (flag == "--engine") {
            o.trt.engine_path = value();
            have_engine = true;
        } else if (flag == "--cpu-selftest") {
            have_selftest = true;
        } else if (flag == "--stop-rule-stdin") {
            have_stop_rule = true;
        } else if (flag == "--serve") {
            o.serve = true;
        } else if (flag == "--warmup") {
            o.config.warmup = parse_int(flag, value());
            timed_only.push_back(flag);
        } else if (flag == "--min-rounds") {
            o.config.min_rounds = parse_int(flag, value());
            timed_only.push_back(flag);
        } else if (flag == "--max-rounds") {
            o.config.max_rounds = parse_int(flag, value());
            timed_only.push_back(flag);
        } else if (flag == "--min-time-s") {
            o.config.min_time_s = parse_seconds(flag, value());
            timed_only.push_back(flag);
        } else if (flag == "--max-time-s") {
            o.config.max_time_s = parse_seconds(flag, value());
            timed_only.push_back(flag);
        } else if (flag == "--out") {
            o.out = value();
            timed_only.push_back(flag);
        } else if (flag == "--shape") {
            const auto [name, dims] = parse_assignment(flag, value());
            o.trt.shapes[name] = parse_dims(flag, dims);
        } else if (flag == "--input") {
            const auto [name, path] = parse_assignment(flag, value());
            o.trt.input_files[name] = path;
        } else if (flag == "--device") {
            o.trt.device = static_cast<int>(parse_int(flag, value()));
        } else if (flag == "--verbose") {
            o.trt.verbose = true;
        } else if (flag == "--seed") {
            const std::int64_t seed = parse_int(flag, value());
            if (seed < 0 || seed > 0xFFFFFFFFLL) bad("--seed must be in [0, 2^32), got " + std::to_string(seed));
            o.seed = static_cast<std::uint32_t>(seed);
        } else if (flag == "--selftest-size") {
            const std::vector<std::int64_t> d = parse_dims(flag, value());
            if (d.size() != 3) bad("--selftest-size needs CxHxW, e.g. 8x32x32");
            o.selftest.channels = d[0];
            o.selftest.height = d[1];
            o.selftest.width = d[2];
        } else if (flag == "--selftest-out-channels") {
            o.selftest.out_channels = parse_int(flag, value());
        } else if (flag == "--save-output") {
            o.save_output = value();
            timed_only.push_back(flag);
        } else {
            bad("unknown argument '" + flag + "'");
        }
    }
    const int modes = int(have_engine) + int(have_selftest) + int(have_stop_rule);
    if (modes != 1) {
        bad(modes == 0 ? "say what to run: --engine FILE, --cpu-selftest or --stop-rule-stdin"
                       : "--engine, --cpu-selftest and --stop-rule-stdin exclude each other");
    }
    o.mode = have_engine ? Mode::kTensorRT : have_selftest ? Mode::kCpuSelfTest : Mode::kStopRule;
    if (o.mode != Mode::kTensorRT && (!o.trt.shapes.empty() || !o.trt.input_files.empty())) {
        bad("--shape and --input apply to --engine only");
    }
    if (o.mode != Mode::kCpuSelfTest && o.save_output) {
        bad("--save-output applies to --cpu-selftest only");
    }
    if (o.serve) {
        if (o.mode == Mode::kStopRule) bad("--serve applies to --engine or --cpu-selftest");
        if (!o.trt.input_files.empty()) bad("--serve takes its inputs from the requests; drop --input");
        if (!timed_only.empty()) {
            bad(timed_only.front() + " applies to timed runs; --serve answers inference requests (no timing, "
                                     "results go to standard output as frames)");
        }
    }
    o.trt.seed = o.seed;
    o.config.validate();
    return o;
}

}  // namespace trt_runner
