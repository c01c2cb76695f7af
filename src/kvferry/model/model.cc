// Model loading and the forward pass.

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <sstream>

#include <fmt/format.h>

#include "kvferry/kernels/quant.h"
#include "kvferry/model/gguf_model.h"
#include "kvferry/model/model.h"
#include "kvferry/model/progress.h"
#include "kvferry/model/weights.h"

namespace kvferry::model {

using kernels::MatMulOutput;
using kernels::Matrix;

namespace {

struct Layer {
  Matrix q, k, v, o, gate, up, down;
  std::vector<float> q_bias, k_bias, v_bias, o_bias;  // empty when absent
  std::vector<float> input_norm, post_norm, q_norm, k_norm;
};

const float* OrNull(const std::vector<float>& v) {
  return v.empty() ? nullptr : v.data();
}

StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return NotFoundError(path + ": cannot open");
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

}  // namespace

struct Model::Impl {
  ModelConfig config;
  std::unique_ptr<WeightFiles> weights;
  std::unique_ptr<kernels::Compute> compute;
  Matrix embed, lm_head;
  std::vector<float> final_norm;
  std::vector<Layer> layers;
  std::vector<float> inv_freq;
  float rope_factor = 1.0f;
  uint64_t decode_bytes = 0;
  std::string fingerprint;  // of the weights as loaded, before any packing

  // Scratch, reused across steps.
  std::vector<float> x, h, q, k, v, attn, gate, up, cos, sin, hs;
  std::vector<int64_t> pos;
  std::vector<int32_t> tok;

  // Tensors whose data is not aligned to their element size (a header not padded to 8
  // bytes) are copied here; all others are used in place.
  std::vector<std::unique_ptr<uint64_t[]>> copies;

  // t.data, or an aligned copy of it.
  const void* Aligned(const TensorView& t) {
    if (reinterpret_cast<uintptr_t>(t.data) % kernels::DTypeSize(t.dtype) == 0) return t.data;
    copies.emplace_back(new uint64_t[(t.bytes + 7) / 8]);
    std::memcpy(copies.back().get(), t.data, t.bytes);
    return copies.back().get();
  }

  Status LoadTensors(const LoadOptions& options, const std::string& dir);
  StatusOr<Matrix> GetMatrix(const std::string& name, int64_t rows, int64_t cols, std::vector<const void*>* regions,
                             std::vector<uint64_t>* sizes);
  StatusOr<std::vector<float>> GetVector(const std::string& name, int64_t n);
  std::string ComputeFingerprint() const;
  Status PackWeights();
};

// Packs every bf16 matrix of the forward pass in place when the Compute wants it (kernels.h,
// PackBf16Blocks): only weights read into memory (a mapped file stays as the file has it), and
// only if every one can be packed, since fused products take all or none.
Status Model::Impl::PackWeights() {
  if (!compute->PacksBf16() || !weights->in_memory()) return Status::Ok();
  std::vector<Matrix*> all = {&lm_head};
  for (Layer& L : layers)
    for (Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down}) all.push_back(m);
  for (const Matrix* m : all)
    if (!kernels::CanPackBf16(*m)) return Status::Ok();
  const auto t0 = std::chrono::steady_clock::now();
  KVF_RETURN_IF_ERROR(weights->SetWritable(true));
  for (Matrix* m : all) {
    auto* w = static_cast<uint16_t*>(const_cast<void*>(m->data));
    const int64_t cols = m->cols;
    compute->ParallelFor(m->rows / kernels::kPackRows,
                         [w, cols](int64_t b, int64_t e) { kernels::PackBf16Blocks(w, cols, b, e); });
    m->packed = true;
  }
  KVF_RETURN_IF_ERROR(weights->SetWritable(false));
  if (embed.data == lm_head.data) embed.packed = true;  // tied: the lookup reads packed rows
  KVF_LOG_DEBUG("packed {} bf16 matrices in 16-row blocks in {:.2f} s", all.size(),
                std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
  return Status::Ok();
}

StatusOr<Matrix> Model::Impl::GetMatrix(const std::string& name, int64_t rows, int64_t cols,
                                        std::vector<const void*>* regions, std::vector<uint64_t>* sizes) {
  KVF_ASSIGN_OR_RETURN(TensorView t, weights->Get(name, {rows, cols}));
  t.data = Aligned(t);
  regions->push_back(t.data);
  sizes->push_back(t.bytes);
  return Matrix{t.data, t.dtype, rows, cols};
}

StatusOr<std::vector<float>> Model::Impl::GetVector(const std::string& name, int64_t n) {
  KVF_ASSIGN_OR_RETURN(TensorView t, weights->Get(name, {n}));
  t.data = Aligned(t);
  std::vector<float> out(n);
  kernels::ConvertToF32(t.data, t.dtype, n, out.data());
  return out;
}

Status Model::Impl::LoadTensors(const LoadOptions& options, const std::string& dir) {
  const ModelConfig& c = config;
  const int64_t H = c.hidden_size, hd = c.head_dim, qd = c.num_heads * hd, kvd = c.num_kv_heads * hd,
                I = c.intermediate_size;
  std::vector<const void*> regions;
  std::vector<uint64_t> sizes;
  KVF_ASSIGN_OR_RETURN(embed, GetMatrix("model.embed_tokens.weight", c.vocab_size, H, &regions, &sizes));
  KVF_ASSIGN_OR_RETURN(final_norm, GetVector("model.norm.weight", H));
  if (c.tie_word_embeddings) {
    lm_head = embed;
  } else {
    KVF_ASSIGN_OR_RETURN(lm_head, GetMatrix("lm_head.weight", c.vocab_size, H, &regions, &sizes));
  }
  decode_bytes = static_cast<uint64_t>(lm_head.rows * kernels::DTypeRowBytes(lm_head.dtype, lm_head.cols));
  layers.resize(c.num_layers);
  for (int64_t l = 0; l < c.num_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    Layer& L = layers[l];
    KVF_ASSIGN_OR_RETURN(L.q, GetMatrix(p + "self_attn.q_proj.weight", qd, H, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.k, GetMatrix(p + "self_attn.k_proj.weight", kvd, H, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.v, GetMatrix(p + "self_attn.v_proj.weight", kvd, H, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.o, GetMatrix(p + "self_attn.o_proj.weight", H, qd, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.gate, GetMatrix(p + "mlp.gate_proj.weight", I, H, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.up, GetMatrix(p + "mlp.up_proj.weight", I, H, &regions, &sizes));
    KVF_ASSIGN_OR_RETURN(L.down, GetMatrix(p + "mlp.down_proj.weight", H, I, &regions, &sizes));
    if (c.qkv_bias) {
      KVF_ASSIGN_OR_RETURN(L.q_bias, GetVector(p + "self_attn.q_proj.bias", qd));
      KVF_ASSIGN_OR_RETURN(L.k_bias, GetVector(p + "self_attn.k_proj.bias", kvd));
      KVF_ASSIGN_OR_RETURN(L.v_bias, GetVector(p + "self_attn.v_proj.bias", kvd));
    }
    if (c.o_bias) {
      KVF_ASSIGN_OR_RETURN(L.o_bias, GetVector(p + "self_attn.o_proj.bias", H));
    }
    if (c.qk_norm) {
      KVF_ASSIGN_OR_RETURN(L.q_norm, GetVector(p + "self_attn.q_norm.weight", hd));
      KVF_ASSIGN_OR_RETURN(L.k_norm, GetVector(p + "self_attn.k_norm.weight", hd));
    }
    KVF_ASSIGN_OR_RETURN(L.input_norm, GetVector(p + "input_layernorm.weight", H));
    KVF_ASSIGN_OR_RETURN(L.post_norm, GetVector(p + "post_attention_layernorm.weight", H));
    for (const Matrix* m : {&L.q, &L.k, &L.v, &L.o, &L.gate, &L.up, &L.down})
      decode_bytes += static_cast<uint64_t>(m->rows * kernels::DTypeRowBytes(m->dtype, m->cols));
  }
  if (options.prefault && !weights->in_memory()) {
    uint64_t total = 0, done = 0;
    for (uint64_t s : sizes) total += s;
    Progress progress("loading " + dir, total, options.show_progress);
    constexpr uint64_t kChunk = 32u << 20;
    for (size_t i = 0; i < regions.size(); ++i) {
      for (uint64_t off = 0; off < sizes[i]; off += kChunk) {
        const uint64_t n = std::min(kChunk, sizes[i] - off);
        WeightFiles::Prefault(static_cast<const char*>(regions[i]) + off, n);
        done += n;
        progress.Update(done);
      }
    }
  }
  return Status::Ok();
}

Model::Model(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Model::~Model() = default;

StatusOr<std::unique_ptr<Model>> Model::Load(const std::string& dir, const LoadOptions& options) {
  auto impl = std::make_unique<Impl>();
  if (IsGgufFile(dir)) {  // a GGUF file where a directory goes (gguf_model.cc)
    KVF_ASSIGN_OR_RETURN(impl->config, ReadGgufConfig(dir));
  } else {
    const std::string config_path = dir + "/config.json";
    KVF_ASSIGN_OR_RETURN(std::string text, ReadFile(config_path));
    auto config = ParseModelConfig(text);
    if (!config.ok()) return config.status().WithContext(config_path);
    impl->config = *config;
  }
  bool in_memory = options.weights_in_memory;
  if (const char* e = std::getenv("KVFERRY_WEIGHTS"); e != nullptr && *e != '\0') {
    const std::string v = e;
    if (v == "mmap") {
      in_memory = false;
    } else if (v != "memory") {
      return InvalidArgumentError("KVFERRY_WEIGHTS='" + v + "': want 'memory' (the default) or 'mmap'");
    }
  }
  auto weights = IsGgufFile(dir) ? WeightFiles::OpenGguf(dir, impl->config, in_memory, options.show_progress)
                                 : WeightFiles::Open(dir, in_memory, options.show_progress);
  if (!weights.ok()) return weights.status();
  impl->weights = std::move(*weights);
  Status st = impl->LoadTensors(options, dir);
  if (!st.ok()) return st.WithContext(dir);
  RopeFrequencies(impl->config, &impl->inv_freq, &impl->rope_factor);
  kernels::ComputeOptions copt;
  copt.num_threads = options.num_threads;
  copt.max_isa = options.max_isa;
  copt.use_gemm_library = options.use_gemm_library;
  KVF_ASSIGN_OR_RETURN(impl->compute, kernels::Compute::Create(copt));
  impl->fingerprint = impl->ComputeFingerprint();
  st = impl->PackWeights();
  if (!st.ok()) return st.WithContext(dir);
  return std::unique_ptr<Model>(new Model(std::move(impl)));
}

const ModelConfig& Model::config() const {
  return impl_->config;
}
DType Model::weight_dtype() const {
  return impl_->embed.dtype;
}
uint64_t Model::decode_weight_bytes() const {
  return impl_->decode_bytes;
}
kernels::Compute& Model::compute() {
  return *impl_->compute;
}

std::string Model::Describe() const {
  const ModelConfig& c = impl_->config;
  return std::string(ArchitectureName(c.arch)) + ": " + std::to_string(c.num_layers) + " layers, hidden " +
         std::to_string(c.hidden_size) + ", heads " + std::to_string(c.num_heads) + "/" +
         std::to_string(c.num_kv_heads) + ", vocab " + std::to_string(c.vocab_size) + ", " +
         kernels::DTypeName(weight_dtype()) + " weights; " + impl_->compute->Describe();
}

std::string Model::Fingerprint() const {
  return impl_->fingerprint;
}

// A hash of the weights' shapes and of a few bytes of each matrix as the files hold them.
std::string Model::Impl::ComputeFingerprint() const {
  uint64_t h = 1469598103934665603ull;  // FNV-1a, 64 bits
  auto mix = [&h](const void* p, size_t n) {
    const auto* b = static_cast<const unsigned char*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 1099511628211ull;
  };
  auto matrix = [&](const Matrix& m) {
    const int64_t shape[3] = {static_cast<int64_t>(m.dtype), m.rows, m.cols};
    mix(shape, sizeof(shape));
    const int64_t bytes = m.rows * kernels::DTypeRowBytes(m.dtype, m.cols);
    const auto* d = static_cast<const char*>(m.data);
    if (d == nullptr || bytes <= 0) return;
    for (int64_t at : {int64_t{0}, bytes / 2, bytes - 64}) {
      const int64_t from = std::max<int64_t>(0, at);
      mix(d + from, static_cast<size_t>(std::min<int64_t>(64, bytes - from)));
    }
  };
  matrix(embed);
  matrix(lm_head);
  for (const Layer& l : layers)
    for (const Matrix* m : {&l.q, &l.k, &l.v, &l.o, &l.gate, &l.up, &l.down}) matrix(*m);
  mix(final_norm.data(), final_norm.size() * sizeof(float));
  const ModelConfig& c = config;
  return fmt::format("{} {} {}x{} #{:016x}", ArchitectureName(c.arch), kernels::DTypeName(embed.dtype), c.num_layers,
                     c.hidden_size, h);
}

std::string Model::DescribeWeightMemory() const {
  const WeightFiles& w = *impl_->weights;
  const uint64_t mb = w.total_bytes() >> 20;
  if (!w.in_memory()) return std::to_string(mb) + " MB mapped from the files (KVFERRY_WEIGHTS=mmap)";
  return std::to_string(mb) + " MB read into memory, " + std::to_string(w.huge_page_bytes() >> 20) +
         " MB of it in 2 MiB pages" + (impl_->lm_head.packed ? ", bf16 matrices packed in 16-row blocks" : "");
}

StatusOr<std::unique_ptr<KvCache>> Model::CreateKvCache(const KvCacheOptions& options) const {
  return KvCache::Create(impl_->config, options);
}

std::span<const float> ForwardOutput::Row(size_t seq, int64_t i) const {
  const int64_t row = first_row[seq] + (i < 0 ? num_rows[seq] - 1 : i);
  return std::span<const float>(logits.data() + row * vocab_size, static_cast<size_t>(vocab_size));
}

Status Model::Forward(std::span<const SequenceInput> batch, KvCache& cache, ForwardOutput* out) {
  Impl& m = *impl_;
  const ModelConfig& c = m.config;
  if (cache.num_layers() != c.num_layers || cache.num_kv_heads() != c.num_kv_heads || cache.head_dim() != c.head_dim)
    return InvalidArgumentError("the KV cache was made for a model of another shape");
  const int64_t bs = cache.block_size();
  int64_t T = 0, R = 0;
  for (size_t s = 0; s < batch.size(); ++s) {
    const SequenceInput& in = batch[s];
    const std::string who = "sequence " + std::to_string(s);
    if (in.tokens.empty()) return InvalidArgumentError(who + ": no tokens");
    if (in.start_pos < 0) return InvalidArgumentError(who + ": negative start_pos");
    const int64_t end = in.start_pos + static_cast<int64_t>(in.tokens.size());
    if (static_cast<int64_t>(in.block_table.size()) * bs < end)
      return InvalidArgumentError(who + ": block table covers " + std::to_string(in.block_table.size() * bs) +
                                  " positions, needs " + std::to_string(end));
    for (int64_t b = 0; b < (end + bs - 1) / bs; ++b)
      if (in.block_table[b] < 0 || in.block_table[b] >= cache.num_blocks())
        return InvalidArgumentError(who + ": block id " + std::to_string(in.block_table[b]) + " is outside the cache");
    for (int32_t t : in.tokens)
      if (t < 0 || t >= c.vocab_size)
        return InvalidArgumentError(who + ": token id " + std::to_string(t) + " is outside the vocab");
    T += static_cast<int64_t>(in.tokens.size());
    R += in.all_logits ? static_cast<int64_t>(in.tokens.size()) : 1;
  }
  if (T == 0) return InvalidArgumentError("empty batch");

  const int64_t H = c.hidden_size, hd = c.head_dim, nh = c.num_heads, nkv = c.num_kv_heads;
  const int64_t qd = nh * hd, kvd = nkv * hd, I = c.intermediate_size, half = hd / 2;
  const float eps = static_cast<float>(c.rms_norm_eps);
  m.x.resize(T * H);
  m.h.resize(T * H);
  m.q.resize(T * qd);
  m.k.resize(T * kvd);
  m.v.resize(T * kvd);
  m.attn.resize(T * qd);
  m.gate.resize(T * I);
  m.up.resize(T * I);
  m.cos.resize(T * half);
  m.sin.resize(T * half);
  m.pos.resize(T);
  m.tok.resize(T);
  std::vector<kernels::AttentionSequence> seqs(batch.size());
  std::vector<int32_t> seq_of_row(T);
  {
    int64_t row = 0;
    for (size_t s = 0; s < batch.size(); ++s) {
      seqs[s] = {batch[s].block_table.data(), batch[s].start_pos, static_cast<int64_t>(batch[s].tokens.size()), row};
      for (size_t i = 0; i < batch[s].tokens.size(); ++i, ++row) {
        m.pos[row] = batch[s].start_pos + static_cast<int64_t>(i);
        m.tok[row] = batch[s].tokens[i];
        seq_of_row[row] = static_cast<int32_t>(s);
      }
    }
  }
  kernels::Compute& cp = *m.compute;
  const int64_t erb = kernels::DTypeRowBytes(m.embed.dtype, H);
  cp.ParallelFor(T, [&](int64_t b, int64_t e) {
    std::vector<uint16_t> row(m.embed.packed ? static_cast<size_t>(H) : 0);  // a packed row, unpacked
    for (int64_t t = b; t < e; ++t) {
      const char* erow = static_cast<const char*>(m.embed.data) + m.tok[t] * erb;
      if (m.embed.packed) {  // tied to the packed lm_head
        kernels::UnpackBf16Row(static_cast<const uint16_t*>(m.embed.data), H, m.tok[t], row.data());
        kernels::ConvertToF32(row.data(), DType::kBF16, H, &m.x[t * H]);
      } else if (kernels::IsQuantized(m.embed.dtype)) {  // GGUF
        kernels::DequantizeRow(kernels::QuantTypeOf(m.embed.dtype), erow, H, &m.x[t * H]);
      } else {
        kernels::ConvertToF32(erow, m.embed.dtype, H, &m.x[t * H]);
      }
      const float p = static_cast<float>(m.pos[t]);
      for (int64_t i = 0; i < half; ++i) {
        const float angle = p * m.inv_freq[i];  // float32, as HF computes it
        m.cos[t * half + i] = static_cast<float>(std::cos(static_cast<double>(angle))) * m.rope_factor;
        m.sin[t * half + i] = static_cast<float>(std::sin(static_cast<double>(angle))) * m.rope_factor;
      }
    }
  });

  const DType kvdt = cache.dtype();
  const size_t kvb = kernels::DTypeSize(kvdt);
  char* const cache_base = static_cast<char*>(cache.base());
  kernels::AttentionArgs aargs;
  aargs.num_heads = nh;
  aargs.num_kv_heads = nkv;
  aargs.head_dim = hd;
  aargs.scale = 1.0f / std::sqrt(static_cast<float>(hd));
  aargs.q = m.q.data();
  aargs.out = m.attn.data();
  aargs.sequences = seqs;
  aargs.kv.base = cache.base();
  aargs.kv.dtype = kvdt;
  aargs.kv.block_bytes = static_cast<int64_t>(cache.bytes_per_block());
  aargs.kv.block_size = bs;
  aargs.kv.head_stride = bs * hd;

  for (int64_t l = 0; l < c.num_layers; ++l) {
    const Layer& L = m.layers[l];
    const int64_t k_off = cache.LayerOffset(l, false), v_off = cache.LayerOffset(l, true);
    cp.ParallelFor(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t)
        kernels::RmsNorm(&m.x[t * H], L.input_norm.data(), DType::kF32, H, eps, &m.h[t * H]);
    });
    const MatMulOutput qkv[] = {{L.q, OrNull(L.q_bias), m.q.data(), qd},
                                {L.k, OrNull(L.k_bias), m.k.data(), kvd},
                                {L.v, OrNull(L.v_bias), m.v.data(), kvd}};
    cp.MatMul(m.h.data(), T, H, qkv);
    cp.ParallelFor(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        float* qt = &m.q[t * qd];
        float* kt = &m.k[t * kvd];
        if (c.qk_norm) {
          for (int64_t hh = 0; hh < nh; ++hh)
            kernels::RmsNorm(qt + hh * hd, L.q_norm.data(), DType::kF32, hd, eps, qt + hh * hd);
          for (int64_t hh = 0; hh < nkv; ++hh)
            kernels::RmsNorm(kt + hh * hd, L.k_norm.data(), DType::kF32, hd, eps, kt + hh * hd);
        }
        kernels::ApplyRope(qt, nh, hd, &m.cos[t * half], &m.sin[t * half]);
        kernels::ApplyRope(kt, nkv, hd, &m.cos[t * half], &m.sin[t * half]);
        const SequenceInput& in = batch[seq_of_row[t]];
        const int64_t p = m.pos[t];
        char* blk =
            cache_base + static_cast<int64_t>(in.block_table[p / bs]) * static_cast<int64_t>(cache.bytes_per_block());
        for (int64_t hh = 0; hh < nkv; ++hh) {
          const int64_t off = hh * bs * hd + (p % bs) * hd;
          kernels::ConvertFromF32(kt + hh * hd, hd, kvdt, blk + (k_off + off) * kvb);
          kernels::ConvertFromF32(&m.v[t * kvd + hh * hd], hd, kvdt, blk + (v_off + off) * kvb);
        }
      }
    });
    aargs.kv.k_offset = k_off;
    aargs.kv.v_offset = v_off;
    cp.PagedAttention(aargs);
    const MatMulOutput o[] = {{L.o, OrNull(L.o_bias), m.h.data(), H}};
    cp.MatMul(m.attn.data(), T, qd, o);
    cp.ParallelFor(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) {
        kernels::AddInPlace(&m.x[t * H], &m.h[t * H], H);
        kernels::RmsNorm(&m.x[t * H], L.post_norm.data(), DType::kF32, H, eps, &m.h[t * H]);
      }
    });
    const MatMulOutput gu[] = {{L.gate, nullptr, m.gate.data(), I}, {L.up, nullptr, m.up.data(), I}};
    cp.MatMul(m.h.data(), T, H, gu);
    cp.ParallelFor(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) kernels::SiluMul(&m.gate[t * I], &m.up[t * I], I, &m.gate[t * I]);
    });
    const MatMulOutput d[] = {{L.down, nullptr, m.h.data(), H}};
    cp.MatMul(m.gate.data(), T, I, d);
    cp.ParallelFor(T, [&](int64_t b, int64_t e) {
      for (int64_t t = b; t < e; ++t) kernels::AddInPlace(&m.x[t * H], &m.h[t * H], H);
    });
  }

  // Final norm of the rows that need logits, then the output projection.
  out->vocab_size = c.vocab_size;
  out->first_row.assign(batch.size(), 0);
  out->num_rows.assign(batch.size(), 0);
  std::vector<int64_t> rows;
  for (size_t s = 0; s < batch.size(); ++s) {
    out->first_row[s] = static_cast<int64_t>(rows.size());
    const int64_t n = static_cast<int64_t>(batch[s].tokens.size());
    if (batch[s].all_logits) {
      for (int64_t i = 0; i < n; ++i) rows.push_back(seqs[s].row0 + i);
    } else {
      rows.push_back(seqs[s].row0 + n - 1);
    }
    out->num_rows[s] = static_cast<int64_t>(rows.size()) - out->first_row[s];
  }
  m.hs.resize(R * H);
  cp.ParallelFor(R, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      kernels::RmsNorm(&m.x[rows[r] * H], m.final_norm.data(), DType::kF32, H, eps, &m.hs[r * H]);
  });
  out->logits.resize(static_cast<size_t>(R * c.vocab_size));
  const MatMulOutput lm[] = {{m.lm_head, nullptr, out->logits.data(), c.vocab_size}};
  cp.MatMul(m.hs.data(), R, H, lm);
  return Status::Ok();
}

}  // namespace kvferry::model
