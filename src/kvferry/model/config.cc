// config.json parsing and RoPE frequencies (HF semantics of rope_scaling).

#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "kvferry/model/model.h"

namespace kvferry::model {
namespace {

using nlohmann::json;

constexpr int64_t kMaxDim = 1 << 20;

// An optional integer field: absent or null leaves *out unchanged.
Status GetInt(const json& j, const char* key, int64_t* out, bool required, int64_t lo = 1,
              int64_t hi = kMaxDim) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (required) return InvalidArgumentError(std::string("missing '") + key + "'");
    return Status::Ok();
  }
  if (!it->is_number_integer())
    return InvalidArgumentError(std::string("'") + key + "' is not an integer");
  const int64_t v = it->get<int64_t>();
  if (v < lo || v > hi)
    return InvalidArgumentError(std::string("'") + key + "' = " + std::to_string(v) +
                                " is outside [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  *out = v;
  return Status::Ok();
}

Status GetDouble(const json& j, const char* key, double* out, double lo, double hi) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_number()) return InvalidArgumentError(std::string("'") + key + "' is not a number");
  const double v = it->get<double>();
  if (!(v >= lo && v <= hi))
    return InvalidArgumentError(std::string("'") + key + "' = " + std::to_string(v) + " is out of range");
  *out = v;
  return Status::Ok();
}

Status GetBool(const json& j, const char* key, bool* out) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_boolean()) return InvalidArgumentError(std::string("'") + key + "' is not a boolean");
  *out = it->get<bool>();
  return Status::Ok();
}

Status ParseRopeScaling(const json& j, RopeScaling* rs) {
  auto it = j.find("rope_scaling");
  if (it == j.end() || it->is_null()) return Status::Ok();
  if (!it->is_object()) return InvalidArgumentError("'rope_scaling' is not an object");
  const json& r = *it;
  std::string type;
  for (const char* key : {"rope_type", "type"}) {
    auto t = r.find(key);
    if (t != r.end() && t->is_string()) {
      type = t->get<std::string>();
      break;
    }
  }
  if (type.empty()) return InvalidArgumentError("'rope_scaling' has no 'rope_type'/'type'");
  if (type == "default") return Status::Ok();
  if (type == "linear") {
    rs->type = RopeScaling::Type::kLinear;
  } else if (type == "llama3") {
    rs->type = RopeScaling::Type::kLlama3;
  } else if (type == "yarn") {
    rs->type = RopeScaling::Type::kYarn;
  } else {
    return UnimplementedError("rope_scaling type '" + type +
                              "' is not supported (supported: default, linear, llama3, yarn)");
  }
  KVF_RETURN_IF_ERROR(GetDouble(r, "factor", &rs->factor, 1e-3, 1e6));
  if (r.find("factor") == r.end()) return InvalidArgumentError("'rope_scaling' has no 'factor'");
  KVF_RETURN_IF_ERROR(GetDouble(r, "low_freq_factor", &rs->low_freq_factor, 1e-6, 1e6));
  KVF_RETURN_IF_ERROR(GetDouble(r, "high_freq_factor", &rs->high_freq_factor, 1e-6, 1e6));
  KVF_RETURN_IF_ERROR(GetInt(r, "original_max_position_embeddings",
                             &rs->original_max_position_embeddings, false, 1, int64_t{1} << 40));
  KVF_RETURN_IF_ERROR(GetDouble(r, "beta_fast", &rs->beta_fast, 1e-6, 1e6));
  KVF_RETURN_IF_ERROR(GetDouble(r, "beta_slow", &rs->beta_slow, 1e-6, 1e6));
  KVF_RETURN_IF_ERROR(GetDouble(r, "attention_factor", &rs->attention_factor, 1e-6, 1e6));
  KVF_RETURN_IF_ERROR(GetDouble(r, "mscale", &rs->mscale, 0, 1e6));
  KVF_RETURN_IF_ERROR(GetDouble(r, "mscale_all_dim", &rs->mscale_all_dim, 0, 1e6));
  if (rs->type == RopeScaling::Type::kLlama3 && !(rs->high_freq_factor > rs->low_freq_factor))
    return InvalidArgumentError("llama3 rope_scaling needs high_freq_factor > low_freq_factor");
  return Status::Ok();
}

Status ParseInto(const json& j, ModelConfig* c) {
  if (!j.is_object()) return InvalidArgumentError("not a JSON object");
  auto arch = j.find("architectures");
  if (arch == j.end() || !arch->is_array() || arch->empty() || !(*arch)[0].is_string())
    return InvalidArgumentError("missing 'architectures' list");
  const std::string name = (*arch)[0].get<std::string>();
  auto parsed = ParseArchitecture(name);
  if (!parsed.ok())
    return UnimplementedError("unknown architecture '" + name +
                              "' (supported: Qwen2ForCausalLM, LlamaForCausalLM, Qwen3ForCausalLM)");
  c->arch = *parsed;
  KVF_RETURN_IF_ERROR(GetInt(j, "hidden_size", &c->hidden_size, true));
  KVF_RETURN_IF_ERROR(GetInt(j, "num_hidden_layers", &c->num_layers, true, 1, 4096));
  KVF_RETURN_IF_ERROR(GetInt(j, "num_attention_heads", &c->num_heads, true, 1, 4096));
  c->num_kv_heads = c->num_heads;
  KVF_RETURN_IF_ERROR(GetInt(j, "num_key_value_heads", &c->num_kv_heads, false, 1, 4096));
  KVF_RETURN_IF_ERROR(GetInt(j, "intermediate_size", &c->intermediate_size, true));
  KVF_RETURN_IF_ERROR(GetInt(j, "vocab_size", &c->vocab_size, true, 1, int64_t{1} << 24));
  c->max_position_embeddings = 32768;
  KVF_RETURN_IF_ERROR(GetInt(j, "max_position_embeddings", &c->max_position_embeddings, false, 1,
                             int64_t{1} << 40));
  if (c->num_heads % c->num_kv_heads != 0)
    return InvalidArgumentError("num_attention_heads (" + std::to_string(c->num_heads) +
                                ") is not a multiple of num_key_value_heads (" +
                                std::to_string(c->num_kv_heads) + ")");
  c->head_dim = 0;
  KVF_RETURN_IF_ERROR(GetInt(j, "head_dim", &c->head_dim, false, 2, 4096));
  if (c->head_dim == 0) {
    if (c->hidden_size % c->num_heads != 0)
      return InvalidArgumentError("hidden_size is not a multiple of num_attention_heads and "
                                  "there is no 'head_dim'");
    c->head_dim = c->hidden_size / c->num_heads;
  }
  if (c->head_dim % 2 != 0) return InvalidArgumentError("head_dim must be even for RoPE");
  KVF_RETURN_IF_ERROR(GetDouble(j, "rms_norm_eps", &c->rms_norm_eps, 0, 1));
  KVF_RETURN_IF_ERROR(GetDouble(j, "rope_theta", &c->rope_theta, 1, 1e12));
  KVF_RETURN_IF_ERROR(ParseRopeScaling(j, &c->rope_scaling));
  c->tie_word_embeddings = false;  // the HF default for all three
  KVF_RETURN_IF_ERROR(GetBool(j, "tie_word_embeddings", &c->tie_word_embeddings));

  bool attention_bias = false, mlp_bias = false, sliding = false;
  KVF_RETURN_IF_ERROR(GetBool(j, "attention_bias", &attention_bias));
  KVF_RETURN_IF_ERROR(GetBool(j, "mlp_bias", &mlp_bias));
  KVF_RETURN_IF_ERROR(GetBool(j, "use_sliding_window", &sliding));
  if (mlp_bias) return UnimplementedError("mlp_bias is not supported");
  if (sliding) return UnimplementedError("use_sliding_window is not supported");
  auto act = j.find("hidden_act");
  if (act != j.end() && !act->is_null() && !(act->is_string() && act->get<std::string>() == "silu"))
    return UnimplementedError("hidden_act must be 'silu'");
  switch (c->arch) {
    case Architecture::kQwen2:
      c->qkv_bias = true;
      c->o_bias = false;
      c->qk_norm = false;
      break;
    case Architecture::kLlama:
    case Architecture::kQwen3:
      c->qkv_bias = attention_bias;
      c->o_bias = attention_bias;
      c->qk_norm = c->arch == Architecture::kQwen3;
      break;
  }
  auto td = j.find("torch_dtype");
  if (td != j.end() && td->is_string()) {
    auto d = kernels::ParseDType(td->get<std::string>());
    if (d.ok()) c->torch_dtype = *d;
  }
  KVF_RETURN_IF_ERROR(GetInt(j, "bos_token_id", &c->bos_token_id, false, 0, int64_t{1} << 24));
  auto eos = j.find("eos_token_id");
  if (eos != j.end() && !eos->is_null()) {
    if (eos->is_number_integer()) {
      c->eos_token_ids.push_back(eos->get<int64_t>());
    } else if (eos->is_array()) {
      for (const auto& e : *eos) {
        if (!e.is_number_integer()) return InvalidArgumentError("'eos_token_id' has a non-integer");
        c->eos_token_ids.push_back(e.get<int64_t>());
      }
    } else {
      return InvalidArgumentError("'eos_token_id' is not an integer or a list");
    }
  }
  return Status::Ok();
}

}  // namespace

const char* ArchitectureName(Architecture arch) {
  switch (arch) {
    case Architecture::kQwen2: return "Qwen2ForCausalLM";
    case Architecture::kLlama: return "LlamaForCausalLM";
    case Architecture::kQwen3: return "Qwen3ForCausalLM";
  }
  return "?";
}

StatusOr<Architecture> ParseArchitecture(std::string_view name) {
  if (name == "Qwen2ForCausalLM" || name == "qwen2") return Architecture::kQwen2;
  if (name == "LlamaForCausalLM" || name == "llama") return Architecture::kLlama;
  if (name == "Qwen3ForCausalLM" || name == "qwen3") return Architecture::kQwen3;
  return InvalidArgumentError("unknown architecture '" + std::string(name) + "'");
}

StatusOr<ModelConfig> ParseModelConfig(std::string_view text) {
  json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return InvalidArgumentError("not valid JSON");
  ModelConfig c;
  KVF_RETURN_IF_ERROR(ParseInto(j, &c));
  return c;
}

void RopeFrequencies(const ModelConfig& c, std::vector<float>* inv_freq_out, float* attn_factor) {
  const int64_t dim = c.head_dim, half = dim / 2;
  const double base = c.rope_theta;
  std::vector<double> inv(half);
  for (int64_t i = 0; i < half; ++i) {
    // HF: 1 / base ** (arange(0, dim, 2).float() / dim), in float32.
    const float expo = static_cast<float>(2 * i) / static_cast<float>(dim);
    inv[i] = 1.0 / static_cast<double>(std::pow(static_cast<float>(base), expo));
  }
  double factor_out = 1.0;
  const RopeScaling& rs = c.rope_scaling;
  const double orig = rs.original_max_position_embeddings > 0
                          ? static_cast<double>(rs.original_max_position_embeddings)
                          : static_cast<double>(c.max_position_embeddings);
  switch (rs.type) {
    case RopeScaling::Type::kNone:
      break;
    case RopeScaling::Type::kLinear:
      for (auto& f : inv) f /= rs.factor;
      break;
    case RopeScaling::Type::kLlama3: {
      const double low_wavelen = orig / rs.low_freq_factor;
      const double high_wavelen = orig / rs.high_freq_factor;
      for (auto& f : inv) {
        const double wavelen = 2 * M_PI / f;
        if (wavelen > low_wavelen) {
          f = f / rs.factor;
        } else if (wavelen >= high_wavelen) {
          const double smooth =
              (orig / wavelen - rs.low_freq_factor) / (rs.high_freq_factor - rs.low_freq_factor);
          f = (1 - smooth) * f / rs.factor + smooth * f;
        }
      }
      break;
    }
    case RopeScaling::Type::kYarn: {
      auto get_mscale = [](double scale, double m) {
        return scale <= 1 ? 1.0 : 0.1 * m * std::log(scale) + 1.0;
      };
      if (rs.attention_factor > 0) {
        factor_out = rs.attention_factor;
      } else if (rs.mscale > 0 && rs.mscale_all_dim > 0) {
        factor_out = get_mscale(rs.factor, rs.mscale) / get_mscale(rs.factor, rs.mscale_all_dim);
      } else {
        factor_out = get_mscale(rs.factor, 1.0);
      }
      auto corr_dim = [&](double rot) {
        return (dim * std::log(orig / (rot * 2 * M_PI))) / (2 * std::log(base));
      };
      double low = std::max(std::floor(corr_dim(rs.beta_fast)), 0.0);
      double high = std::min(std::ceil(corr_dim(rs.beta_slow)), static_cast<double>(dim - 1));
      if (low == high) high += 0.001;
      for (int64_t i = 0; i < half; ++i) {
        const double ramp = std::clamp((static_cast<double>(i) - low) / (high - low), 0.0, 1.0);
        const double extrap_factor = 1 - ramp;
        const double extrap = inv[i], interp = inv[i] / rs.factor;
        inv[i] = interp * (1 - extrap_factor) + extrap * extrap_factor;
      }
      break;
    }
  }
  if (static_cast<int64_t>(c.rope_freq_factors.size()) == half)
    for (int64_t i = 0; i < half; ++i) inv[i] /= c.rope_freq_factors[i];
  inv_freq_out->resize(half);
  for (int64_t i = 0; i < half; ++i) (*inv_freq_out)[i] = static_cast<float>(inv[i]);
  *attn_factor = static_cast<float>(factor_out);
}

}  // namespace kvferry::model
