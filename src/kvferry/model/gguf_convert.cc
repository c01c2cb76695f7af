// ConvertToGguf: an HF model directory (config.json, safetensors, tokenizer.json,
// tokenizer_config.json) to one GGUF file with llama.cpp's names and conventions, written with
// kvferry's own GGUF writer and quantizers.

#include <cmath>
#include <fstream>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "kvferry/kernels/quant.h"
#include "kvferry/model/gguf.h"
#include "kvferry/model/gguf_names.h"
#include "kvferry/model/gguf_writer.h"
#include "kvferry/model/model.h"
#include "kvferry/model/weights.h"

namespace kvferry::model {
namespace {

using kernels::QuantType;
using nlohmann::json;

StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

StatusOr<json> ReadJson(const std::string& path) {
  KVF_ASSIGN_OR_RETURN(std::string text, ReadText(path));
  json j = json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) return InvalidArgumentError(path + ": not a JSON object");
  return j;
}

// One tensor to write: its HF source, GGUF name, row-major shape and target type.
struct Plan {
  std::string hf_name, gguf_name;
  std::vector<int64_t> shape;  // row-major, as in HF
  uint32_t type = 0;           // GgmlType number
  int64_t permute_heads = 0;   // > 0: apply llama.cpp's Q/K row permutation with this many heads
  std::vector<float> values;   // for generated tensors (rope_freqs)
};

// The type of a 2-D tensor for a file type, following llama-quantize's choices for the types
// kvferry has: the output projection (the embedding when tied) and, for Q4_K_M, attn_v and
// ffn_down of the "more bits" layers get Q6_K; K-quants need rows that are multiples of 256
// and fall back as llama-quantize's do: Q4_K to Q5_0, Q6_K to Q8_0.
uint32_t MatrixType(GgufFileType ft, const std::string& name, int64_t row_len, bool is_output, int layer,
                    int n_layers) {
  switch (ft) {
    case GgufFileType::kF32: return 0;
    case GgufFileType::kF16: return 1;
    case GgufFileType::kBF16: return 30;
    case GgufFileType::kQ8_0: return 8;
    case GgufFileType::kQ4_0:
      if (is_output) return row_len % 256 == 0 ? 14 : 8;
      return 2;
    case GgufFileType::kQ4_K_M: {
      const bool k_ok = row_len % 256 == 0;
      bool more = is_output;
      if (layer >= 0 && (name.find(".attn_v.") != std::string::npos || name.find(".ffn_down.") != std::string::npos))
        more = layer < n_layers / 8 || layer >= 7 * n_layers / 8 || (layer - n_layers / 8) % 3 == 2;
      if (!k_ok) return more ? 8 : 6;
      return more ? 14 : 12;
    }
  }
  return 0;
}

// llama.cpp's row order for Q and K of llama models: within each head, HF's rotate_half pairs
// (i, i + d/2) become adjacent rows (2i, 2i + 1).
void PermuteRows(std::vector<float>* v, int64_t n_heads, int64_t row_len) {
  const int64_t rows = static_cast<int64_t>(v->size()) / row_len, hd = rows / n_heads;
  std::vector<float> out(v->size());
  for (int64_t h = 0; h < n_heads; ++h)
    for (int64_t i = 0; i < hd / 2; ++i)
      for (int64_t half = 0; half < 2; ++half) {
        const int64_t src = h * hd + half * (hd / 2) + i, dst = h * hd + 2 * i + half;
        std::copy_n(v->data() + src * row_len, row_len, out.data() + dst * row_len);
      }
  *v = std::move(out);
}

Status Encode(const std::vector<float>& x, uint32_t type, int64_t row_len, std::string* out) {
  const size_t start = out->size();
  switch (type) {
    case 0: out->append(reinterpret_cast<const char*>(x.data()), x.size() * 4); return Status::Ok();
    case 1:
    case 30: {
      out->resize(start + x.size() * 2);
      kernels::ConvertFromF32(x.data(), static_cast<int64_t>(x.size()),
                              type == 1 ? kernels::DType::kF16 : kernels::DType::kBF16, out->data() + start);
      return Status::Ok();
    }
    default: break;
  }
  QuantType q;
  switch (type) {
    case 8: q = QuantType::kQ8_0; break;
    case 2: q = QuantType::kQ4_0; break;
    case 12: q = QuantType::kQ4_K; break;
    case 14: q = QuantType::kQ6_K; break;
    case 6: q = QuantType::kQ5_0; break;
    default: return InternalError("no quantizer for " + GgmlTypeName(type));
  }
  const int64_t rows = static_cast<int64_t>(x.size()) / row_len, rb = kernels::QuantRowBytes(q, row_len);
  out->resize(start + rows * rb);
  for (int64_t r = 0; r < rows; ++r)
    kernels::QuantizeRow(q, x.data() + r * row_len, row_len, out->data() + start + r * rb);
  return Status::Ok();
}

// tokenizer.json's pre-tokenizer regex, as llama.cpp's `tokenizer.ggml.pre` name.
StatusOr<std::string> PreTokenizerName(const json& tok) {
  const std::string dump = tok.contains("pre_tokenizer") ? tok["pre_tokenizer"].dump() : "";
  if (dump.find("\\\\p{N}{1,3}") != std::string::npos) return std::string("llama-bpe");
  if (dump.find("\\\\p{N}") != std::string::npos) return std::string("qwen2");
  if (dump.find("ByteLevel") != std::string::npos) return std::string("gpt-2");
  return UnimplementedError("tokenizer.json: pre-tokenizer not recognised as qwen2, llama-bpe or gpt-2");
}

Status AddTokenizer(const std::string& dir, const ModelConfig& c, GgufWriter* w) {
  KVF_ASSIGN_OR_RETURN(json tok, ReadJson(dir + "/tokenizer.json"));
  json tcfg = json::object();
  if (auto t = ReadJson(dir + "/tokenizer_config.json"); t.ok()) tcfg = *t;
  const json& model = tok["model"];
  if (!model.is_object() || model.value("type", "") != "BPE")
    return UnimplementedError(dir + "/tokenizer.json: only byte-level BPE tokenizers convert to GGUF");
  std::map<int64_t, std::string> by_id;
  std::map<int64_t, bool> special;
  for (auto it = model["vocab"].begin(); it != model["vocab"].end(); ++it) by_id[it.value().get<int64_t>()] = it.key();
  if (tok.contains("added_tokens"))
    for (const auto& t : tok["added_tokens"]) {
      by_id[t["id"].get<int64_t>()] = t["content"].get<std::string>();
      special[t["id"].get<int64_t>()] = t.value("special", false);
    }
  std::vector<std::string> tokens;
  std::vector<int32_t> types;
  for (int64_t i = 0; i < c.vocab_size; ++i) {
    auto it = by_id.find(i);
    if (it == by_id.end()) {
      tokens.push_back("[PAD" + std::to_string(i) + "]");
      types.push_back(5);  // UNUSED
    } else {
      tokens.push_back(it->second);
      auto sp = special.find(i);
      types.push_back(sp == special.end() ? 1 : sp->second ? 3 : 4);  // NORMAL, CONTROL, USER_DEFINED
    }
  }
  std::vector<std::string> merges;
  for (const auto& m : model["merges"]) {
    if (m.is_string())
      merges.push_back(m.get<std::string>());
    else if (m.is_array() && m.size() == 2)
      merges.push_back(m[0].get<std::string>() + " " + m[1].get<std::string>());
  }
  KVF_ASSIGN_OR_RETURN(std::string pre, PreTokenizerName(tok));
  w->AddString(gguf_keys::kTokenizerModel, "gpt2");
  w->AddString(gguf_keys::kTokenizerPre, pre);
  w->AddStringArray(gguf_keys::kTokens, tokens);
  w->AddInt32Array(gguf_keys::kTokenTypes, types);
  w->AddStringArray(gguf_keys::kMerges, merges);
  auto id_of = [&](const char* field) -> int64_t {
    if (!tcfg.contains(field)) return -1;
    const json& v = tcfg[field];
    std::string content = v.is_string()                            ? v.get<std::string>()
                          : v.is_object() && v.contains("content") ? v["content"].get<std::string>()
                                                                   : "";
    for (const auto& [id, s] : by_id)
      if (!content.empty() && s == content) return id;
    return -1;
  };
  int64_t bos = id_of("bos_token"), eos = id_of("eos_token"), pad = id_of("pad_token");
  if (bos < 0) bos = c.bos_token_id;
  if (eos < 0 && !c.eos_token_ids.empty()) eos = c.eos_token_ids[0];
  if (bos >= 0) w->AddUint32(gguf_keys::kBosId, static_cast<uint32_t>(bos));
  if (eos >= 0) w->AddUint32(gguf_keys::kEosId, static_cast<uint32_t>(eos));
  if (pad >= 0) w->AddUint32(gguf_keys::kPadId, static_cast<uint32_t>(pad));
  w->AddBool(gguf_keys::kAddBos, tcfg.value("add_bos_token", false));
  if (tcfg.contains("chat_template") && tcfg["chat_template"].is_string())
    w->AddString(gguf_keys::kChatTemplate, tcfg["chat_template"].get<std::string>());
  return Status::Ok();
}

}  // namespace

const char* GgufFileTypeName(GgufFileType type) {
  switch (type) {
    case GgufFileType::kF32: return "f32";
    case GgufFileType::kF16: return "f16";
    case GgufFileType::kBF16: return "bf16";
    case GgufFileType::kQ8_0: return "q8_0";
    case GgufFileType::kQ4_0: return "q4_0";
    case GgufFileType::kQ4_K_M: return "q4_k_m";
  }
  return "?";
}

StatusOr<GgufFileType> ParseGgufFileType(std::string_view name) {
  for (GgufFileType t : {GgufFileType::kF32, GgufFileType::kF16, GgufFileType::kBF16, GgufFileType::kQ8_0,
                         GgufFileType::kQ4_0, GgufFileType::kQ4_K_M})
    if (name == GgufFileTypeName(t)) return t;
  return InvalidArgumentError("unknown GGUF file type '" + std::string(name) +
                              "' (want f32, f16, bf16, q8_0, q4_0 or q4_k_m)");
}

Status ConvertToGguf(const std::string& dir, const std::string& path, const GgufConvertOptions& options) {
  KVF_ASSIGN_OR_RETURN(std::string cfg_text, ReadText(dir + "/config.json"));
  KVF_ASSIGN_OR_RETURN(ModelConfig c, ParseModelConfig(cfg_text));
  KVF_ASSIGN_OR_RETURN(std::unique_ptr<WeightFiles> files, WeightFiles::Open(dir));
  if (c.rope_scaling.type == RopeScaling::Type::kYarn)
    return UnimplementedError(dir + ": converting yarn RoPE scaling to GGUF is not supported");

  const std::string arch = GgufArchName(c.arch);
  GgufWriter w;
  w.AddString(gguf_keys::kArchitecture, arch);
  {
    std::string name = dir;
    while (name.size() > 1 && name.back() == '/') name.pop_back();
    w.AddString("general.name", name.substr(name.find_last_of('/') + 1));
  }
  const int ftype[] = {0, 1, 32, 7, 2, 15};  // llama_ftype of each GgufFileType
  w.AddUint32("general.file_type", static_cast<uint32_t>(ftype[static_cast<int>(options.type)]));
  if (options.type >= GgufFileType::kQ8_0) w.AddUint32("general.quantization_version", 2);
  auto key = [&](const char* suffix) { return arch + suffix; };
  w.AddUint32(key(gguf_keys::kContextLength), static_cast<uint32_t>(c.max_position_embeddings));
  w.AddUint32(key(gguf_keys::kEmbeddingLength), static_cast<uint32_t>(c.hidden_size));
  w.AddUint32(key(gguf_keys::kBlockCount), static_cast<uint32_t>(c.num_layers));
  w.AddUint32(key(gguf_keys::kFeedForwardLength), static_cast<uint32_t>(c.intermediate_size));
  w.AddUint32(key(gguf_keys::kHeadCount), static_cast<uint32_t>(c.num_heads));
  w.AddUint32(key(gguf_keys::kHeadCountKv), static_cast<uint32_t>(c.num_kv_heads));
  w.AddFloat32(key(gguf_keys::kRopeFreqBase), static_cast<float>(c.rope_theta));
  w.AddFloat32(key(gguf_keys::kRmsEps), static_cast<float>(c.rms_norm_eps));
  if (c.arch == Architecture::kQwen3 || c.head_dim * c.num_heads != c.hidden_size) {
    w.AddUint32(key(gguf_keys::kKeyLength), static_cast<uint32_t>(c.head_dim));
    w.AddUint32(key(gguf_keys::kValueLength), static_cast<uint32_t>(c.head_dim));
  }
  if (c.arch == Architecture::kLlama) {
    w.AddUint32(key(gguf_keys::kVocabSize), static_cast<uint32_t>(c.vocab_size));
    w.AddUint32(key(gguf_keys::kRopeDimensionCount), static_cast<uint32_t>(c.head_dim));
  }
  if (c.rope_scaling.type == RopeScaling::Type::kLinear) {
    w.AddString(key(gguf_keys::kRopeScalingType), "linear");
    w.AddFloat32(key(gguf_keys::kRopeScalingFactor), static_cast<float>(c.rope_scaling.factor));
  }
  KVF_RETURN_IF_ERROR(AddTokenizer(dir, c, &w));

  // The tensors, in llama.cpp's order.
  std::vector<Plan> plans;
  const int64_t H = c.hidden_size, hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd,
                I = c.intermediate_size, V = c.vocab_size, L = c.num_layers;
  const bool tied = c.tie_word_embeddings || !files->Has("lm_head.weight");
  auto matrix = [&](std::string hf, std::string gg, int64_t rows, int64_t cols, int layer, bool is_output,
                    int64_t permute = 0) {
    plans.push_back({std::move(hf),
                     gg,
                     {rows, cols},
                     MatrixType(options.type, gg, cols, is_output, layer, static_cast<int>(L)),
                     permute,
                     {}});
  };
  auto vec = [&](std::string hf, std::string gg, int64_t n, int64_t permute = 0) {
    plans.push_back({std::move(hf), std::move(gg), {n}, 0, permute, {}});
  };
  matrix("model.embed_tokens.weight", "token_embd.weight", V, H, -1, tied);
  if (c.rope_scaling.type == RopeScaling::Type::kLlama3) {
    // llama.cpp takes llama3 scaling as per-frequency divisors (rope_freqs.weight).
    std::vector<float> scaled;
    float attn_factor = 1;
    RopeFrequencies(c, &scaled, &attn_factor);
    Plan p{"", "rope_freqs.weight", {hd / 2}, 0, 0, {}};
    for (int64_t i = 0; i < hd / 2; ++i)
      p.values.push_back(static_cast<float>(std::pow(c.rope_theta, -2.0 * i / hd) / scaled[i]));
    plans.push_back(std::move(p));
  }
  const bool llama = c.arch == Architecture::kLlama;
  for (int l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".", g = "blk." + std::to_string(l) + ".";
    vec(p + "input_layernorm.weight", g + "attn_norm.weight", H);
    matrix(p + "self_attn.q_proj.weight", g + "attn_q.weight", qd, H, l, false, llama ? c.num_heads : 0);
    matrix(p + "self_attn.k_proj.weight", g + "attn_k.weight", kvd, H, l, false, llama ? c.num_kv_heads : 0);
    matrix(p + "self_attn.v_proj.weight", g + "attn_v.weight", kvd, H, l, false);
    if (c.qkv_bias) {
      vec(p + "self_attn.q_proj.bias", g + "attn_q.bias", qd, llama ? c.num_heads : 0);
      vec(p + "self_attn.k_proj.bias", g + "attn_k.bias", kvd, llama ? c.num_kv_heads : 0);
      vec(p + "self_attn.v_proj.bias", g + "attn_v.bias", kvd);
    }
    if (c.qk_norm) {
      vec(p + "self_attn.q_norm.weight", g + "attn_q_norm.weight", hd);
      vec(p + "self_attn.k_norm.weight", g + "attn_k_norm.weight", hd);
    }
    matrix(p + "self_attn.o_proj.weight", g + "attn_output.weight", H, qd, l, false);
    if (c.o_bias) vec(p + "self_attn.o_proj.bias", g + "attn_output.bias", H);
    vec(p + "post_attention_layernorm.weight", g + "ffn_norm.weight", H);
    matrix(p + "mlp.gate_proj.weight", g + "ffn_gate.weight", I, H, l, false);
    matrix(p + "mlp.up_proj.weight", g + "ffn_up.weight", I, H, l, false);
    matrix(p + "mlp.down_proj.weight", g + "ffn_down.weight", H, I, l, false);
  }
  vec("model.norm.weight", "output_norm.weight", H);
  if (!tied) matrix("lm_head.weight", "output.weight", V, H, -1, true);

  for (const Plan& p : plans) {
    std::vector<int64_t> ne(p.shape.rbegin(), p.shape.rend());
    const WeightFiles* wf = files.get();
    w.AddTensor(p.gguf_name, ne, p.type, [wf, &p](std::string* out) -> Status {
      std::vector<float> x = p.values;
      if (!p.hf_name.empty()) {
        KVF_ASSIGN_OR_RETURN(TensorView v, wf->Get(p.hf_name, p.shape));
        int64_t n = 1;
        for (int64_t d : p.shape) n *= d;
        x.resize(n);
        kernels::ConvertToF32(v.data, v.dtype, n, x.data());
      }
      const int64_t row_len = p.shape.back();
      if (p.permute_heads > 0) PermuteRows(&x, p.permute_heads, p.shape.size() == 2 ? row_len : 1);
      return Encode(x, p.type, row_len, out);
    });
  }
  return w.Write(path);
}

}  // namespace kvferry::model
