#include "kvferry/model/gguf_model.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <map>

#include "kvferry/model/gguf_names.h"
#include "kvferry/model/progress.h"
#include "kvferry/model/weights.h"

namespace kvferry::model {
namespace {

const std::map<std::string, std::string>& LayerNames() {
  static const auto* names = new std::map<std::string, std::string>{
      {"input_layernorm.weight", "attn_norm.weight"},
      {"post_attention_layernorm.weight", "ffn_norm.weight"},
      {"self_attn.q_proj.weight", "attn_q.weight"},
      {"self_attn.k_proj.weight", "attn_k.weight"},
      {"self_attn.v_proj.weight", "attn_v.weight"},
      {"self_attn.o_proj.weight", "attn_output.weight"},
      {"self_attn.q_proj.bias", "attn_q.bias"},
      {"self_attn.k_proj.bias", "attn_k.bias"},
      {"self_attn.v_proj.bias", "attn_v.bias"},
      {"self_attn.o_proj.bias", "attn_output.bias"},
      {"self_attn.q_norm.weight", "attn_q_norm.weight"},
      {"self_attn.k_norm.weight", "attn_k_norm.weight"},
      {"mlp.gate_proj.weight", "ffn_gate.weight"},
      {"mlp.up_proj.weight", "ffn_up.weight"},
      {"mlp.down_proj.weight", "ffn_down.weight"},
  };
  return *names;
}

}  // namespace

bool IsGgufFile(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode)) return false;
  std::FILE* f = std::fopen(path.c_str(), "rb");
  if (f == nullptr) return false;
  char magic[4] = {};
  const bool ok = std::fread(magic, 1, 4, f) == 4 && std::memcmp(magic, "GGUF", 4) == 0;
  std::fclose(f);
  return ok;
}

std::string GgufTensorName(std::string_view hf) {
  if (hf == "model.embed_tokens.weight") return "token_embd.weight";
  if (hf == "model.norm.weight") return "output_norm.weight";
  if (hf == "lm_head.weight") return "output.weight";
  constexpr std::string_view kLayers = "model.layers.";
  if (hf.substr(0, kLayers.size()) != kLayers) return "";
  const std::string_view rest = hf.substr(kLayers.size());
  const size_t dot = rest.find('.');
  if (dot == std::string_view::npos) return "";
  auto it = LayerNames().find(std::string(rest.substr(dot + 1)));
  if (it == LayerNames().end()) return "";
  return "blk." + std::string(rest.substr(0, dot)) + "." + it->second;
}

StatusOr<ModelConfig> ModelConfigFromGguf(const GgufFile& f, std::string_view bytes) {
  ModelConfig c;
  KVF_ASSIGN_OR_RETURN(std::string_view arch, f.GetString(gguf_keys::kArchitecture));
  if (arch == "qwen2") {
    c.arch = Architecture::kQwen2;
  } else if (arch == "llama") {
    c.arch = Architecture::kLlama;
  } else if (arch == "qwen3") {
    c.arch = Architecture::kQwen3;
  } else {
    return UnimplementedError("GGUF architecture '" + std::string(arch) +
                              "' is not supported (qwen2, llama, qwen3 are)");
  }
  const std::string a(arch);
  auto key = [&](const char* suffix) { return a + suffix; };
  constexpr int64_t kMax = int64_t{1} << 24;
  KVF_ASSIGN_OR_RETURN(c.hidden_size, f.GetInt(key(gguf_keys::kEmbeddingLength), 1, kMax));
  KVF_ASSIGN_OR_RETURN(c.num_layers, f.GetInt(key(gguf_keys::kBlockCount), 1, 4096));
  KVF_ASSIGN_OR_RETURN(c.num_heads, f.GetInt(key(gguf_keys::kHeadCount), 1, 4096));
  c.num_kv_heads = c.num_heads;
  if (f.Find(key(gguf_keys::kHeadCountKv))) {
    KVF_ASSIGN_OR_RETURN(c.num_kv_heads, f.GetInt(key(gguf_keys::kHeadCountKv), 1, c.num_heads));
  }
  if (c.num_heads % c.num_kv_heads != 0)
    return InvalidArgumentError("GGUF: head_count " + std::to_string(c.num_heads) +
                                " is not a multiple of head_count_kv " + std::to_string(c.num_kv_heads));
  c.head_dim = c.hidden_size / c.num_heads;
  if (f.Find(key(gguf_keys::kKeyLength))) {
    KVF_ASSIGN_OR_RETURN(c.head_dim, f.GetInt(key(gguf_keys::kKeyLength), 2, 4096));
  }
  if (f.Find(key(gguf_keys::kValueLength))) {
    KVF_ASSIGN_OR_RETURN(int64_t vl, f.GetInt(key(gguf_keys::kValueLength), 1, 4096));
    if (vl != c.head_dim)
      return UnimplementedError("GGUF: value_length " + std::to_string(vl) + " differs from key_length " +
                                std::to_string(c.head_dim));
  }
  if (c.head_dim % 2 != 0) return InvalidArgumentError("GGUF: odd head dimension " + std::to_string(c.head_dim));
  if (f.Find(key(gguf_keys::kRopeDimensionCount))) {
    KVF_ASSIGN_OR_RETURN(int64_t rd, f.GetInt(key(gguf_keys::kRopeDimensionCount), 1, 4096));
    if (rd != c.head_dim)
      return UnimplementedError("GGUF: partial RoPE (rope.dimension_count " + std::to_string(rd) +
                                " of head dimension " + std::to_string(c.head_dim) + ") is not supported");
  }
  KVF_ASSIGN_OR_RETURN(c.intermediate_size, f.GetInt(key(gguf_keys::kFeedForwardLength), 1, kMax));
  KVF_ASSIGN_OR_RETURN(c.max_position_embeddings, f.GetInt(key(gguf_keys::kContextLength), 1, int64_t{1} << 30));
  KVF_ASSIGN_OR_RETURN(c.rms_norm_eps, f.GetFloat(key(gguf_keys::kRmsEps)));
  c.rope_theta = 10000.0;
  if (f.Find(key(gguf_keys::kRopeFreqBase))) {
    KVF_ASSIGN_OR_RETURN(c.rope_theta, f.GetFloat(key(gguf_keys::kRopeFreqBase)));
  }
  if (f.Find(key(gguf_keys::kRopeScalingType))) {
    KVF_ASSIGN_OR_RETURN(std::string_view type, f.GetString(key(gguf_keys::kRopeScalingType)));
    if (type == "linear") {
      c.rope_scaling.type = RopeScaling::Type::kLinear;
      KVF_ASSIGN_OR_RETURN(c.rope_scaling.factor, f.GetFloat(key(gguf_keys::kRopeScalingFactor)));
      if (!(c.rope_scaling.factor > 0)) return InvalidArgumentError("GGUF: rope.scaling.factor must be positive");
    } else if (type != "none") {
      return UnimplementedError("GGUF: rope.scaling.type '" + std::string(type) + "' is not supported");
    }
  }

  const GgufTensor* embd = f.FindTensor("token_embd.weight");
  if (embd == nullptr) return InvalidArgumentError("GGUF: missing tensor 'token_embd.weight'");
  if (embd->ne.size() != 2 || embd->ne[0] != c.hidden_size)
    return InvalidArgumentError("GGUF: token_embd.weight is not [vocab, " + std::to_string(c.hidden_size) + "]");
  c.vocab_size = embd->ne[1];
  c.tie_word_embeddings = f.FindTensor("output.weight") == nullptr;
  c.qkv_bias = f.FindTensor("blk.0.attn_q.bias") != nullptr;
  c.o_bias = f.FindTensor("blk.0.attn_output.bias") != nullptr;
  c.qk_norm = f.FindTensor("blk.0.attn_q_norm.weight") != nullptr;
  if (c.arch == Architecture::kQwen2 && !c.qkv_bias)
    return InvalidArgumentError("GGUF: qwen2 file without blk.0.attn_q.bias");
  if (const GgufTensor* rf = f.FindTensor("rope_freqs.weight")) {
    if (rf->type != static_cast<uint32_t>(GgmlType::kF32) || rf->numel() != c.head_dim / 2)
      return InvalidArgumentError("GGUF: rope_freqs.weight is not " + std::to_string(c.head_dim / 2) + " F32 values");
    c.rope_freq_factors.resize(c.head_dim / 2);
    std::memcpy(c.rope_freq_factors.data(), bytes.data() + rf->offset, rf->bytes);
    for (float x : c.rope_freq_factors)
      if (!(x > 0)) return InvalidArgumentError("GGUF: rope_freqs.weight has a factor that is not positive");
  }
  if (f.Find(gguf_keys::kBosId)) {
    KVF_ASSIGN_OR_RETURN(c.bos_token_id, f.GetInt(gguf_keys::kBosId, 0, c.vocab_size - 1));
  }
  if (f.Find(gguf_keys::kEosId)) {
    KVF_ASSIGN_OR_RETURN(int64_t eos, f.GetInt(gguf_keys::kEosId, 0, c.vocab_size - 1));
    c.eos_token_ids.push_back(eos);
  }
  if (f.Find("tokenizer.ggml.eot_token_id")) {
    KVF_ASSIGN_OR_RETURN(int64_t eot, f.GetInt("tokenizer.ggml.eot_token_id", 0, c.vocab_size - 1));
    if (c.eos_token_ids.empty() || c.eos_token_ids[0] != eot) c.eos_token_ids.push_back(eot);
  }
  c.torch_dtype = embd->type == static_cast<uint32_t>(GgmlType::kF32)   ? DType::kF32
                  : embd->type == static_cast<uint32_t>(GgmlType::kF16) ? DType::kF16
                                                                        : DType::kBF16;
  return c;
}

StatusOr<ModelConfig> ReadGgufConfig(const std::string& path) {
  KVF_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path));
  const std::string_view bytes(file->data(), file->size());
  auto parsed = ParseGguf(bytes);
  if (!parsed.ok()) return parsed.status().WithContext(path);
  auto config = ModelConfigFromGguf(*parsed, bytes);
  if (!config.ok()) return config.status().WithContext(path);
  return config;
}

StatusOr<std::unique_ptr<WeightFiles>> WeightFiles::OpenGguf(const std::string& path, const ModelConfig& c,
                                                             bool in_memory, bool show_progress) {
  auto w = std::unique_ptr<WeightFiles>(new WeightFiles());
  struct stat st;
  if (::stat(path.c_str(), &st) != 0) return ErrnoToStatus(errno, "stat " + path);
  Progress progress("loading " + path, static_cast<uint64_t>(st.st_size), show_progress && in_memory);
  FileLoadOptions fo;
  fo.in_memory = in_memory;
  fo.on_progress = [&](uint64_t done) { progress.Update(done); };
  KVF_ASSIGN_OR_RETURN(auto file, MappedFile::Open(path, fo));
  auto parsed = ParseGguf(std::string_view(file->data(), file->size()));
  if (!parsed.ok()) return parsed.status().WithContext(path);
  const GgufFile& g = *parsed;
  std::string base = path.substr(path.find_last_of('/') + 1);
  const bool permute = c.arch == Architecture::kLlama;
  // Every HF name the model may ask for, mapped to its GGUF tensor.
  std::vector<std::string> hf_names = {"model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"};
  for (int64_t l = 0; l < c.num_layers; ++l)
    for (const auto& [hf, gg] : LayerNames()) hf_names.push_back("model.layers." + std::to_string(l) + "." + hf);
  for (const std::string& hf : hf_names) {
    const GgufTensor* t = g.FindTensor(GgufTensorName(hf));
    if (t == nullptr) continue;
    TensorInfo info;
    info.name = std::string(t->name);
    info.dtype_name = GgmlTypeName(t->type);
    info.shape = t->shape();
    info.begin = t->offset;
    info.end = t->offset + t->bytes;
    const char* owned = nullptr;
    switch (static_cast<GgmlType>(t->type)) {
      case GgmlType::kF32: info.float_dtype = true, info.dtype = DType::kF32; break;
      case GgmlType::kF16: info.float_dtype = true, info.dtype = DType::kF16; break;
      case GgmlType::kBF16: info.float_dtype = true, info.dtype = DType::kBF16; break;
      // Quantized types only for matrices (Get then hands them to MatMul, which takes them).
      case GgmlType::kQ8_0: info.float_dtype = t->ne.size() == 2, info.dtype = DType::kQ8_0; break;
      case GgmlType::kQ4_0: info.float_dtype = t->ne.size() == 2, info.dtype = DType::kQ4_0; break;
      case GgmlType::kQ4_K: info.float_dtype = t->ne.size() == 2, info.dtype = DType::kQ4_K; break;
      case GgmlType::kQ6_K: info.float_dtype = t->ne.size() == 2, info.dtype = DType::kQ6_K; break;
      case GgmlType::kQ5_0: info.float_dtype = t->ne.size() == 2, info.dtype = DType::kQ5_0; break;
      default: break;  // Get names the tensor and its type
    }
    const bool is_q = hf.find("q_proj.") != std::string::npos, is_k = hf.find("k_proj.") != std::string::npos;
    if (permute && (is_q || is_k) && info.float_dtype) {
      // llama.cpp stores rotate_half pairs (i, i + d/2) of each head as adjacent rows (2i, 2i+1).
      const int64_t rows = info.shape[0], row_bytes = static_cast<int64_t>(t->bytes) / rows, hd = c.head_dim;
      w->owned_.emplace_back(new char[t->bytes + 64]);
      char* dst = w->owned_.back().get();
      dst += (64 - reinterpret_cast<uintptr_t>(dst) % 64) % 64;
      const char* src = file->data() + t->offset;
      for (int64_t h = 0; h < rows / hd; ++h)
        for (int64_t i = 0; i < hd / 2; ++i)
          for (int64_t half = 0; half < 2; ++half)
            std::memcpy(dst + (h * hd + half * (hd / 2) + i) * row_bytes, src + (h * hd + 2 * i + half) * row_bytes,
                        row_bytes);
      owned = dst;
    }
    w->index_[hf] = Entry{0, std::move(info), owned};
  }
  w->files_.push_back(std::move(file));
  w->file_names_.push_back(base);
  return w;
}

}  // namespace kvferry::model
