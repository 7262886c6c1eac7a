// The strict safetensors reader and the deterministic writer.
#include <gtest/gtest.h>

#include <cstdint>
#include <filesystem>
#include <fstream>
#include <unistd.h>
#include <string>

#include <torch/torch.h>

#include "hemexp/core/error.hpp"
#include "hemexp/core/safetensors.hpp"

namespace hemexp {
namespace {

const std::filesystem::path kFixture =
    std::filesystem::path(__FILE__).parent_path().parent_path() / "data" / "safetensors" / "python_fixture.safetensors";

std::string le64(std::uint64_t n) {
  std::string s;
  for (int i = 0; i < 8; ++i) s.push_back(static_cast<char>((n >> (8 * i)) & 0xff));
  return s;
}

// A file with the given header text (taken as is) and `data_bytes` zero bytes of data.
std::string make_file(const std::string& header, std::size_t data_bytes = 0) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

// Parses `bytes` and returns the CoreError message ("" when nothing was thrown).
std::string error_of(const std::string& bytes, const std::string& name = "bad.safetensors") {
  try {
    parse_safetensors(bytes, name);
  } catch (const CoreError& e) {
    return e.what();
  }
  return "";
}

#define EXPECT_REJECTED(bytes, fragment)                                                   \
  do {                                                                                     \
    const std::string msg_ = error_of(bytes);                                              \
    EXPECT_NE(msg_.find("safetensors file 'bad.safetensors'"), std::string::npos) << msg_; \
    EXPECT_NE(msg_.find(fragment), std::string::npos) << "message: " << msg_;              \
  } while (0)

void expect_same(const SafetensorsFile& a, const SafetensorsFile& b) {
  EXPECT_EQ(a.metadata, b.metadata);
  ASSERT_EQ(a.tensors.size(), b.tensors.size());
  for (const auto& [name, t] : a.tensors) {
    ASSERT_EQ(b.tensors.count(name), 1u) << name;
    const torch::Tensor& u = b.tensors.at(name);
    EXPECT_EQ(t.scalar_type(), u.scalar_type()) << name;
    EXPECT_EQ(t.sizes(), u.sizes()) << name;
    EXPECT_TRUE(torch::equal(t.contiguous(), u)) << name;
    EXPECT_TRUE(u.is_contiguous()) << name;
    EXPECT_TRUE(u.device().is_cpu()) << name;
  }
}

SafetensorsFile sample() {
  torch::manual_seed(7);
  SafetensorsFile f;
  f.tensors["a.f32"] = torch::randn({3, 4});
  f.tensors["b.f64"] = torch::randn({2, 1, 3}, torch::kFloat64);
  f.tensors["c.f16"] = torch::randn({5}).to(torch::kFloat16);
  f.tensors["d.bf16"] = torch::randn({2, 2}).to(torch::kBFloat16);
  f.tensors["e.i64"] = torch::arange(-3, 3, torch::kInt64).reshape({2, 3});
  f.tensors["f.i32"] = torch::tensor({-2147483647 - 1, 0, 2147483647}, torch::kInt32);
  f.tensors["g.i16"] = torch::tensor({-32768, 7, 32767}, torch::kInt16);
  f.tensors["h.i8"] = torch::tensor({-128, 0, 127}, torch::kInt8);
  f.tensors["i.u8"] = torch::tensor({0, 128, 255}, torch::kUInt8);
  f.tensors["j.bool"] = torch::tensor({true, false, true});
  f.tensors["k.scalar"] = torch::tensor(2.5);                 // 0-d
  f.tensors["l.empty"] = torch::empty({0, 7});                 // no bytes
  f.tensors["m.empty_i64"] = torch::empty({3, 0}, torch::kInt64);
  f.tensors["n.transposed"] = torch::arange(12, torch::kFloat32).reshape({3, 4}).t();  // not contiguous
  f.metadata["format"] = "pt";
  f.metadata["card"] = "{\"json\": [1, 2]}";
  return f;
}

TEST(Safetensors, RoundTripAllDtypesAndShapes) {
  const SafetensorsFile f = sample();
  const std::string bytes = serialize_safetensors(f);
  expect_same(f, parse_safetensors(bytes, "memory"));
  // 0-d stays 0-d and empty stays empty.
  const SafetensorsFile g = parse_safetensors(bytes, "memory");
  EXPECT_EQ(g.tensors.at("k.scalar").dim(), 0);
  EXPECT_EQ(g.tensors.at("l.empty").numel(), 0);
  EXPECT_EQ(g.tensors.at("l.empty").sizes(), torch::IntArrayRef({0, 7}));
}

TEST(Safetensors, SerialisationIsDeterministicAndPadded) {
  const std::string a = serialize_safetensors(sample());
  const std::string b = serialize_safetensors(sample());
  EXPECT_EQ(a, b);
  std::uint64_t n = 0;
  for (int i = 7; i >= 0; --i) n = (n << 8) | static_cast<unsigned char>(a[i]);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(a[8], '{');
  const std::string header = a.substr(8, n);
  // Metadata first, then the tensors in name order, data in the same order.
  EXPECT_EQ(header.find("{\"__metadata__\""), 0u);
  EXPECT_LT(header.find("\"a.f32\""), header.find("\"b.f64\""));
  EXPECT_LT(header.find("\"m.empty_i64\""), header.find("\"n.transposed\""));
  EXPECT_NE(header.find("\"a.f32\":{\"dtype\":\"F32\",\"shape\":[3,4],\"data_offsets\":[0,48]}"), std::string::npos)
      << header;
  // Padding is spaces only.
  const std::size_t last = header.find_last_not_of(' ');
  EXPECT_EQ(header[last], '}');
  EXPECT_LT(header.size() - last - 1, 8u);
}

TEST(Safetensors, EmptyFileWithoutTensors) {
  SafetensorsFile f;
  const std::string bytes = serialize_safetensors(f);
  const SafetensorsFile g = parse_safetensors(bytes, "memory");
  EXPECT_TRUE(g.tensors.empty());
  EXPECT_TRUE(g.metadata.empty());
}

TEST(Safetensors, WriteAndReadFile) {
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("hemexp_test_" + std::to_string(::getpid()) + ".safetensors");
  const SafetensorsFile f = sample();
  write_safetensors(path, f);
  expect_same(f, read_safetensors(path));
  std::filesystem::remove(path);
}

TEST(Safetensors, TensorsOwnTheirMemory) {
  SafetensorsFile f;
  f.tensors["x"] = torch::tensor({1.0f, 2.0f});
  std::string bytes = serialize_safetensors(f);
  const SafetensorsFile g = parse_safetensors(bytes, "memory");
  std::fill(bytes.end() - 8, bytes.end(), '\x7f');  // overwrite the source buffer
  bytes.clear();
  bytes.shrink_to_fit();
  EXPECT_TRUE(torch::equal(g.tensors.at("x"), torch::tensor({1.0f, 2.0f})));
}

TEST(Safetensors, ReadsFileWrittenByPython) {
  const SafetensorsFile f = read_safetensors(kFixture);
  EXPECT_EQ(f.metadata.at("format"), "pt");
  EXPECT_EQ(f.metadata.at("writer"), "scripts/make_safetensors_fixture.py");
  ASSERT_EQ(f.tensors.size(), 11u);
  EXPECT_TRUE(torch::equal(f.tensors.at("conv.weight"),
                           torch::tensor({-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}).reshape({2, 3})));
  EXPECT_TRUE(torch::equal(f.tensors.at("counts"), torch::tensor({int64_t{-5}, int64_t{0}, int64_t{1} << 40})));
  EXPECT_TRUE(torch::equal(f.tensors.at("half"),
                           torch::tensor({1.0f, -2.0f, 0.5f, 65504.0f}).reshape({2, 2}).to(torch::kFloat16)));
  EXPECT_TRUE(torch::equal(f.tensors.at("brain"), torch::tensor({1.0f, -2.5f, 0.15625f}).to(torch::kBFloat16)));
  const torch::Tensor& scalar = f.tensors.at("scalar");
  EXPECT_EQ(scalar.dim(), 0);
  EXPECT_EQ(scalar.scalar_type(), torch::kFloat64);
  EXPECT_EQ(scalar.item<double>(), 3.141592653589793);
  EXPECT_TRUE(torch::equal(f.tensors.at("flags"), torch::tensor({true, false, false, true})));
  EXPECT_TRUE(torch::equal(f.tensors.at("bytes"), torch::tensor({0, 7, 128, 255}, torch::kUInt8).reshape({2, 2})));
  EXPECT_TRUE(torch::equal(f.tensors.at("small"), torch::tensor({-128, 127}, torch::kInt8)));
  EXPECT_TRUE(torch::equal(f.tensors.at("shorts"), torch::tensor({-32768, 1234}, torch::kInt16)));
  EXPECT_TRUE(torch::equal(f.tensors.at("ints"), torch::tensor({-7, 2147483647}, torch::kInt32).reshape({1, 2})));
  EXPECT_EQ(f.tensors.at("empty").sizes(), torch::IntArrayRef({0, 4}));
  EXPECT_EQ(f.tensors.at("empty").scalar_type(), torch::kFloat32);
}

TEST(Safetensors, ErrorNamesThePath) {
  const std::filesystem::path path = std::filesystem::temp_directory_path() /
                                     ("hemexp_bad_" + std::to_string(::getpid()) + ".safetensors");
  {
    std::ofstream out(path, std::ios::binary);
    out << "abc";
  }
  try {
    read_safetensors(path);
    ADD_FAILURE() << "no error";
  } catch (const CoreError& e) {
    EXPECT_NE(std::string(e.what()).find(path.string()), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("truncated header length"), std::string::npos) << e.what();
  }
  std::filesystem::remove(path);
  EXPECT_THROW(read_safetensors(path), CoreError);  // missing file
  EXPECT_THROW(read_safetensors(std::filesystem::temp_directory_path()), CoreError);  // a directory
}

// ---- one test per rejection rule ----------------------------------------------

TEST(SafetensorsReject, TruncatedHeaderLength) {
  EXPECT_REJECTED(std::string(""), "truncated header length");
  EXPECT_REJECTED(std::string("\x10\0\0", 3), "truncated header length");
}

TEST(SafetensorsReject, HeaderLengthPastEndOfFile) {
  EXPECT_REJECTED(le64(100) + "{}", "runs past the end of the file");
  EXPECT_REJECTED(le64(3) + "{}", "runs past the end of the file");
}

TEST(SafetensorsReject, HeaderLengthAboveLimit) {
  EXPECT_REJECTED(le64(std::uint64_t{1} << 40) + "{}", "exceeds the limit");
  EXPECT_REJECTED(le64(~std::uint64_t{0}) + "{}", "exceeds the limit");
}

TEST(SafetensorsReject, InvalidJson) {
  EXPECT_REJECTED(make_file("{\"a\": "), "not valid JSON");
  EXPECT_REJECTED(make_file("{\"a\": {}} trailing"), "not valid JSON");
  EXPECT_REJECTED(make_file("{'a': 1}"), "not valid JSON");
}

TEST(SafetensorsReject, HeaderNotAnObject) {
  EXPECT_REJECTED(make_file("[1, 2]"), "header is not a JSON object");
  EXPECT_REJECTED(make_file("\"text\""), "header is not a JSON object");
  EXPECT_REJECTED(make_file(""), "header is not a JSON object");
  EXPECT_REJECTED(make_file("{\"x\": [1]}"), "tensor 'x' is not a JSON object");
}

TEST(SafetensorsReject, UnknownDtype) {
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}})", 1),
                  "tensor 'x': unknown dtype 'F8'");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "f32", "shape": [1], "data_offsets": [0, 4]}})", 4),
                  "unknown dtype 'f32'");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": 4, "shape": [1], "data_offsets": [0, 4]}})", 4),
                  "dtype is not a string");
}

TEST(SafetensorsReject, BadShape) {
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [-1], "data_offsets": [0, 0]}})"),
                  "tensor 'x': shape [-1] is not a list of non-negative integers");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [2.0], "data_offsets": [0, 8]}})", 8),
                  "is not a list of non-negative integers");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": ["2"], "data_offsets": [0, 8]}})", 8),
                  "is not a list of non-negative integers");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [true], "data_offsets": [0, 4]}})", 4),
                  "is not a list of non-negative integers");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": 2, "data_offsets": [0, 8]}})", 8),
                  "shape is not an array");
  EXPECT_REJECTED(
      make_file(R"({"x": {"dtype": "F32", "shape": [4294967296, 4294967296], "data_offsets": [0, 0]}})"),
      "is too large");
}

TEST(SafetensorsReject, OffsetsOutOfRange) {
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", 8),
                  "out of range of the data section (8 bytes)");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [8, 4]}})", 8),
                  "begin after their end");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [-4, 0]}})", 8),
                  "is not a pair of non-negative integers");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4, 8]}})", 8),
                  "is not a pair of non-negative integers");
}

TEST(SafetensorsReject, SizeMismatch) {
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 4]}})", 4),
                  "tensor 'x': data_offsets [0,4] span 4 bytes but dtype F32 and shape [2] need 8");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "BF16", "shape": [], "data_offsets": [0, 4]}})", 4),
                  "span 4 bytes but dtype BF16 and shape [] need 2");
}

TEST(SafetensorsReject, Overlap) {
  EXPECT_REJECTED(make_file(R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                                "b": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}})",
                            12),
                  "tensors 'a' and 'b' overlap");
  // The same bytes claimed twice.
  EXPECT_REJECTED(make_file(R"({"a": {"dtype": "I32", "shape": [1], "data_offsets": [0, 4]},
                                "b": {"dtype": "F32", "shape": [], "data_offsets": [0, 4]}})",
                            4),
                  "overlap");
}

TEST(SafetensorsReject, Hole) {
  EXPECT_REJECTED(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                "b": {"dtype": "F32", "shape": [1], "data_offsets": [8, 12]}})",
                            12),
                  "hole in the data section: bytes 4 to 8 belong to no tensor");
  EXPECT_REJECTED(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", 9),
                  "hole in the data section: bytes 4 to 9");
  EXPECT_REJECTED(make_file(R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", 8),
                  "hole in the data section: bytes 0 to 4");
  EXPECT_REJECTED(make_file("{}", 3), "hole in the data section: bytes 0 to 3");
}

TEST(SafetensorsReject, NonStringMetadata) {
  EXPECT_REJECTED(make_file(R"({"__metadata__": {"format": "pt", "epochs": 10}})"),
                  "__metadata__ value of 'epochs' is not a string (10)");
  EXPECT_REJECTED(make_file(R"({"__metadata__": {"nested": {"a": "b"}}})"), "is not a string");
  EXPECT_REJECTED(make_file(R"({"__metadata__": ["format", "pt"]})"), "__metadata__ is not a JSON object");
}

TEST(SafetensorsReject, MissingOrUnknownFieldsAndDuplicates) {
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1]}})", 4), "tensor 'x' has no 'data_offsets'");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4], "extra": 1}})", 4),
                  "tensor 'x' has an unknown field 'extra'");
  EXPECT_REJECTED(make_file(R"({"x": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]},
                                "x": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                            8),
                  "duplicate key 'x'");
}

TEST(SafetensorsReject, WriterRefusesBadInput) {
  SafetensorsFile f;
  f.tensors["__metadata__"] = torch::zeros({1});
  EXPECT_THROW(serialize_safetensors(f), CoreError);
  SafetensorsFile g;
  g.tensors["c"] = torch::zeros({1}, torch::kComplexFloat);
  EXPECT_THROW(serialize_safetensors(g), CoreError);
}

}  // namespace
}  // namespace hemexp
