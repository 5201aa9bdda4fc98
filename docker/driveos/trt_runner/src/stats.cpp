#include "stats.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace trt_runner {

namespace {
constexpr std::size_t kPairwiseBlock = 128;  // numpy's PW_BLOCKSIZE
}

// numpy/_core/src/umath/loops_utils.h.src, DOUBLE_pairwise_sum: below 8 values a plain loop;
// up to 128 values eight interleaved accumulators combined as ((r0+r1)+(r2+r3))+((r4+r5)+(r6+r7))
// plus a plain loop over the rest; above that, split at half rounded down to a multiple of 8.
double pairwise_sum(const double* a, std::size_t n) {
    if (n < 8) {
        double res = 0.0;
        for (std::size_t i = 0; i < n; ++i) {
            res += a[i];
        }
        return res;
    }
    if (n <= kPairwiseBlock) {
        double r[8];
        for (std::size_t j = 0; j < 8; ++j) {
            r[j] = a[j];
        }
        std::size_t i = 8;
        for (; i < n - (n % 8); i += 8) {
            for (std::size_t j = 0; j < 8; ++j) {
                r[j] += a[i + j];
            }
        }
        double res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for (; i < n; ++i) {
            res += a[i];
        }
        return res;
    }
    std::size_t n2 = n / 2;
    n2 -= n2 % 8;
    return pairwise_sum(a, n2) + pairwise_sum(a + n2, n - n2);
}

double mean(const std::vector<double>& values) {
    if (values.empty()) {
        throw std::invalid_argument("mean of no samples");
    }
    return pairwise_sum(values.data(), values.size()) / static_cast<double>(values.size());
}

double stddev_ddof1(const std::vector<double>& values) {
    if (values.size() < 2) {
        return 0.0;  // as LatencySamples.stddev_ms: a single round has no spread
    }
    const double m = mean(values);
    std::vector<double> sq(values.size());
    for (std::size_t i = 0; i < values.size(); ++i) {
        const double d = values[i] - m;
        sq[i] = d * d;
    }
    return std::sqrt(pairwise_sum(sq.data(), sq.size()) / static_cast<double>(values.size() - 1));
}

// numpy's "linear" method: virtual index (n - 1) * q / 100, its floor and the next index, and
// numpy's _lerp, which interpolates from the nearer end (below / from 0.5 on) to stay monotonic.
double percentile_linear(const std::vector<double>& values, double q) {
    if (values.empty()) {
        throw std::invalid_argument("percentile of no samples");
    }
    if (!(q >= 0.0 && q <= 100.0)) {
        throw std::invalid_argument("percentile q must be in [0, 100]");
    }
    std::vector<double> sorted(values);
    std::sort(sorted.begin(), sorted.end());
    const std::size_t n = sorted.size();
    const double quantile = q / 100.0;
    const double virtual_index = static_cast<double>(n - 1) * quantile;
    if (virtual_index >= static_cast<double>(n - 1)) {
        return sorted[n - 1];
    }
    const double previous = std::floor(virtual_index);
    const auto lo = static_cast<std::size_t>(previous);
    const double gamma = virtual_index - previous;
    const double a = sorted[lo];
    const double b = sorted[lo + 1];
    const double diff = b - a;
    return gamma >= 0.5 ? b - diff * (1.0 - gamma) : a + diff * gamma;
}

Summary summarize(const std::vector<double>& samples_ms) {
    Summary s;
    s.rounds = samples_ms.size();
    s.p50_ms = percentile_linear(samples_ms, 50.0);
    s.p90_ms = percentile_linear(samples_ms, 90.0);
    s.p99_ms = percentile_linear(samples_ms, 99.0);
    s.mean_ms = mean(samples_ms);
    s.stddev_ms = stddev_ddof1(samples_ms);
    return s;
}

}  // namespace trt_runner
