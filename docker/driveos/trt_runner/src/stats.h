// Latency statistics computed exactly as numpy computes them, so the C++ runner's JSON and the
// Python harness (edgematrix.measure.harness.LatencySamples) agree to the last bit:
//   sum         numpy's pairwise summation (add.reduce on a contiguous float64 array)
//   mean        sum / n                                    (np.mean)
//   stddev      sqrt(sum((x - mean)^2) / (n - 1))           (np.std(ddof=1)); 0 for n < 2
//   percentile  numpy's default "linear" method            (np.percentile(x, q))
#pragma once

#include <cstddef>
#include <vector>

namespace trt_runner {

double pairwise_sum(const double* values, std::size_t n);
double mean(const std::vector<double>& values);
double stddev_ddof1(const std::vector<double>& values);
// q in [0, 100]; values need not be sorted.
double percentile_linear(const std::vector<double>& values, double q);

struct Summary {
    std::size_t rounds = 0;
    double p50_ms = 0, p90_ms = 0, p99_ms = 0, mean_ms = 0, stddev_ms = 0;
};

Summary summarize(const std::vector<double>& samples_ms);

}  // namespace trt_runner
