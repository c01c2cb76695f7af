// MakeTinyModel: deterministic random-weight models in HF layout, and the placeholder tokenizer.

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "kvferry/model/model.h"
#include "kvferry/model/progress.h"

namespace kvferry::model {
namespace {

using nlohmann::json;

// Merges of the placeholder tokenizer (each result is a vocab entry after the 256 bytes).
const char* const kMerges[][2] = {{"\xc4\xa0", "t"}, {"\xc4\xa0", "a"}, {"h", "e"},         {"i", "n"},
                                  {"r", "e"},        {"o", "n"},        {"\xc4\xa0t", "h"}, {"e", "r"}};
constexpr int64_t kNumMerges = sizeof(kMerges) / sizeof(kMerges[0]);

uint64_t SplitMix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

uint64_t Fnv1a(const std::string& s) {
  uint64_t h = 0xcbf29ce484222325ull;
  for (unsigned char ch : s) h = (h ^ ch) * 0x100000001b3ull;
  return h;
}

// How a tensor is filled: uniform on [center - spread, center + spread].
struct TensorSpec {
  std::string name;
  std::vector<int64_t> shape;
  float center = 0;
  float spread = 0;
};

TensorSpec Weight(std::string name, int64_t rows, int64_t cols, float gain = 1.0f) {
  // Uniform with std gain / sqrt(fan_in): activations stay O(1).
  return {std::move(name), {rows, cols}, 0.0f, gain * std::sqrt(3.0f) / std::sqrt(static_cast<float>(cols))};
}
TensorSpec Vec(std::string name, int64_t n, float center, float spread) {
  return {std::move(name), {n}, center, spread};
}

std::string Utf8(uint32_t cp) {
  std::string s;
  if (cp < 0x80) {
    s += static_cast<char>(cp);
  } else if (cp < 0x800) {
    s += static_cast<char>(0xc0 | (cp >> 6));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  } else {
    s += static_cast<char>(0xe0 | (cp >> 12));
    s += static_cast<char>(0x80 | ((cp >> 6) & 0x3f));
    s += static_cast<char>(0x80 | (cp & 0x3f));
  }
  return s;
}

Status WriteText(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  out.close();
  if (!out) return UnknownError("cannot write " + path);
  return Status::Ok();
}

const char* SafetensorsDType(DType d) {
  switch (d) {
    case DType::kF32: return "F32";
    case DType::kF16: return "F16";
    case DType::kBF16: return "BF16";
    default: return "?";  // make-tiny writes float dtypes only (quantized types go to GGUF)
  }
}

Status WriteSafetensors(const std::string& path, std::vector<TensorSpec> specs, DType dtype, uint64_t seed,
                        bool show_progress) {
  std::sort(specs.begin(), specs.end(), [](const TensorSpec& a, const TensorSpec& b) { return a.name < b.name; });
  const uint64_t esize = kernels::DTypeSize(dtype);
  std::string header = "{\"__metadata__\":{\"format\":\"pt\"}";
  uint64_t offset = 0;
  for (const auto& t : specs) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    header += ",\"" + t.name + "\":{\"dtype\":\"" + SafetensorsDType(dtype) + "\",\"shape\":[";
    for (size_t i = 0; i < t.shape.size(); ++i) {
      if (i > 0) header += ',';
      header += std::to_string(t.shape[i]);
    }
    header += "],\"data_offsets\":[" + std::to_string(offset) + "," + std::to_string(offset + n * esize) + "]}";
    offset += n * esize;
  }
  header += "}";
  while (header.size() % 8 != 0) header += ' ';
  std::FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) return ErrnoToStatus(errno, "create " + path);
  uint8_t len[8];
  for (int i = 0; i < 8; ++i) len[i] = static_cast<uint8_t>(header.size() >> (8 * i));
  bool ok = std::fwrite(len, 1, 8, f) == 8 && std::fwrite(header.data(), 1, header.size(), f) == header.size();
  Progress progress("writing " + path, offset, show_progress);
  uint64_t done = 0;
  constexpr uint64_t kChunk = 1 << 20;
  std::vector<float> vals(kChunk);
  std::vector<uint8_t> bytes(kChunk * esize);
  for (const auto& t : specs) {
    uint64_t n = 1;
    for (int64_t d : t.shape) n *= static_cast<uint64_t>(d);
    uint64_t state = seed * 0x9e3779b97f4a7c15ull ^ Fnv1a(t.name);
    for (uint64_t i = 0; ok && i < n; i += kChunk) {
      const uint64_t m = std::min(kChunk, n - i);
      for (uint64_t j = 0; j < m; ++j) {
        const float u = static_cast<float>(SplitMix(state) >> 40) * 0x1p-24f * 2.0f - 1.0f;
        vals[j] = t.center + t.spread * u;
      }
      kernels::ConvertFromF32(vals.data(), static_cast<int64_t>(m), dtype, bytes.data());
      ok = std::fwrite(bytes.data(), 1, m * esize, f) == m * esize;
      done += m * esize;
      progress.Update(done);
    }
  }
  ok = std::fclose(f) == 0 && ok;
  if (!ok) return UnknownError("write " + path + " failed");
  return Status::Ok();
}

json RopeScalingJson(const RopeScaling& rs) {
  switch (rs.type) {
    case RopeScaling::Type::kNone: return nullptr;
    case RopeScaling::Type::kLinear: return {{"rope_type", "linear"}, {"factor", rs.factor}};
    case RopeScaling::Type::kLlama3:
      return {{"rope_type", "llama3"},
              {"factor", rs.factor},
              {"low_freq_factor", rs.low_freq_factor},
              {"high_freq_factor", rs.high_freq_factor},
              {"original_max_position_embeddings", rs.original_max_position_embeddings}};
    case RopeScaling::Type::kYarn:
      return {{"rope_type", "yarn"},
              {"factor", rs.factor},
              {"original_max_position_embeddings", rs.original_max_position_embeddings}};
  }
  return nullptr;
}

const char* kChatTemplate =
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

// Text the tokenizer's extra merges are learned from (plain English, written for this file).
const char* const kMergeCorpus =
    "The ferry leaves the harbour at seven in the morning and returns before the evening tide. "
    "Passengers wait on the pier with their bags, their bicycles and their coffee, watching the "
    "water turn from grey to green as the sun comes over the hills. The captain checks the engine, "
    "the weather and the list of cargo, then rings the bell twice. On the crossing there is time "
    "to read, to talk with strangers or to stand at the rail and count the islands. Some people "
    "travel every day for work; others come once in their life and remember it for years. "
    "When the wind is strong the boat rolls, the children laugh and the older travellers hold "
    "their cups with both hands. A small cafe below deck sells bread, soup, tea and cake. "
    "The crew know the regular passengers by name and ask about their families, their gardens "
    "and their plans for the summer. At the far side the road climbs between stone walls to a "
    "village with a market, a school, a church and a station where trains run north to the city. "
    "Computers and networks work much like the ferry: data waits in a queue, moves across a link "
    "and arrives in order, and a careful system counts every byte, checks every message and "
    "reports every error clearly. Good software is patient with slow clients, fair to every "
    "request and honest about what it measured. Numbers such as 1, 2, 16, 128 and 4096 appear "
    "in tables; questions like what, where, when, why and how appear in conversations. "
    "Hello! How are you today? I am fine, thank you. Please tell me a story about the sea.";

// Splits text the way the pre-tokenizer roughly does (an optional space and a run of letters,
// or one other character) and maps bytes to the byte-level alphabet.
std::map<std::vector<std::string>, int64_t> CorpusWords(const std::vector<std::string>& byte_char) {
  std::map<std::vector<std::string>, int64_t> words;
  const std::string text = kMergeCorpus;
  size_t i = 0;
  auto is_letter = [](char c) { return std::isalpha(static_cast<unsigned char>(c)) != 0; };
  while (i < text.size()) {
    size_t j = i;
    if (text[j] == ' ' && j + 1 < text.size() && is_letter(text[j + 1])) ++j;
    if (is_letter(text[j])) {
      while (j < text.size() && is_letter(text[j])) ++j;
    } else {
      ++j;
    }
    std::vector<std::string> symbols;
    for (size_t k = i; k < j; ++k) symbols.push_back(byte_char[static_cast<unsigned char>(text[k])]);
    ++words[symbols];
    i = j;
  }
  return words;
}

void ApplyMerge(std::map<std::vector<std::string>, int64_t>& words, const std::string& a, const std::string& b) {
  std::map<std::vector<std::string>, int64_t> next;
  for (const auto& [w, n] : words) {
    std::vector<std::string> out;
    for (size_t i = 0; i < w.size(); ++i) {
      if (i + 1 < w.size() && w[i] == a && w[i + 1] == b) {
        out.push_back(a + b);
        ++i;
      } else {
        out.push_back(w[i]);
      }
    }
    next[out] += n;
  }
  words = std::move(next);
}

// Byte-pair-encoding training on kMergeCorpus, after the fixed merges: up to `limit` new merges
// (most frequent pair first, ties broken by the pair's text), none producing a token that
// already exists.
std::vector<std::pair<std::string, std::string>> LearnMerges(const std::vector<std::string>& byte_char,
                                                             const json& vocab, int64_t limit) {
  auto words = CorpusWords(byte_char);
  for (int64_t i = 0; i < kNumMerges; ++i) ApplyMerge(words, kMerges[i][0], kMerges[i][1]);
  std::set<std::string> known;
  for (auto it = vocab.begin(); it != vocab.end(); ++it) known.insert(it.key());
  std::vector<std::pair<std::string, std::string>> learned;
  while (static_cast<int64_t>(learned.size()) < limit) {
    std::map<std::pair<std::string, std::string>, int64_t> pairs;
    for (const auto& [w, n] : words) {
      for (size_t i = 0; i + 1 < w.size(); ++i) pairs[{w[i], w[i + 1]}] += n;
    }
    const std::pair<std::string, std::string>* best = nullptr;
    int64_t best_n = 0;
    for (const auto& [p, n] : pairs) {
      if (n > best_n && known.count(p.first + p.second) == 0) {
        best = &p;
        best_n = n;
      }
    }
    if (best == nullptr) break;  // every word is one token
    learned.push_back(*best);
    known.insert(best->first + best->second);
    ApplyMerge(words, best->first, best->second);
  }
  return learned;
}

}  // namespace

SpecialTokenIds PlaceholderSpecialTokens(int64_t vocab_size) {
  if (vocab_size >= 151646) return {151643, 151644, 151645};
  const int64_t base = 256 + kNumMerges;
  return {base, base + 1, base + 2};
}

Status WritePlaceholderTokenizer(const std::string& dir, const ModelConfig& config) {
  const SpecialTokenIds sp = PlaceholderSpecialTokens(config.vocab_size);
  if (config.vocab_size < 256 + kNumMerges + 3)
    return InvalidArgumentError("vocab_size must be at least " + std::to_string(256 + kNumMerges + 3) +
                                " for the placeholder tokenizer");
  // GPT-2 byte-to-unicode table; byte tokens get ids in its order.
  std::vector<uint32_t> bs;
  for (uint32_t b = '!'; b <= '~'; ++b) bs.push_back(b);
  for (uint32_t b = 0xa1; b <= 0xac; ++b) bs.push_back(b);
  for (uint32_t b = 0xae; b <= 0xff; ++b) bs.push_back(b);
  std::vector<uint32_t> cs = bs;
  uint32_t extra = 0;
  for (uint32_t b = 0; b < 256; ++b) {
    if (std::find(bs.begin(), bs.end(), b) == bs.end()) {
      bs.push_back(b);
      cs.push_back(256 + extra++);
    }
  }
  json vocab = json::object();
  for (size_t i = 0; i < cs.size(); ++i) vocab[Utf8(cs[i])] = static_cast<int64_t>(i);
  json merges = json::array();
  for (int64_t i = 0; i < kNumMerges; ++i) {
    merges.push_back(std::string(kMerges[i][0]) + " " + kMerges[i][1]);
    vocab[std::string(kMerges[i][0]) + kMerges[i][1]] = 256 + i;
  }
  // Learned merges take the ids after the special tokens (small vocabularies) or after the
  // fixed merges (Qwen-sized ones, whose special tokens sit at the end), so that as many ids
  // as the corpus allows decode to real text.
  {
    std::vector<std::string> byte_char(256);
    for (size_t i = 0; i < bs.size(); ++i) byte_char[bs[i]] = Utf8(cs[i]);
    const bool specials_at_end = sp.endoftext > 256 + kNumMerges;
    int64_t next_id = specials_at_end ? 256 + kNumMerges : sp.im_end + 1;
    const int64_t end_id = specials_at_end ? sp.endoftext : config.vocab_size;
    for (const auto& [a, b] : LearnMerges(byte_char, vocab, end_id - next_id)) {
      merges.push_back(a + " " + b);
      vocab[a + b] = next_id++;
    }
  }
  json added = json::array();
  json added_decoder = json::object();
  const std::pair<const char*, int64_t> specials[] = {
      {"<|endoftext|>", sp.endoftext}, {"<|im_start|>", sp.im_start}, {"<|im_end|>", sp.im_end}};
  for (const auto& [content, id] : specials) {
    json tok = {{"id", id},        {"content", content},  {"single_word", false}, {"lstrip", false},
                {"rstrip", false}, {"normalized", false}, {"special", true}};
    added.push_back(tok);
    json dec = tok;
    dec.erase("id");
    added_decoder[std::to_string(id)] = dec;
  }
  const json byte_level = {
      {"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", false}, {"use_regex", false}};
  json tokenizer = {{"version", "1.0"},
                    {"truncation", nullptr},
                    {"padding", nullptr},
                    {"added_tokens", added},
                    {"normalizer", {{"type", "NFC"}}},
                    {"pre_tokenizer",
                     {{"type", "Sequence"},
                      {"pretokenizers",
                       {{{"type", "Split"},
                         {"pattern",
                          {{"Regex",
                            "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+"
                            "[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"}}},
                         {"behavior", "Isolated"},
                         {"invert", false}},
                        byte_level}}}},
                    {"post_processor", byte_level},
                    {"decoder", byte_level},
                    {"model",
                     {{"type", "BPE"},
                      {"dropout", nullptr},
                      {"unk_token", nullptr},
                      {"continuing_subword_prefix", ""},
                      {"end_of_word_suffix", ""},
                      {"fuse_unk", false},
                      {"byte_fallback", false},
                      {"ignore_merges", false},
                      {"vocab", vocab},
                      {"merges", merges}}}};
  json tconfig = {{"add_bos_token", false},
                  {"add_prefix_space", false},
                  {"added_tokens_decoder", added_decoder},
                  {"additional_special_tokens", {"<|im_start|>", "<|im_end|>"}},
                  {"bos_token", nullptr},
                  {"chat_template", kChatTemplate},
                  {"clean_up_tokenization_spaces", false},
                  {"eos_token", "<|im_end|>"},
                  {"errors", "replace"},
                  {"model_max_length", config.max_position_embeddings},
                  {"pad_token", "<|endoftext|>"},
                  {"split_special_tokens", false},
                  {"tokenizer_class", "Qwen2Tokenizer"},
                  {"unk_token", nullptr}};
  KVF_RETURN_IF_ERROR(WriteText(dir + "/tokenizer.json", tokenizer.dump(1) + "\n"));
  return WriteText(dir + "/tokenizer_config.json", tconfig.dump(2) + "\n");
}

Status MakeTinyModel(const std::string& dir, const MakeTinyOptions& o) {
  ModelConfig c;
  c.arch = o.arch;
  c.hidden_size = o.hidden_size;
  c.num_layers = o.num_layers;
  c.num_heads = o.num_heads;
  c.num_kv_heads = o.num_kv_heads;
  c.intermediate_size = o.intermediate_size;
  c.vocab_size = o.vocab_size;
  c.max_position_embeddings = o.max_position_embeddings;
  c.rms_norm_eps = 1e-6;
  c.rope_theta = o.rope_theta > 0 ? o.rope_theta : (o.arch == Architecture::kLlama ? 5e5 : 1e6);
  c.tie_word_embeddings = o.tie_word_embeddings >= 0 ? o.tie_word_embeddings != 0 : o.arch == Architecture::kQwen2;
  c.head_dim = o.head_dim;
  if (o.like == "qwen2.5-0.5b") {
    c.arch = Architecture::kQwen2;
    c.hidden_size = 896;
    c.num_layers = 24;
    c.num_heads = 14;
    c.num_kv_heads = 2;
    c.head_dim = 64;
    c.intermediate_size = 4864;
    c.vocab_size = 151936;
    c.max_position_embeddings = 32768;
    c.rope_theta = 1e6;
    c.tie_word_embeddings = true;
  } else if (!o.like.empty()) {
    return InvalidArgumentError("unknown --like '" + o.like + "' (known: qwen2.5-0.5b)");
  }
  if (c.hidden_size <= 0 || c.num_layers <= 0 || c.num_heads <= 0 || c.num_kv_heads <= 0 || c.intermediate_size <= 0 ||
      c.vocab_size <= 0 || c.max_position_embeddings <= 0)
    return InvalidArgumentError("model sizes must be positive");
  if (c.num_heads % c.num_kv_heads != 0) return InvalidArgumentError("heads must be a multiple of kv heads");
  if (c.head_dim == 0) {
    if (c.hidden_size % c.num_heads != 0)
      return InvalidArgumentError("hidden size must be a multiple of heads (or give head_dim)");
    c.head_dim = c.hidden_size / c.num_heads;
  }
  if (c.head_dim % 2 != 0) return InvalidArgumentError("head_dim must be even");
  if (c.arch == Architecture::kQwen2 && c.head_dim * c.num_heads != c.hidden_size)
    return InvalidArgumentError("Qwen2 needs head_dim * heads == hidden size");
  c.qkv_bias = c.arch == Architecture::kQwen2;
  c.qk_norm = c.arch == Architecture::kQwen3;
  c.torch_dtype = o.dtype;
  std::string rs = o.rope_scaling;
  if (rs.empty()) rs = c.arch == Architecture::kLlama && o.like.empty() ? "llama3" : "none";
  if (rs == "linear") {
    c.rope_scaling.type = RopeScaling::Type::kLinear;
    c.rope_scaling.factor = 2.0;
  } else if (rs == "llama3") {
    c.rope_scaling.type = RopeScaling::Type::kLlama3;
    c.rope_scaling.factor = 8.0;
    c.rope_scaling.low_freq_factor = 1.0;
    c.rope_scaling.high_freq_factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = 8192;
  } else if (rs == "yarn") {
    c.rope_scaling.type = RopeScaling::Type::kYarn;
    c.rope_scaling.factor = 4.0;
    c.rope_scaling.original_max_position_embeddings = std::max<int64_t>(1, c.max_position_embeddings / 4);
  } else if (rs != "none") {
    return InvalidArgumentError("unknown rope scaling '" + rs + "' (none, linear, llama3, yarn)");
  }
  const SpecialTokenIds sp = PlaceholderSpecialTokens(c.vocab_size);
  c.bos_token_id = sp.endoftext;
  c.eos_token_ids = {sp.im_end};

  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return UnknownError("cannot create " + dir + ": " + ec.message());

  // config.json
  static const char* kModelType[] = {"qwen2", "llama", "qwen3"};
  json cj = {{"architectures", {ArchitectureName(c.arch)}},
             {"model_type", kModelType[static_cast<int>(c.arch)]},
             {"hidden_act", "silu"},
             {"hidden_size", c.hidden_size},
             {"intermediate_size", c.intermediate_size},
             {"num_hidden_layers", c.num_layers},
             {"num_attention_heads", c.num_heads},
             {"num_key_value_heads", c.num_kv_heads},
             {"max_position_embeddings", c.max_position_embeddings},
             {"rms_norm_eps", c.rms_norm_eps},
             {"rope_theta", c.rope_theta},
             {"rope_scaling", RopeScalingJson(c.rope_scaling)},
             {"tie_word_embeddings", c.tie_word_embeddings},
             {"torch_dtype", o.dtype == DType::kF32   ? "float32"
                             : o.dtype == DType::kF16 ? "float16"
                                                      : "bfloat16"},
             {"vocab_size", c.vocab_size},
             {"bos_token_id", c.bos_token_id},
             {"eos_token_id", sp.im_end},
             {"attention_dropout", 0.0},
             {"initializer_range", 0.02},
             {"use_cache", true},
             {"transformers_version", "4.45.0"}};
  if (c.arch == Architecture::kQwen2) {
    cj["use_sliding_window"] = false;
    cj["sliding_window"] = c.max_position_embeddings;
    cj["max_window_layers"] = c.num_layers;
  } else {
    cj["head_dim"] = c.head_dim;
    cj["attention_bias"] = false;
    if (c.arch == Architecture::kLlama) cj["mlp_bias"] = false;
  }
  KVF_RETURN_IF_ERROR(WriteText(dir + "/config.json", cj.dump(2) + "\n"));
  json gen = {{"bos_token_id", sp.endoftext},
              {"eos_token_id", {sp.im_end, sp.endoftext}},
              {"pad_token_id", sp.endoftext},
              {"do_sample", false},
              {"transformers_version", "4.45.0"}};
  KVF_RETURN_IF_ERROR(WriteText(dir + "/generation_config.json", gen.dump(2) + "\n"));

  // Weights. Residual branches (o_proj, down_proj) get gain 2 so that the hidden state moves
  // away from the input embedding: with tied embeddings the last token would otherwise be
  // the top logit every time.
  const int64_t H = c.hidden_size, hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd,
                I = c.intermediate_size;
  std::vector<TensorSpec> specs;
  // Tied embeddings get a small std: the residual branches then dominate the final hidden
  // state, which otherwise stays close to the input embedding, whose own logit would win.
  const float embed_std = c.tie_word_embeddings ? 0.3f : 1.0f;
  specs.push_back({"model.embed_tokens.weight", {c.vocab_size, H}, 0.0f, std::sqrt(3.0f) * embed_std});
  const float out_scale = 2.0f / std::sqrt(static_cast<float>(H));  // logit std ~2
  // The final norm's gain scales every logit (and their top-1 - top-2 margins) by logit_scale.
  const float ls = static_cast<float>(o.logit_scale);
  if (c.tie_word_embeddings) {
    specs.push_back(Vec("model.norm.weight", H, ls * out_scale / embed_std, ls * 0.5f * out_scale / embed_std));
  } else {
    specs.push_back(Vec("model.norm.weight", H, ls, ls * 0.5f));
    specs.push_back({"lm_head.weight", {c.vocab_size, H}, 0.0f, std::sqrt(3.0f) * out_scale});
  }
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    specs.push_back(Weight(p + "self_attn.q_proj.weight", qd, H));
    specs.push_back(Weight(p + "self_attn.k_proj.weight", kvd, H));
    specs.push_back(Weight(p + "self_attn.v_proj.weight", kvd, H));
    specs.push_back(Weight(p + "self_attn.o_proj.weight", H, qd, 2.0f));
    specs.push_back(Weight(p + "mlp.gate_proj.weight", I, H));
    specs.push_back(Weight(p + "mlp.up_proj.weight", I, H));
    specs.push_back(Weight(p + "mlp.down_proj.weight", H, I, 2.0f));
    specs.push_back(Vec(p + "input_layernorm.weight", H, 1.0f, 0.5f));
    specs.push_back(Vec(p + "post_attention_layernorm.weight", H, 1.0f, 0.5f));
    if (c.qkv_bias) {
      specs.push_back(Vec(p + "self_attn.q_proj.bias", qd, 0.0f, 0.8f));
      specs.push_back(Vec(p + "self_attn.k_proj.bias", kvd, 0.0f, 0.8f));
      // A large v bias would add the same vector to every position's residual stream.
      specs.push_back(Vec(p + "self_attn.v_proj.bias", kvd, 0.0f, 0.1f));
    }
    if (c.qk_norm) {
      specs.push_back(Vec(p + "self_attn.q_norm.weight", hd, 1.0f, 0.5f));
      specs.push_back(Vec(p + "self_attn.k_norm.weight", hd, 1.0f, 0.5f));
    }
  }
  KVF_RETURN_IF_ERROR(WriteSafetensors(dir + "/model.safetensors", std::move(specs), o.dtype, o.seed, o.show_progress));
  if (o.tokenizer_writer) return o.tokenizer_writer(dir, c);
  return WritePlaceholderTokenizer(dir, c);
}

}  // namespace kvferry::model
