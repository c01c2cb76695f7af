// Loading tokenizer.json (simdjson: the Qwen file is 11 MB), tokenizer_config.json and
// generation_config.json into a TokenizerImpl. Anything not understood is an error.
#include <simdjson.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "kvferry/tokenizer/gguf_tokenizer.h"
#include "kvferry/tokenizer/tokenizer_impl.h"

namespace kvferry::tokenizer {

using simdjson::dom::array;
using simdjson::dom::element;
using simdjson::dom::element_type;
using simdjson::dom::object;

StatusOr<std::string> ReadFileToString(const std::string& path) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return NotFoundError("cannot open " + path);
  std::string data;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof(buf), f)) > 0) data.append(buf, n);
  bool failed = std::ferror(f) != 0;
  std::fclose(f);
  if (failed) return DataLossError("error reading " + path);
  return data;
}

namespace {

Status JsonError(std::string_view what) { return InvalidArgumentError("tokenizer.json: " + std::string(what)); }

bool IsNull(element e) { return e.type() == element_type::NULL_VALUE; }

// Optional members: absent or null give the default.
bool GetBool(object o, std::string_view key, bool def) {
  bool v;
  return o[key].get_bool().get(v) == simdjson::SUCCESS ? v : def;
}
std::string_view GetString(object o, std::string_view key) {
  std::string_view v;
  return o[key].get_string().get(v) == simdjson::SUCCESS ? v : std::string_view();
}

StatusOr<NormalForm> ParseNormalForm(std::string_view type) {
  if (type == "NFC") return NormalForm::kNfc;
  if (type == "NFD") return NormalForm::kNfd;
  if (type == "NFKC") return NormalForm::kNfkc;
  if (type == "NFKD") return NormalForm::kNfkd;
  return UnimplementedError("tokenizer.json: normalizer type '" + std::string(type) + "' is not supported");
}

constexpr std::string_view kGpt2Pattern =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";

}  // namespace

class TokenizerLoader {
 public:
  explicit TokenizerLoader(TokenizerImpl* t) : t_(t) {}

  Status Load(std::string_view json) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded(json);
    element root;
    if (parser.parse(padded).get(root) != simdjson::SUCCESS) return JsonError("not valid JSON");
    object top;
    if (root.get_object().get(top) != simdjson::SUCCESS) return JsonError("top level is not an object");

    element model;
    if (top["model"].get(model) != simdjson::SUCCESS) return JsonError("no 'model'");
    KVF_RETURN_IF_ERROR(LoadModel(model));
    element added;
    if (top["added_tokens"].get(added) == simdjson::SUCCESS && !IsNull(added)) {
      KVF_RETURN_IF_ERROR(LoadAddedTokens(added));
    }
    KVF_RETURN_IF_ERROR(BuildTables());
    element e;
    if (top["normalizer"].get(e) == simdjson::SUCCESS && !IsNull(e)) KVF_RETURN_IF_ERROR(LoadNormalizer(e));
    bool byte_level = false;
    if (top["pre_tokenizer"].get(e) == simdjson::SUCCESS && !IsNull(e)) {
      KVF_RETURN_IF_ERROR(LoadPreTokenizer(e, &byte_level));
    }
    bool byte_level_decoder = false;
    if (top["decoder"].get(e) == simdjson::SUCCESS && !IsNull(e)) {
      KVF_RETURN_IF_ERROR(LoadDecoder(e, &byte_level_decoder));
    }
    if (!byte_level || !byte_level_decoder) {
      return UnimplementedError("tokenizer.json: only byte-level BPE is supported (ByteLevel pre-tokenizer and decoder)");
    }
    if (top["post_processor"].get(e) == simdjson::SUCCESS && !IsNull(e)) KVF_RETURN_IF_ERROR(LoadPostProcessor(e));
    if (top["truncation"].get(e) == simdjson::SUCCESS && !IsNull(e)) {
      return UnimplementedError("tokenizer.json: truncation is not supported");
    }
    return Status::Ok();
  }

  Status LoadConfig(std::string_view json) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded(json);
    element root;
    object top;
    if (parser.parse(padded).get(root) != simdjson::SUCCESS || root.get_object().get(top) != simdjson::SUCCESS) {
      return InvalidArgumentError("tokenizer_config.json: not a JSON object");
    }
    auto token_text = [&](std::string_view key) -> std::string {
      element e;
      if (top[key].get(e) != simdjson::SUCCESS) return "";
      std::string_view s;
      if (e.get_string().get(s) == simdjson::SUCCESS) return std::string(s);
      object o;
      if (e.get_object().get(o) == simdjson::SUCCESS) return std::string(GetString(o, "content"));
      return "";
    };
    t_->bos_token_ = token_text("bos_token");
    t_->eos_token_ = token_text("eos_token");
    std::string pad = token_text("pad_token");
    auto id_of = [&](const std::string& s) -> std::optional<int32_t> {
      if (s.empty()) return std::nullopt;
      int32_t id = t_->vocab_.Find(s);
      return id >= 0 ? std::optional<int32_t>(id) : std::nullopt;
    };
    t_->bos_id_ = id_of(t_->bos_token_);
    t_->eos_id_ = id_of(t_->eos_token_);
    t_->pad_id_ = id_of(pad);
    return Status::Ok();
  }

  Status LoadGenerationConfig(std::string_view json) {
    simdjson::dom::parser parser;
    simdjson::padded_string padded(json);
    element root;
    object top;
    if (parser.parse(padded).get(root) != simdjson::SUCCESS || root.get_object().get(top) != simdjson::SUCCESS) {
      return InvalidArgumentError("generation_config.json: not a JSON object");
    }
    element e;
    if (top["eos_token_id"].get(e) != simdjson::SUCCESS) return Status::Ok();
    int64_t id;
    array a;
    if (e.get_int64().get(id) == simdjson::SUCCESS) {
      if (id >= 0 && id < t_->vocab_size()) t_->stop_ids_.push_back(int32_t(id));
    } else if (e.get_array().get(a) == simdjson::SUCCESS) {
      for (element v : a)
        if (v.get_int64().get(id) == simdjson::SUCCESS && id >= 0 && id < t_->vocab_size())
          t_->stop_ids_.push_back(int32_t(id));
    }
    return Status::Ok();
  }

  void Finish() {
    auto& stop = t_->stop_ids_;
    if (stop.empty() && t_->eos_id_) stop.push_back(*t_->eos_id_);
    std::sort(stop.begin(), stop.end());
    stop.erase(std::unique(stop.begin(), stop.end()), stop.end());
  }

 private:
  Status LoadModel(element model) {
    object m;
    if (model.get_object().get(m) != simdjson::SUCCESS) return JsonError("'model' is not an object");
    std::string_view type = GetString(m, "type");
    if (!type.empty() && type != "BPE") {
      return UnimplementedError("tokenizer.json: model type '" + std::string(type) + "' is not supported (only BPE)");
    }
    double dropout;
    if (m["dropout"].get_double().get(dropout) == simdjson::SUCCESS && dropout > 0) {
      return UnimplementedError("tokenizer.json: BPE dropout is not supported");
    }
    if (!GetString(m, "continuing_subword_prefix").empty() || !GetString(m, "end_of_word_suffix").empty()) {
      return UnimplementedError("tokenizer.json: continuing_subword_prefix/end_of_word_suffix are not supported");
    }
    t_->fuse_unk_ = GetBool(m, "fuse_unk", false);
    t_->byte_fallback_ = GetBool(m, "byte_fallback", false);
    t_->ignore_merges_ = GetBool(m, "ignore_merges", false);
    unk_token_ = GetString(m, "unk_token");

    object vocab;
    if (m["vocab"].get_object().get(vocab) != simdjson::SUCCESS) return JsonError("'model.vocab' is not an object");
    size_t total = 0, count = 0;
    int64_t max_id = -1;
    for (auto field : vocab) {
      int64_t id;
      if (field.value.get_int64().get(id) != simdjson::SUCCESS || id < 0 || id >= (1 << 24)) {
        return JsonError("vocab id is not an integer in [0, 2^24)");
      }
      total += field.key.size();
      ++count;
      max_id = std::max(max_id, id);
    }
    t_->token_arena_.reserve(total + 4096);
    vocab_entries_.reserve(count);
    for (auto field : vocab) {
      int64_t id = 0;
      if (field.value.get_int64().get(id) != simdjson::SUCCESS) return JsonError("bad vocab id");
      vocab_entries_.push_back({uint32_t(t_->token_arena_.size()), uint32_t(field.key.size()), int32_t(id)});
      t_->token_arena_.append(field.key);
    }
    max_id_ = max_id;

    array merges;
    if (m["merges"].get_array().get(merges) != simdjson::SUCCESS) return JsonError("'model.merges' is not an array");
    merges_ = merges;
    return Status::Ok();
  }

  Status LoadAddedTokens(element added) {
    array list;
    if (added.get_array().get(list) != simdjson::SUCCESS) return JsonError("'added_tokens' is not an array");
    for (element e : list) {
      object o;
      int64_t id;
      std::string_view content;
      if (e.get_object().get(o) != simdjson::SUCCESS || o["id"].get_int64().get(id) != simdjson::SUCCESS ||
          o["content"].get_string().get(content) != simdjson::SUCCESS || id < 0 || id >= (1 << 24)) {
        return JsonError("an added token lacks an integer id or a string content");
      }
      AddedToken token;
      token.content = std::string(content);
      token.id = int32_t(id);
      token.special = GetBool(o, "special", false);
      token.lstrip = GetBool(o, "lstrip", false);
      token.rstrip = GetBool(o, "rstrip", false);
      token.single_word = GetBool(o, "single_word", false);
      token.normalized = GetBool(o, "normalized", !token.special);
      max_id_ = std::max<int64_t>(max_id_, id);
      t_->added_.push_back(std::move(token));
    }
    return Status::Ok();
  }

  // Ids -> token strings, the vocab map, decoded bytes and the merge table.
  Status BuildTables() {
    const size_t n = size_t(max_id_ + 1);
    t_->token_spans_.assign(n, {});
    t_->special_.assign(n, false);
    for (const AddedToken& a : t_->added_) t_->token_arena_.append(a.content);  // reserved room may grow
    // Offsets first; string_views into the arena are taken only once it stops growing.
    size_t added_offset = t_->token_arena_.size();
    for (const AddedToken& a : t_->added_) added_offset -= a.content.size();
    for (const auto& v : vocab_entries_) {
      if (t_->token_spans_[v.id].present) return JsonError("duplicate vocab id " + std::to_string(v.id));
      t_->token_spans_[v.id] = {v.offset, v.size, true};
    }
    t_->vocab_.Reserve(vocab_entries_.size() + t_->added_.size());
    for (const auto& v : vocab_entries_) {
      if (!t_->vocab_.Insert(std::string_view(t_->token_arena_).substr(v.offset, v.size), v.id)) {
        return JsonError("duplicate vocab token");
      }
    }
    for (const AddedToken& a : t_->added_) {
      auto& span = t_->token_spans_[a.id];
      std::string_view view = std::string_view(t_->token_arena_).substr(added_offset, a.content.size());
      if (!span.present) {
        span = {uint32_t(added_offset), uint32_t(a.content.size()), true};
        t_->vocab_.Insert(view, a.id);
      } else if (std::string_view(t_->token_arena_).substr(span.offset, span.size) != view) {
        return JsonError("added token '" + a.content + "' reuses id " + std::to_string(a.id) + " of another token");
      }
      if (a.special) t_->special_[a.id] = true;
      added_offset += a.content.size();
    }

    // Decoded bytes: map every char through the byte-level alphabet; a token with a char outside
    // it decodes to its own UTF-8 (as HF's ByteLevel decoder does).
    t_->bytes_spans_.assign(n, {});
    t_->bytes_arena_.reserve(t_->token_arena_.size());
    std::string_view arena(t_->token_arena_);
    for (size_t id = 0; id < n; ++id) {
      const auto& span = t_->token_spans_[id];
      if (!span.present) continue;
      std::string_view tok = arena.substr(span.offset, span.size);
      size_t start = t_->bytes_arena_.size();
      bool mapped = IsValidUtf8(tok);
      if (mapped) {
        size_t pos = 0;
        while (pos < tok.size()) {
          int b = CodePointToByte(DecodeUtf8(tok, &pos));
          if (b < 0) {
            mapped = false;
            break;
          }
          t_->bytes_arena_.push_back(char(b));
        }
      }
      if (!mapped) {
        t_->bytes_arena_.resize(start);
        t_->bytes_arena_.append(tok);
      }
      t_->bytes_spans_[id] = {uint32_t(start), uint32_t(t_->bytes_arena_.size() - start), true};
    }

    std::string key;
    for (int b = 0; b < 256; ++b) {
      key.clear();
      AppendUtf8(ByteToCodePoint(uint8_t(b)), &key);
      t_->byte_ids_[b] = t_->vocab_.Find(key);
      char hex[8];
      std::snprintf(hex, sizeof(hex), "<0x%02X>", b);
      t_->byte_fallback_ids_[b] = t_->vocab_.Find(hex);
    }
    if (!unk_token_.empty()) {
      t_->unk_id_ = t_->vocab_.Find(unk_token_);
      if (t_->unk_id_ < 0) return JsonError("unk_token '" + std::string(unk_token_) + "' is not in the vocab");
    }

    // Merges, in batches: hash and prefetch every lookup of a batch before resolving any, so the
    // cache misses on the 150k-entry vocab table overlap.
    t_->merges_.Reserve(merges_.size());
    constexpr int kBatch = 16;
    struct Pending {
      std::string_view left, right;
      std::string merged;
      uint64_t hl, hr, hm;
    };
    std::array<Pending, kBatch> batch;
    int fill = 0;
    int32_t rank = 0;
    auto flush = [&]() -> Status {
      for (int i = 0; i < fill; ++i) {
        Pending& p = batch[i];
        int32_t l = t_->vocab_.Find(p.left, p.hl), r = t_->vocab_.Find(p.right, p.hr);
        int32_t m = t_->vocab_.Find(p.merged, p.hm);
        if (l < 0 || r < 0 || m < 0) {
          return JsonError("merge '" + std::string(p.left) + " " + std::string(p.right) + "' uses a token not in the vocab");
        }
        t_->merges_.Insert(l, r, rank++, m);
      }
      fill = 0;
      return Status::Ok();
    };
    for (element e : merges_) {
      Pending& p = batch[fill];
      std::string_view line;
      array pair;
      if (e.get_string().get(line) == simdjson::SUCCESS) {
        size_t space = line.find(' ');
        if (space == std::string_view::npos || line.find(' ', space + 1) != std::string_view::npos) {
          return JsonError("merge '" + std::string(line) + "' is not two tokens separated by one space");
        }
        p.left = line.substr(0, space);
        p.right = line.substr(space + 1);
      } else if (!(e.get_array().get(pair) == simdjson::SUCCESS && pair.size() == 2 &&
                   pair.at(0).get_string().get(p.left) == simdjson::SUCCESS &&
                   pair.at(1).get_string().get(p.right) == simdjson::SUCCESS)) {
        return JsonError("a merge is neither \"a b\" nor [\"a\", \"b\"]");
      }
      p.merged.assign(p.left);
      p.merged.append(p.right);
      p.hl = HashBytes(p.left);
      p.hr = HashBytes(p.right);
      p.hm = HashBytes(p.merged);
      t_->vocab_.Prefetch(p.hl);
      t_->vocab_.Prefetch(p.hr);
      t_->vocab_.Prefetch(p.hm);
      if (++fill == kBatch) KVF_RETURN_IF_ERROR(flush());
    }
    KVF_RETURN_IF_ERROR(flush());

    t_->raw_matcher_.Build(t_->added_, /*normalized=*/false);
    t_->normalized_matcher_.Build(t_->added_, /*normalized=*/true);
    return Status::Ok();
  }

  Status LoadNormalizer(element e) {
    object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return JsonError("normalizer is not an object");
    std::string_view type = GetString(o, "type");
    if (type == "Sequence") {
      array list;
      if (o["normalizers"].get_array().get(list) != simdjson::SUCCESS) return JsonError("Sequence without normalizers");
      for (element x : list) KVF_RETURN_IF_ERROR(LoadNormalizer(x));
      return Status::Ok();
    }
    KVF_ASSIGN_OR_RETURN(NormalForm form, ParseNormalForm(type));
    t_->normalizers_.push_back(form);
    return Status::Ok();
  }

  Status LoadPreTokenizer(element e, bool* byte_level) {
    object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return JsonError("pre_tokenizer is not an object");
    std::string_view type = GetString(o, "type");
    if (type == "Sequence") {
      array list;
      if (o["pretokenizers"].get_array().get(list) != simdjson::SUCCESS) return JsonError("Sequence without pretokenizers");
      for (element x : list) KVF_RETURN_IF_ERROR(LoadPreTokenizer(x, byte_level));
      return Status::Ok();
    }
    PreTokenizerStep step;
    if (type == "ByteLevel") {
      *byte_level = true;
      step.kind = PreTokenizerStep::Kind::kByteLevel;
      step.add_prefix_space = GetBool(o, "add_prefix_space", false);
      if (GetBool(o, "use_regex", true)) {
        KVF_ASSIGN_OR_RETURN(step.regex, Regex::Compile(kGpt2Pattern));
      }
    } else if (type == "Split") {
      step.kind = PreTokenizerStep::Kind::kSplit;
      if (GetBool(o, "invert", false)) return UnimplementedError("tokenizer.json: Split with invert is not supported");
      object pattern;
      if (o["pattern"].get_object().get(pattern) != simdjson::SUCCESS) return JsonError("Split without a pattern");
      std::string_view text;
      if (pattern["Regex"].get_string().get(text) == simdjson::SUCCESS) {
        KVF_ASSIGN_OR_RETURN(step.regex, Regex::Compile(text));
      } else if (pattern["String"].get_string().get(text) == simdjson::SUCCESS) {
        KVF_ASSIGN_OR_RETURN(step.regex, Regex::Literal(text));
      } else {
        return JsonError("Split pattern is neither Regex nor String");
      }
      std::string_view behavior = GetString(o, "behavior");
      using B = PreTokenizerStep::Behavior;
      if (behavior == "Isolated") {
        step.behavior = B::kIsolated;
      } else if (behavior == "Removed") {
        step.behavior = B::kRemoved;
      } else if (behavior == "MergedWithPrevious") {
        step.behavior = B::kMergedWithPrevious;
      } else if (behavior == "MergedWithNext") {
        step.behavior = B::kMergedWithNext;
      } else {
        return UnimplementedError("tokenizer.json: Split behavior '" + std::string(behavior) + "' is not supported");
      }
    } else {
      return UnimplementedError("tokenizer.json: pre_tokenizer type '" + std::string(type) + "' is not supported");
    }
    t_->pre_tokenizers_.push_back(std::move(step));
    return Status::Ok();
  }

  Status LoadDecoder(element e, bool* byte_level) {
    object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return JsonError("decoder is not an object");
    std::string_view type = GetString(o, "type");
    if (type == "ByteLevel") {
      *byte_level = true;
      return Status::Ok();
    }
    if (type == "Sequence") {
      array list;
      if (o["decoders"].get_array().get(list) != simdjson::SUCCESS) return JsonError("Sequence without decoders");
      for (element x : list) KVF_RETURN_IF_ERROR(LoadDecoder(x, byte_level));
      return Status::Ok();
    }
    return UnimplementedError("tokenizer.json: decoder type '" + std::string(type) + "' is not supported");
  }

  Status LoadPostProcessor(element e) {
    object o;
    if (e.get_object().get(o) != simdjson::SUCCESS) return JsonError("post_processor is not an object");
    std::string_view type = GetString(o, "type");
    if (type == "ByteLevel") return Status::Ok();  // offsets only
    if (type == "Sequence") {
      array list;
      if (o["processors"].get_array().get(list) != simdjson::SUCCESS) return JsonError("Sequence without processors");
      for (element x : list) KVF_RETURN_IF_ERROR(LoadPostProcessor(x));
      return Status::Ok();
    }
    if (type != "TemplateProcessing") {
      return UnimplementedError("tokenizer.json: post_processor type '" + std::string(type) + "' is not supported");
    }
    array single;
    if (o["single"].get_array().get(single) != simdjson::SUCCESS) return JsonError("TemplateProcessing without 'single'");
    object specials;
    if (o["special_tokens"].get_object().get(specials) != simdjson::SUCCESS) {
      return JsonError("TemplateProcessing without 'special_tokens'");
    }
    bool seen_sequence = false;
    for (element item : single) {
      object io, inner;
      if (item.get_object().get(io) != simdjson::SUCCESS) return JsonError("bad TemplateProcessing item");
      if (io["Sequence"].get_object().get(inner) == simdjson::SUCCESS) {
        if (seen_sequence) return JsonError("TemplateProcessing 'single' has two sequences");
        seen_sequence = true;
        continue;
      }
      if (io["SpecialToken"].get_object().get(inner) != simdjson::SUCCESS) return JsonError("bad TemplateProcessing item");
      std::string_view name = GetString(inner, "id");
      object spec;
      array ids;
      if (specials[name].get_object().get(spec) != simdjson::SUCCESS ||
          spec["ids"].get_array().get(ids) != simdjson::SUCCESS) {
        return JsonError("TemplateProcessing special token '" + std::string(name) + "' has no ids");
      }
      for (element id : ids) {
        int64_t v;
        if (id.get_int64().get(v) != simdjson::SUCCESS || v < 0 || v > max_id_) return JsonError("bad special token id");
        (seen_sequence ? t_->suffix_ids_ : t_->prefix_ids_).push_back(int32_t(v));
      }
    }
    return Status::Ok();
  }

  struct VocabEntry {
    uint32_t offset;
    uint32_t size;
    int32_t id;
  };
  TokenizerImpl* t_;
  std::vector<VocabEntry> vocab_entries_;
  int64_t max_id_ = -1;
  array merges_;
  std::string_view unk_token_;
};

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::FromJson(std::string_view tokenizer_json,
                                                         std::string_view tokenizer_config_json,
                                                         std::string_view generation_config_json) {
  auto t = std::make_unique<TokenizerImpl>();
  TokenizerLoader loader(t.get());
  KVF_RETURN_IF_ERROR(loader.Load(tokenizer_json));
  if (!tokenizer_config_json.empty()) KVF_RETURN_IF_ERROR(loader.LoadConfig(tokenizer_config_json));
  if (!generation_config_json.empty()) KVF_RETURN_IF_ERROR(loader.LoadGenerationConfig(generation_config_json));
  loader.Finish();
  return std::unique_ptr<Tokenizer>(std::move(t));
}

StatusOr<std::unique_ptr<Tokenizer>> Tokenizer::Load(std::string_view path_text) {
  if (IsGgufPath(path_text)) {  // a GGUF model file: its tokenizer.ggml.* metadata
    KVF_ASSIGN_OR_RETURN(GgufTokenizerFiles files, TokenizerFilesFromGguf(std::string(path_text)));
    auto t = FromJson(files.tokenizer_json, files.tokenizer_config_json, files.generation_config_json);
    if (!t.ok()) return t.status().WithContext(path_text);
    return t;
  }
  namespace fs = std::filesystem;
  fs::path path(path_text);
  std::error_code ec;
  fs::path dir = fs::is_directory(path, ec) ? path : path.parent_path();
  fs::path json_path = fs::is_directory(path, ec) ? path / "tokenizer.json" : path;
  KVF_ASSIGN_OR_RETURN(std::string json, ReadFileToString(json_path.string()));
  std::string config, generation;
  if (fs::exists(dir / "tokenizer_config.json", ec)) {
    KVF_ASSIGN_OR_RETURN(config, ReadFileToString((dir / "tokenizer_config.json").string()));
  }
  if (fs::exists(dir / "generation_config.json", ec)) {
    KVF_ASSIGN_OR_RETURN(generation, ReadFileToString((dir / "generation_config.json").string()));
  }
  auto result = FromJson(json, config, generation);
  if (!result.ok()) return result.status().WithContext(json_path.string());
  return result;
}

}  // namespace kvferry::tokenizer
