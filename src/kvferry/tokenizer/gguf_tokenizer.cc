#include "kvferry/tokenizer/gguf_tokenizer.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include <nlohmann/json.hpp>

#include "kvferry/model/gguf.h"

namespace kvferry::tokenizer {
namespace {

using nlohmann::json;

// The split regexes of llama.cpp's pre-tokenizer names, as the HF tokenizers of those models
// write them.
constexpr const char* kQwen2Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|"
    "\\s+(?!\\S)|\\s+";
constexpr const char* kLlama3Regex =
    "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";

// A read-only mapping of a whole file, unmapped on destruction.
class Mapping {
 public:
  ~Mapping() {
    if (data_ != nullptr) ::munmap(data_, size_);
  }
  Status Open(const std::string& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoToStatus(errno, "open " + path);
    struct stat st;
    if (::fstat(fd, &st) != 0) {
      const int err = errno;
      ::close(fd);
      return ErrnoToStatus(err, "stat " + path);
    }
    size_ = static_cast<size_t>(st.st_size);
    if (size_ > 0) {
      void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
      if (p == MAP_FAILED) {
        const int err = errno;
        ::close(fd);
        return ErrnoToStatus(err, "mmap " + path);
      }
      data_ = p;
    }
    ::close(fd);
    return Status::Ok();
  }
  std::string_view bytes() const { return {static_cast<const char*>(data_), size_}; }

 private:
  void* data_ = nullptr;
  size_t size_ = 0;
};

StatusOr<GgufTokenizerFiles> Build(const model::GgufFile& f) {
  KVF_ASSIGN_OR_RETURN(std::string_view kind, f.GetString("tokenizer.ggml.model"));
  if (kind != "gpt2")
    return UnimplementedError("tokenizer.ggml.model '" + std::string(kind) +
                              "' is not supported (only gpt2, byte-level BPE); pass --tokenizer DIR");
  std::string pre = "default";
  if (f.Find("tokenizer.ggml.pre")) {
    KVF_ASSIGN_OR_RETURN(std::string_view p, f.GetString("tokenizer.ggml.pre"));
    pre = std::string(p);
  }
  KVF_ASSIGN_OR_RETURN(std::vector<std::string_view> tokens, f.GetStringArray("tokenizer.ggml.tokens"));
  std::vector<int64_t> types(tokens.size(), 1);
  if (f.Find("tokenizer.ggml.token_type")) {
    KVF_ASSIGN_OR_RETURN(types, f.GetIntArray("tokenizer.ggml.token_type"));
    if (types.size() != tokens.size())
      return InvalidArgumentError("tokenizer.ggml.token_type has " + std::to_string(types.size()) +
                                  " entries for " + std::to_string(tokens.size()) + " tokens");
  }
  std::vector<std::string_view> merges;
  if (f.Find("tokenizer.ggml.merges")) {
    KVF_ASSIGN_OR_RETURN(merges, f.GetStringArray("tokenizer.ggml.merges"));
  }

  json vocab = json::object();
  json added = json::array();
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string tok(tokens[i]);
    // 3 CONTROL and 4 USER_DEFINED are added tokens (CONTROL ones special); 5 UNUSED are padding
    // entries of the vocab that no text produces.
    if (types[i] == 3 || types[i] == 4) {
      added.push_back({{"id", i}, {"content", tok}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", types[i] == 3}});
      continue;
    }
    if (types[i] == 5 || tok.empty()) continue;
    vocab[tok] = i;
  }
  json merges_json = json::array();
  for (std::string_view m : merges) merges_json.push_back(std::string(m));

  json split = nullptr;
  json normalizer = nullptr;
  const json byte_level = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false},
                           {"use_regex", false}};
  json pre_tokenizer;
  if (pre == "qwen2" || pre == "llama-bpe" || pre == "llama3") {
    if (pre == "qwen2") normalizer = {{"type", "NFC"}};
    split = {{"type", "Split"},
             {"pattern", {{"Regex", pre == "qwen2" ? kQwen2Regex : kLlama3Regex}}},
             {"behavior", "Isolated"},
             {"invert", false}};
    pre_tokenizer = {{"type", "Sequence"}, {"pretokenizers", {split, byte_level}}};
  } else if (pre == "gpt-2" || pre == "default") {
    pre_tokenizer = {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", true}, {"use_regex", true}};
  } else {
    return UnimplementedError("tokenizer.ggml.pre '" + pre +
                              "' is not supported (qwen2, llama-bpe, gpt-2 are); pass --tokenizer DIR");
  }

  auto id_key = [&](const char* key) -> StatusOr<int64_t> {
    if (!f.Find(key)) return int64_t{-1};
    return f.GetInt(key, 0, static_cast<int64_t>(tokens.size()) - 1);
  };
  KVF_ASSIGN_OR_RETURN(int64_t bos, id_key("tokenizer.ggml.bos_token_id"));
  KVF_ASSIGN_OR_RETURN(int64_t eos, id_key("tokenizer.ggml.eos_token_id"));
  KVF_ASSIGN_OR_RETURN(int64_t eot, id_key("tokenizer.ggml.eot_token_id"));
  KVF_ASSIGN_OR_RETURN(int64_t pad, id_key("tokenizer.ggml.padding_token_id"));
  bool add_bos = false;
  if (f.Find("tokenizer.ggml.add_bos_token")) {
    KVF_ASSIGN_OR_RETURN(add_bos, f.GetBool("tokenizer.ggml.add_bos_token"));
  }
  json post = byte_level;
  if (add_bos && bos >= 0) {
    const std::string b(tokens[bos]);
    post = {{"type", "TemplateProcessing"},
            {"single", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
            {"pair", {{{"SpecialToken", {{"id", b}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}},
                      {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
            {"special_tokens", {{b, {{"id", b}, {"ids", {bos}}, {"tokens", {b}}}}}}};
  }
  const json tokenizer = {
      {"version", "1.0"},
      {"truncation", nullptr},
      {"padding", nullptr},
      {"added_tokens", added},
      {"normalizer", normalizer},
      {"pre_tokenizer", pre_tokenizer},
      {"post_processor", post},
      {"decoder", byte_level},
      {"model",
       {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", nullptr}, {"continuing_subword_prefix", ""},
        {"end_of_word_suffix", ""}, {"fuse_unk", false}, {"byte_fallback", false}, {"ignore_merges", false},
        {"vocab", vocab}, {"merges", merges_json}}}};
  json config = {{"add_bos_token", add_bos}};
  config["bos_token"] = bos >= 0 ? json(std::string(tokens[bos])) : json(nullptr);
  config["eos_token"] = eos >= 0 ? json(std::string(tokens[eos])) : json(nullptr);
  if (pad >= 0) config["pad_token"] = std::string(tokens[pad]);
  if (f.Find("tokenizer.chat_template")) {
    KVF_ASSIGN_OR_RETURN(std::string_view tmpl, f.GetString("tokenizer.chat_template"));
    config["chat_template"] = std::string(tmpl);
  }
  json gen = json::object();
  if (eos >= 0 && eot >= 0 && eot != eos) {
    gen["eos_token_id"] = {eos, eot};
  } else if (eos >= 0) {
    gen["eos_token_id"] = eos;
  }
  GgufTokenizerFiles out;
  out.tokenizer_json = tokenizer.dump(-1, ' ', false, json::error_handler_t::replace);
  out.tokenizer_config_json = config.dump(-1, ' ', false, json::error_handler_t::replace);
  out.generation_config_json = gen.dump();
  return out;
}

}  // namespace

bool IsGgufPath(std::string_view path) {
  struct stat st;
  const std::string p(path);
  if (::stat(p.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  const int fd = ::open(p.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return false;
  char magic[4] = {};
  const bool ok = ::read(fd, magic, 4) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
  ::close(fd);
  return ok;
}

StatusOr<GgufTokenizerFiles> TokenizerFilesFromGguf(const std::string& path) {
  Mapping m;
  KVF_RETURN_IF_ERROR(m.Open(path));
  auto f = model::ParseGguf(m.bytes());
  if (!f.ok()) return f.status().WithContext(path);
  auto files = Build(*f);
  if (!files.ok()) return files.status().WithContext(path);
  return files;
}

}  // namespace kvferry::tokenizer
