// A strict reader and a deterministic writer of the safetensors format:
//   8 bytes: N, the header length (unsigned 64-bit little-endian)
//   N bytes: a JSON object {name: {"dtype", "shape", "data_offsets"}, "__metadata__": {...}}
//   rest:    the data section; data_offsets are relative to its start.
// Nothing outside the format is accepted: every byte of the data section belongs to exactly
// one tensor, and every field is checked before any data is copied.
#include "hemexp/core/safetensors.hpp"

#include <algorithm>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <utility>

#include <nlohmann/json.hpp>
#include <torch/torch.h>

#include "hemexp/core/error.hpp"

namespace hemexp {
namespace {

// The reference implementation refuses headers above 100 MB; so do we.
constexpr std::uint64_t kMaxHeaderBytes = 100'000'000;

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  std::size_t itemsize;
};

constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1},
};

const DtypeInfo* dtype_by_name(const std::string& name) {
  for (const DtypeInfo& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo* dtype_by_type(torch::ScalarType type) {
  for (const DtypeInfo& d : kDtypes)
    if (type == d.type) return &d;
  return nullptr;
}

bool host_is_little_endian() {
  const std::uint16_t probe = 1;
  unsigned char first = 0;
  std::memcpy(&first, &probe, 1);
  return first == 1;
}

[[noreturn]] void fail(const std::string& name, const std::string& problem) {
  throw CoreError("safetensors file '" + name + "': " + problem);
}

std::string quote_name(const std::string& s) { return "'" + s + "'"; }

// A JSON value that is a non-negative integer (not a float such as 2.0, not a bool).
bool as_count(const nlohmann::json& v, std::uint64_t& out) {
  if (v.is_number_unsigned()) {
    out = v.get<std::uint64_t>();
    return true;
  }
  if (v.is_number_integer()) {  // a signed integer: only accepted when non-negative
    const std::int64_t s = v.get<std::int64_t>();
    if (s < 0) return false;
    out = static_cast<std::uint64_t>(s);
    return true;
  }
  return false;
}

struct Entry {
  std::string name;
  const DtypeInfo* dtype = nullptr;
  std::vector<std::int64_t> shape;
  std::uint64_t begin = 0;
  std::uint64_t end = 0;
};

// Parses the header JSON, refusing duplicate keys at any depth (nlohmann keeps the last one
// silently, which would hide a second definition of a tensor).
nlohmann::json parse_header_json(const std::string& text, const std::string& name) {
  std::vector<std::set<std::string>> keys;  // one set per open object
  std::string duplicate;
  auto callback = [&](int /*depth*/, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
    switch (event) {
      case nlohmann::json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case nlohmann::json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case nlohmann::json::parse_event_t::key:
        if (!keys.empty() && !keys.back().insert(parsed.get<std::string>()).second && duplicate.empty())
          duplicate = parsed.get<std::string>();
        break;
      default:
        break;
    }
    return true;
  };
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text, callback, /*allow_exceptions=*/true, /*ignore_comments=*/false);
  } catch (const nlohmann::json::exception& e) {
    fail(name, std::string("header is not valid JSON (") + e.what() + ")");
  }
  if (!duplicate.empty()) fail(name, "header has a duplicate key " + quote_name(duplicate));
  return header;
}

Entry parse_entry(const std::string& key, const nlohmann::json& v, std::uint64_t data_size,
                  const std::string& name) {
  const std::string what = "tensor " + quote_name(key);
  if (!v.is_object()) fail(name, what + " is not a JSON object");
  for (auto it = v.begin(); it != v.end(); ++it) {
    if (it.key() != "dtype" && it.key() != "shape" && it.key() != "data_offsets")
      fail(name, what + " has an unknown field " + quote_name(it.key()));
  }
  for (const char* field : {"dtype", "shape", "data_offsets"})
    if (!v.contains(field)) fail(name, what + " has no '" + field + "'");

  Entry e;
  e.name = key;
  const nlohmann::json& dtype = v["dtype"];
  if (!dtype.is_string()) fail(name, what + ": dtype is not a string");
  e.dtype = dtype_by_name(dtype.get<std::string>());
  if (e.dtype == nullptr) fail(name, what + ": unknown dtype " + quote_name(dtype.get<std::string>()));

  const nlohmann::json& shape = v["shape"];
  if (!shape.is_array()) fail(name, what + ": shape is not an array");
  std::uint64_t numel = 1;
  bool overflow = false;
  for (const nlohmann::json& d : shape) {
    std::uint64_t n = 0;
    if (!as_count(d, n)) fail(name, what + ": shape " + shape.dump() + " is not a list of non-negative integers");
    if (n > static_cast<std::uint64_t>(std::numeric_limits<std::int64_t>::max())) overflow = true;
    if (!overflow && n != 0 && numel > std::numeric_limits<std::uint64_t>::max() / n) overflow = true;
    numel *= n;
    e.shape.push_back(static_cast<std::int64_t>(n));
  }
  if (!overflow && numel > std::numeric_limits<std::uint64_t>::max() / e.dtype->itemsize) overflow = true;
  if (overflow) fail(name, what + ": shape " + shape.dump() + " is too large");
  const std::uint64_t bytes = numel * e.dtype->itemsize;

  const nlohmann::json& offsets = v["data_offsets"];
  if (!offsets.is_array() || offsets.size() != 2 || !as_count(offsets[0], e.begin) || !as_count(offsets[1], e.end))
    fail(name, what + ": data_offsets " + offsets.dump() + " is not a pair of non-negative integers");
  if (e.begin > e.end)
    fail(name, what + ": data_offsets " + offsets.dump() + " begin after their end");
  if (e.end > data_size)
    fail(name, what + ": data_offsets " + offsets.dump() + " out of range of the data section (" +
                   std::to_string(data_size) + " bytes)");
  if (e.end - e.begin != bytes)
    fail(name, what + ": data_offsets " + offsets.dump() + " span " + std::to_string(e.end - e.begin) +
                   " bytes but dtype " + e.dtype->name + " and shape " + shape.dump() + " need " +
                   std::to_string(bytes));
  return e;
}

}  // namespace

SafetensorsFile parse_safetensors(const std::string& bytes, const std::string& name) {
  if (!host_is_little_endian()) fail(name, "this reader supports little-endian hosts only");
  if (bytes.size() < 8)
    fail(name, "truncated header length (" + std::to_string(bytes.size()) + " bytes, need 8)");
  std::uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | static_cast<unsigned char>(bytes[i]);
  if (header_len > kMaxHeaderBytes)
    fail(name, "header length " + std::to_string(header_len) + " exceeds the limit of " +
                   std::to_string(kMaxHeaderBytes) + " bytes");
  if (header_len > bytes.size() - 8)
    fail(name, "header length " + std::to_string(header_len) + " runs past the end of the file (" +
                   std::to_string(bytes.size()) + " bytes)");
  const std::string header_text = bytes.substr(8, header_len);
  if (header_text.empty() || header_text[0] != '{') fail(name, "header is not a JSON object (must start with '{')");
  const nlohmann::json header = parse_header_json(header_text, name);
  if (!header.is_object()) fail(name, "header is not a JSON object");

  const std::uint64_t data_size = bytes.size() - 8 - header_len;
  const char* data = bytes.data() + 8 + header_len;

  SafetensorsFile out;
  std::vector<Entry> entries;
  for (auto it = header.begin(); it != header.end(); ++it) {
    if (it.key() == "__metadata__") {
      if (!it.value().is_object()) fail(name, "__metadata__ is not a JSON object");
      for (auto m = it.value().begin(); m != it.value().end(); ++m) {
        if (!m.value().is_string())
          fail(name, "__metadata__ value of " + quote_name(m.key()) + " is not a string (" + m.value().dump() + ")");
        out.metadata[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    entries.push_back(parse_entry(it.key(), it.value(), data_size, name));
  }

  // Every byte of the data section belongs to exactly one tensor, in order.
  std::vector<const Entry*> order;
  for (const Entry& e : entries) order.push_back(&e);
  std::sort(order.begin(), order.end(), [](const Entry* a, const Entry* b) {
    return a->begin != b->begin ? a->begin < b->begin : a->end < b->end;
  });
  std::uint64_t cursor = 0;
  const Entry* previous = nullptr;
  for (const Entry* e : order) {
    if (e->begin < cursor)
      fail(name, "tensors " + quote_name(previous->name) + " and " + quote_name(e->name) + " overlap (bytes " +
                     std::to_string(e->begin) + " to " + std::to_string(cursor) + ")");
    if (e->begin > cursor)
      fail(name, "hole in the data section: bytes " + std::to_string(cursor) + " to " + std::to_string(e->begin) +
                     " belong to no tensor");
    cursor = e->end;
    if (e->end > e->begin || previous == nullptr) previous = e;
  }
  if (cursor != data_size)
    fail(name, "hole in the data section: bytes " + std::to_string(cursor) + " to " + std::to_string(data_size) +
                   " belong to no tensor");

  for (const Entry& e : entries) {
    torch::Tensor t = torch::empty(e.shape, torch::TensorOptions().dtype(e.dtype->type));
    if (e.end > e.begin) std::memcpy(t.data_ptr(), data + e.begin, e.end - e.begin);
    out.tensors.emplace(e.name, std::move(t));
  }
  return out;
}

SafetensorsFile read_safetensors(const std::filesystem::path& path) {
  const std::string name = path.string();
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) fail(name, "not a regular file (missing?)");
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(name, "cannot open the file");
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) fail(name, "read error");
  return parse_safetensors(buffer.str(), name);
}

std::string serialize_safetensors(const SafetensorsFile& file) {
  const std::string name = "(serialising)";
  if (!host_is_little_endian()) fail(name, "this writer supports little-endian hosts only");
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!file.metadata.empty()) {
    nlohmann::ordered_json meta = nlohmann::ordered_json::object();
    for (const auto& [k, v] : file.metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  std::vector<torch::Tensor> contiguous;
  std::uint64_t offset = 0;
  for (const auto& [key, tensor] : file.tensors) {  // std::map: name order
    if (key == "__metadata__") fail(name, "a tensor cannot be named '__metadata__'");
    if (!tensor.defined()) fail(name, "tensor " + quote_name(key) + " is undefined");
    const DtypeInfo* d = dtype_by_type(tensor.scalar_type());
    if (d == nullptr)
      fail(name, "tensor " + quote_name(key) + " has unsupported dtype " + std::string(c10::toString(tensor.scalar_type())));
    torch::Tensor t = tensor.to(torch::kCPU).contiguous();
    const std::uint64_t bytes = static_cast<std::uint64_t>(t.numel()) * d->itemsize;
    nlohmann::ordered_json entry = nlohmann::ordered_json::object();
    entry["dtype"] = d->name;
    entry["shape"] = t.sizes().vec();
    entry["data_offsets"] = {offset, offset + bytes};
    header[key] = std::move(entry);
    offset += bytes;
    contiguous.push_back(std::move(t));
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // the reference pads with spaces to 8 bytes

  std::string out;
  out.reserve(8 + text.size() + offset);
  const std::uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) out.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  out += text;
  for (const torch::Tensor& t : contiguous)
    if (t.numel() > 0) out.append(static_cast<const char*>(t.data_ptr()), t.numel() * t.element_size());
  return out;
}

void write_safetensors(const std::filesystem::path& path, const SafetensorsFile& file) {
  const std::string bytes = serialize_safetensors(file);
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) throw CoreError("safetensors file '" + path.string() + "': cannot open for writing");
  out.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  out.close();
  if (!out) throw CoreError("safetensors file '" + path.string() + "': write failed");
}

}  // namespace hemexp
