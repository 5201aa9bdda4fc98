#include "json.h"

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <sstream>

#include "errors.h"

namespace trt_runner {

std::string json_string(const std::string& s) {
    std::string out = "\"";
    for (const char ch : s) {
        const auto c = static_cast<unsigned char>(ch);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\b': out += "\\b"; break;
            case '\f': out += "\\f"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    char buf[8];
                    std::snprintf(buf, sizeof buf, "\\u%04x", c);
                    out += buf;
                } else {
                    out += ch;  // UTF-8 bytes pass through unchanged
                }
        }
    }
    out += '"';
    return out;
}

std::string json_number(double v) {
    if (!std::isfinite(v)) {
        throw RunnerError(kExitRuntime, "a measured value is not finite (" + std::to_string(v) +
                                            "); the timer or the engine returned garbage");
    }
    char buf[40];
    // The shortest of %.15g .. %.17g that reads back exactly (printf uses the "C" locale here:
    // the program never calls setlocale).
    for (int precision = 15; precision <= 17; ++precision) {
        std::snprintf(buf, sizeof buf, "%.*g", precision, v);
        if (std::strtod(buf, nullptr) == v) {
            break;
        }
    }
    std::string text(buf);
    if (text.find_first_of(".eE") == std::string::npos) {
        text += ".0";  // keep it a float for JSON readers that distinguish int and float
    }
    return text;
}

namespace {

std::string fact_json(const Fact& fact) {
    if (const auto* s = std::get_if<std::string>(&fact)) {
        return json_string(*s);
    }
    if (const auto* i = std::get_if<std::int64_t>(&fact)) {
        return std::to_string(*i);
    }
    return json_number(std::get<double>(fact));
}

std::string number_array(const std::vector<double>& values) {
    std::string out = "[";
    for (std::size_t i = 0; i < values.size(); ++i) {
        if (i != 0) {
            out += ", ";
        }
        out += json_number(values[i]);
    }
    out += "]";
    return out;
}

}  // namespace

std::string result_json(const std::string& backend, const Summary& summary, const Measurement& measurement,
                        const LatencyConfig& config, const Facts& facts) {
    std::ostringstream o;
    o << "{\n";
    o << "  \"schema\": " << json_string(kResultSchema) << ",\n";
    o << "  \"backend\": " << json_string(backend) << ",\n";
    o << "  \"p50_ms\": " << json_number(summary.p50_ms) << ",\n";
    o << "  \"p90_ms\": " << json_number(summary.p90_ms) << ",\n";
    o << "  \"p99_ms\": " << json_number(summary.p99_ms) << ",\n";
    o << "  \"mean_ms\": " << json_number(summary.mean_ms) << ",\n";
    o << "  \"stddev_ms\": " << json_number(summary.stddev_ms) << ",\n";
    o << "  \"rounds\": " << summary.rounds << ",\n";
    o << "  \"samples_ms\": " << number_array(measurement.samples_ms) << ",\n";
    o << "  \"host_samples_ms\": " << number_array(measurement.host_samples_ms) << ",\n";
    o << "  \"elapsed_s\": " << json_number(measurement.elapsed_s) << ",\n";
    o << "  \"config\": {\"warmup\": " << config.warmup << ", \"min_rounds\": " << config.min_rounds
      << ", \"max_rounds\": " << config.max_rounds << ", \"min_time_s\": " << json_number(config.min_time_s)
      << ", \"max_time_s\": " << json_number(config.max_time_s) << "},\n";
    o << "  \"facts\": {";
    bool first = true;
    for (const auto& [key, value] : facts) {
        o << (first ? "\n    " : ",\n    ") << json_string(key) << ": " << fact_json(value);
        first = false;
    }
    o << (first ? "}\n" : "\n  }\n");
    o << "}\n";
    return o.str();
}

}  // namespace trt_runner
