// The I/O protocol of `trt_runner --serve` ("edgematrix.trt_runner.io/1"): numpy feeds in, outputs
// out, over the process's standard input and output, so one loaded engine answers a whole test set.
// edgematrix.backends.trt_cpp.io implements the other side; change both or neither.
//
// Every value is little-endian. A frame is
//
//   magic "EMIO" (4 bytes) | u32 kind | u64 payload_bytes | payload
//
// kinds: 1 SPEC    runner -> host, once, right after the engine loaded: its inputs then outputs
//        2 INPUTS  host -> runner: one inference request
//        3 OUTPUTS runner -> host: the reply to INPUTS
//        4 ERROR   runner -> host: the reply to an INPUTS it could not run; payload = UTF-8 message.
//                  A bad request (names, types, shapes) leaves the runner serving; a TensorRT/CUDA
//                  failure ends it with exit code 5 after the ERROR frame.
//        5 END     host -> runner: stop (end of input does the same); the runner exits 0
//
// The payload of SPEC / INPUTS / OUTPUTS is a tensor list:
//
//   u32 count | count x (u16 name_bytes | name | u8 dtype | u8 is_input | u8 ndim | u8 0 |
//                        ndim x i64 dim | u64 data_bytes | data)
//
// dtype codes are those of DType (engine.h); data is C-order; SPEC carries no data (data_bytes 0).
#pragma once

#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "engine.h"

namespace trt_runner {

inline constexpr const char* kIoSchema = "edgematrix.trt_runner.io/1";

enum class FrameKind : std::uint32_t { kSpec = 1, kInputs = 2, kOutputs = 3, kError = 4, kEnd = 5 };

struct Frame {
    FrameKind kind = FrameKind::kEnd;
    std::vector<unsigned char> payload;
};

// Encoding and decoding (decode throws RunnerError(kExitUsage) naming what is malformed).
std::vector<unsigned char> encode_tensors(const std::vector<Tensor>& tensors);
std::vector<Tensor> decode_tensors(const std::vector<unsigned char>& payload);

// Reads one frame; returns false at a clean end of input (no byte of a new frame read).
bool read_frame(std::FILE* in, Frame& frame);
void write_frame(std::FILE* out, FrameKind kind, const std::vector<unsigned char>& payload);

// Empty when `inputs` are exactly the spec's inputs (names, types, shapes, byte counts), else what differs.
std::string check_inputs(const std::vector<Tensor>& spec, const std::vector<Tensor>& inputs);

// The serve loop: SPEC, then INPUTS -> OUTPUTS / ERROR until END or end of input. Returns the exit code.
int serve(Engine& engine, std::FILE* in, std::FILE* out);

}  // namespace trt_runner
