#include "io.h"

#include <cstring>
#include <limits>
#include <map>

#include "errors.h"

namespace trt_runner {

std::size_t dtype_size(DType t) {
    switch (t) {
        case DType::kFloat32: return 4;
        case DType::kFloat16: return 2;
        case DType::kInt8: return 1;
        case DType::kInt32: return 4;
        case DType::kBool: return 1;
        case DType::kUInt8: return 1;
        case DType::kInt64: return 8;
        case DType::kBFloat16: return 2;
        case DType::kFp8E4M3: return 1;
    }
    throw RunnerError(kExitUsage, "unknown dtype code " + std::to_string(static_cast<int>(t)));
}

const char* dtype_name(DType t) {
    switch (t) {
        case DType::kFloat32: return "float32";
        case DType::kFloat16: return "float16";
        case DType::kInt8: return "int8";
        case DType::kInt32: return "int32";
        case DType::kBool: return "bool";
        case DType::kUInt8: return "uint8";
        case DType::kInt64: return "int64";
        case DType::kBFloat16: return "bfloat16";
        case DType::kFp8E4M3: return "fp8e4m3";
    }
    return "unknown";
}

std::int64_t Tensor::volume() const {
    std::int64_t v = 1;
    for (const std::int64_t d : dims) v *= d;
    return v;
}

namespace {

constexpr unsigned char kMagic[4] = {'E', 'M', 'I', 'O'};
constexpr std::uint64_t kMaxPayload = std::uint64_t{1} << 34;  // 16 GiB: larger is a corrupt length

bool little_endian() {
    const std::uint16_t one = 1;
    unsigned char first = 0;
    std::memcpy(&first, &one, 1);
    return first == 1;
}

template <typename T>
void put(std::vector<unsigned char>& out, T value) {
    unsigned char bytes[sizeof(T)];
    std::memcpy(bytes, &value, sizeof(T));  // the host is little-endian (checked in serve())
    out.insert(out.end(), bytes, bytes + sizeof(T));
}

class Reader {
public:
    explicit Reader(const std::vector<unsigned char>& data) : data_(data) {}

    template <typename T>
    T get(const char* what) {
        need(sizeof(T), what);
        T value;
        std::memcpy(&value, data_.data() + pos_, sizeof(T));
        pos_ += sizeof(T);
        return value;
    }

    std::string bytes_as_string(std::size_t n, const char* what) {
        need(n, what);
        std::string s(reinterpret_cast<const char*>(data_.data() + pos_), n);
        pos_ += n;
        return s;
    }

    void copy(std::size_t n, std::vector<unsigned char>& out, const char* what) {
        need(n, what);
        out.assign(data_.begin() + static_cast<std::ptrdiff_t>(pos_),
                   data_.begin() + static_cast<std::ptrdiff_t>(pos_ + n));
        pos_ += n;
    }

    bool at_end() const { return pos_ == data_.size(); }
    std::size_t remaining() const { return data_.size() - pos_; }

private:
    void need(std::size_t n, const char* what) const {
        if (data_.size() - pos_ < n) {
            throw RunnerError(kExitUsage, std::string("malformed tensor list: it ends inside ") + what);
        }
    }

    const std::vector<unsigned char>& data_;
    std::size_t pos_ = 0;
};

void read_exact(std::FILE* in, unsigned char* dst, std::size_t n, const char* what) {
    std::size_t got = 0;
    while (got < n) {
        const std::size_t r = std::fread(dst + got, 1, n - got, in);
        if (r == 0) {
            throw RunnerError(kExitUsage, std::string("input ended inside a frame's ") + what + " (" +
                                              std::to_string(got) + " of " + std::to_string(n) + " bytes)");
        }
        got += r;
    }
}

std::string dims_text(const std::vector<std::int64_t>& dims) {
    std::string s = "[";
    for (std::size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
    return s + "]";
}

std::vector<unsigned char> text_payload(const std::string& message) {
    return std::vector<unsigned char>(message.begin(), message.end());
}

}  // namespace

std::vector<unsigned char> encode_tensors(const std::vector<Tensor>& tensors) {
    std::vector<unsigned char> out;
    put<std::uint32_t>(out, static_cast<std::uint32_t>(tensors.size()));
    for (const Tensor& t : tensors) {
        if (t.name.size() > std::numeric_limits<std::uint16_t>::max() || t.dims.size() > 255) {
            throw RunnerError(kExitRuntime, "tensor '" + t.name + "' has a name or rank the protocol cannot carry");
        }
        put<std::uint16_t>(out, static_cast<std::uint16_t>(t.name.size()));
        out.insert(out.end(), t.name.begin(), t.name.end());
        put<std::uint8_t>(out, static_cast<std::uint8_t>(t.dtype));
        put<std::uint8_t>(out, t.is_input ? 1 : 0);
        put<std::uint8_t>(out, static_cast<std::uint8_t>(t.dims.size()));
        put<std::uint8_t>(out, 0);
        for (const std::int64_t d : t.dims) put<std::int64_t>(out, d);
        put<std::uint64_t>(out, static_cast<std::uint64_t>(t.data.size()));
        out.insert(out.end(), t.data.begin(), t.data.end());
    }
    return out;
}

std::vector<Tensor> decode_tensors(const std::vector<unsigned char>& payload) {
    Reader r(payload);
    const auto count = r.get<std::uint32_t>("the tensor count");
    std::vector<Tensor> tensors;
    for (std::uint32_t i = 0; i < count; ++i) {
        Tensor t;
        const auto name_bytes = r.get<std::uint16_t>("a name length");
        t.name = r.bytes_as_string(name_bytes, "a name");
        const auto code = r.get<std::uint8_t>("a dtype");
        if (code < 1 || code > 9) {
            throw RunnerError(kExitUsage, "tensor '" + t.name + "' has unknown dtype code " + std::to_string(code));
        }
        t.dtype = static_cast<DType>(code);
        t.is_input = r.get<std::uint8_t>("a role") != 0;
        const auto ndim = r.get<std::uint8_t>("a rank");
        r.get<std::uint8_t>("padding");
        for (std::uint8_t d = 0; d < ndim; ++d) {
            const auto dim = r.get<std::int64_t>("a dimension");
            if (dim < 0) throw RunnerError(kExitUsage, "tensor '" + t.name + "' has a negative dimension");
            t.dims.push_back(dim);
        }
        const auto data_bytes = r.get<std::uint64_t>("a data length");
        if (data_bytes > r.remaining()) {
            throw RunnerError(kExitUsage, "tensor '" + t.name + "' says " + std::to_string(data_bytes) +
                                              " data bytes; the frame has " + std::to_string(r.remaining()) + " left");
        }
        r.copy(static_cast<std::size_t>(data_bytes), t.data, "tensor data");
        tensors.push_back(std::move(t));
    }
    if (!r.at_end()) {
        throw RunnerError(kExitUsage, "malformed tensor list: " + std::to_string(r.remaining()) +
                                          " bytes after the last tensor");
    }
    return tensors;
}

bool read_frame(std::FILE* in, Frame& frame) {
    unsigned char header[16];
    const std::size_t first = std::fread(header, 1, 1, in);
    if (first == 0) return false;  // clean end of input
    read_exact(in, header + 1, sizeof(header) - 1, "header");
    if (std::memcmp(header, kMagic, 4) != 0) {
        throw RunnerError(kExitUsage, std::string("not a frame of ") + kIoSchema + " (magic bytes differ)");
    }
    std::uint32_t kind = 0;
    std::uint64_t bytes = 0;
    std::memcpy(&kind, header + 4, 4);
    std::memcpy(&bytes, header + 8, 8);
    if (kind < 1 || kind > 5) throw RunnerError(kExitUsage, "unknown frame kind " + std::to_string(kind));
    if (bytes > kMaxPayload) throw RunnerError(kExitUsage, "frame payload of " + std::to_string(bytes) + " bytes");
    frame.kind = static_cast<FrameKind>(kind);
    frame.payload.resize(static_cast<std::size_t>(bytes));
    if (bytes > 0) read_exact(in, frame.payload.data(), frame.payload.size(), "payload");
    return true;
}

void write_frame(std::FILE* out, FrameKind kind, const std::vector<unsigned char>& payload) {
    std::vector<unsigned char> header(kMagic, kMagic + 4);
    put<std::uint32_t>(header, static_cast<std::uint32_t>(kind));
    put<std::uint64_t>(header, static_cast<std::uint64_t>(payload.size()));
    const bool ok = std::fwrite(header.data(), 1, header.size(), out) == header.size() &&
                    (payload.empty() || std::fwrite(payload.data(), 1, payload.size(), out) == payload.size()) &&
                    std::fflush(out) == 0;
    if (!ok) throw RunnerError(kExitOutput, "writing a frame to standard output failed (the host went away?)");
}

std::string check_inputs(const std::vector<Tensor>& spec, const std::vector<Tensor>& inputs) {
    std::map<std::string, const Tensor*> given;
    for (const Tensor& t : inputs) {
        if (given.count(t.name)) return "input '" + t.name + "' is given twice";
        given[t.name] = &t;
    }
    std::string problems;
    auto add = [&](const std::string& p) { problems += (problems.empty() ? "" : "; ") + p; };
    for (const Tensor& want : spec) {
        if (!want.is_input) continue;
        const auto it = given.find(want.name);
        if (it == given.end()) {
            add("input '" + want.name + "' (" + dtype_name(want.dtype) + dims_text(want.dims) + ") is missing");
            continue;
        }
        const Tensor& got = *it->second;
        if (got.dtype != want.dtype || got.dims != want.dims) {
            add("input '" + want.name + "' is " + dtype_name(got.dtype) + dims_text(got.dims) + "; the engine takes " +
                dtype_name(want.dtype) + dims_text(want.dims));
        } else if (got.data.size() != want.nbytes()) {
            add("input '" + want.name + "' has " + std::to_string(got.data.size()) + " data bytes; " +
                dtype_name(want.dtype) + dims_text(want.dims) + " needs " + std::to_string(want.nbytes()));
        }
    }
    for (const Tensor& t : inputs) {
        bool known = false;
        for (const Tensor& want : spec) known = known || (want.is_input && want.name == t.name);
        if (!known) add("'" + t.name + "' is not an input of the engine");
    }
    return problems;
}

int serve(Engine& engine, std::FILE* in, std::FILE* out) {
    if (!little_endian()) {
        throw RunnerError(kExitRuntime, std::string(kIoSchema) + " is little-endian; this host is not");
    }
    const std::vector<Tensor> spec = engine.io_spec();
    write_frame(out, FrameKind::kSpec, encode_tensors(spec));
    Frame frame;
    while (read_frame(in, frame)) {
        if (frame.kind == FrameKind::kEnd) return kExitOk;
        if (frame.kind != FrameKind::kInputs) {
            write_frame(out, FrameKind::kError,
                        text_payload("expected an INPUTS or END frame, got kind " +
                                     std::to_string(static_cast<std::uint32_t>(frame.kind))));
            continue;
        }
        std::vector<Tensor> inputs;
        try {
            inputs = decode_tensors(frame.payload);
        } catch (const RunnerError& e) {
            write_frame(out, FrameKind::kError, text_payload(e.what()));
            continue;
        }
        const std::string problems = check_inputs(spec, inputs);
        if (!problems.empty()) {
            write_frame(out, FrameKind::kError, text_payload(problems));
            continue;
        }
        std::vector<Tensor> outputs;
        try {
            outputs = engine.infer(inputs);
        } catch (const RunnerError& e) {
            write_frame(out, FrameKind::kError, text_payload(e.what()));
            throw;
        }
        write_frame(out, FrameKind::kOutputs, encode_tensors(outputs));
    }
    return kExitOk;
}

}  // namespace trt_runner
