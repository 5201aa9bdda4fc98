// trt_runner: time an inference engine with edgematrix's latency harness and write its JSON.
// See options.cpp for the command line and errors.h for the exit codes.

#include <sys/utsname.h>

#include <cstdio>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <vector>

#include "cpu_engine.h"
#include "errors.h"
#include "harness.h"
#include "io.h"
#include "json.h"
#include "options.h"
#include "stats.h"
#if TRT_RUNNER_WITH_TENSORRT
#include "trt_engine.h"
#endif

#ifndef TRT_RUNNER_VERSION
#define TRT_RUNNER_VERSION "unversioned"
#endif
#ifndef TRT_RUNNER_BUILD_TYPE
#define TRT_RUNNER_BUILD_TYPE "unknown"
#endif
#ifndef TRT_RUNNER_SOURCE_HASH
#define TRT_RUNNER_SOURCE_HASH "unknown"
#endif

namespace trt_runner {
namespace {

const char* target_arch() {
#if defined(__aarch64__)
    return "aarch64";
#elif defined(__x86_64__)
    return "x86_64";
#else
    return "unknown";
#endif
}

std::string compiler() {
#if defined(__clang__)
    return std::string("clang ") + __clang_version__;
#elif defined(__GNUC__)
    return std::string("gcc ") + __VERSION__;
#else
    return "unknown";
#endif
}

const char* tensorrt_support() { return TRT_RUNNER_WITH_TENSORRT ? "compiled in" : "not compiled in"; }

// Facts every result carries: what was built, for what, and where it ran.
Facts build_facts(const Engine& engine) {
    Facts f = engine.facts();
    f["backend"] = engine.backend();
    f["timer"] = engine.timer();
    f["runner"] = std::string("trt_runner ") + TRT_RUNNER_VERSION;
    f["runner_source_sha256"] = std::string(TRT_RUNNER_SOURCE_HASH);
    f["build_type"] = std::string(TRT_RUNNER_BUILD_TYPE);
    f["compiler"] = compiler();
    f["target_arch"] = std::string(target_arch());
    f["tensorrt_support"] = std::string(tensorrt_support());
    struct utsname u {};
    if (uname(&u) == 0) {
        f["machine"] = std::string(u.machine);  // under qemu-user: the emulated machine (aarch64)
        f["os"] = std::string(u.sysname) + " " + u.release;
    }
    return f;
}

void write_text(const std::string& path, const std::string& text) {
    if (path == "-") {
        std::cout << text << std::flush;
        if (!std::cout) throw RunnerError(kExitOutput, "writing the result to standard output failed");
        return;
    }
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    out.close();
    if (!out) {
        throw RunnerError(kExitOutput, "cannot write " + path + "; check that its folder exists and is writable");
    }
}

void save_floats(const std::string& path, const std::vector<float>& values) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out.write(reinterpret_cast<const char*>(values.data()), static_cast<std::streamsize>(values.size() * sizeof(float)));
    out.close();
    if (!out) {
        throw RunnerError(kExitOutput, "cannot write " + path + "; check that its folder exists and is writable");
    }
}

int stop_rule_table(const LatencyConfig& config) {
    std::string line;
    while (std::getline(std::cin, line)) {
        if (line.empty()) continue;
        std::istringstream in(line);
        long long rounds = 0;
        double elapsed = 0.0;
        if (!(in >> rounds >> elapsed)) {
            throw RunnerError(kExitUsage, "--stop-rule-stdin: expected 'ROUNDS ELAPSED_S', got '" + line + "'");
        }
        std::cout << (enough_rounds(config, rounds, elapsed) ? 1 : 0) << '\n';
    }
    std::cout << std::flush;
    return kExitOk;
}

std::unique_ptr<Engine> make_engine(const Options& o) {
    if (o.mode == Mode::kCpuSelfTest) {
        return std::make_unique<CpuSelfTestEngine>(o.selftest, o.seed);
    }
    {
        std::ifstream probe(o.trt.engine_path, std::ios::binary);
        if (!probe) {
            throw RunnerError(kExitEngineFile, "engine file " + o.trt.engine_path +
                                                   " does not exist or cannot be read; build it with trtexec "
                                                   "--saveEngine on the target or check the path");
        }
    }
#if TRT_RUNNER_WITH_TENSORRT
    return make_tensorrt_engine(o.trt);
#else
    throw RunnerError(kExitNoTensorRT,
                      "this trt_runner was built without TensorRT (TensorRT/CUDA headers and libraries were not found "
                      "at configure time), so it cannot load " + o.trt.engine_path +
                      ". Build it in the DriveOS image (docker/driveos/Dockerfile, stage 'cross') or configure with "
                      "-DTRT_RUNNER_TENSORRT=ON -DTensorRT_ROOT=... -DCUDA_TARGET_ROOT=...; --cpu-selftest runs "
                      "without TensorRT");
#endif
}

int run(const std::vector<std::string>& args) {
    const Options o = parse_options(args);
    switch (o.mode) {
        case Mode::kHelp:
            std::cout << usage();
            return kExitOk;
        case Mode::kVersion:
            std::cout << "trt_runner " << TRT_RUNNER_VERSION << " (" << target_arch() << ", " << compiler()
                      << ", TensorRT " << tensorrt_support() << ", sources " << TRT_RUNNER_SOURCE_HASH << ")\n";
            return kExitOk;
        case Mode::kStopRule:
            return stop_rule_table(o.config);
        default:
            break;
    }
    std::unique_ptr<Engine> engine = make_engine(o);
    if (o.serve) {
        return serve(*engine, stdin, stdout);
    }
    const Measurement m = measure(*engine, o.config);
    const Summary s = summarize(m.samples_ms);
    const std::string json = result_json(engine->backend(), s, m, o.config, build_facts(*engine));
    if (o.save_output) {
        save_floats(*o.save_output, static_cast<CpuSelfTestEngine&>(*engine).output());
    }
    write_text(o.out, json);
    std::fprintf(stderr, "trt_runner: %s, %zu rounds in %.3f s: p50 %.4f ms, p90 %.4f ms, p99 %.4f ms (%s)\n",
                 engine->backend().c_str(), s.rounds, m.elapsed_s, s.p50_ms, s.p90_ms, s.p99_ms,
                 engine->timer().c_str());
    return kExitOk;
}

}  // namespace
}  // namespace trt_runner

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    try {
        return trt_runner::run(args);
    } catch (const trt_runner::RunnerError& e) {
        std::cerr << "trt_runner: error: " << e.what() << '\n';
        return e.code();
    } catch (const std::exception& e) {
        std::cerr << "trt_runner: internal error: " << e.what() << '\n';
        return trt_runner::kExitRuntime;
    }
}
