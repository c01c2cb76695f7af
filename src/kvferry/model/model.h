#pragma once
// kvferry/model: Hugging Face model directories (config.json + single or sharded safetensors,
// weights used in place through mmap; bf16, f16 or f32) and the forward pass of
// Qwen2ForCausalLM, LlamaForCausalLM and Qwen3ForCausalLM over a paged KV cache. Also writes
// deterministic random-weight test models in the same layout (MakeTinyModel).
//
// Threading: Model::Forward uses the model's own compute team and must be called by one thread
// at a time (the engine's step loop). A KvCache is plain memory; the caller (the scheduler)
// decides which blocks a forward pass may write. Config and header parsing are pure functions.
// Ownership: Model owns its mappings and threads; KvCache owns its arena; spans are borrowed.

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"

namespace kvferry::model {

using kernels::DType;

enum class Architecture { kQwen2, kLlama, kQwen3 };
// "Qwen2ForCausalLM", "LlamaForCausalLM", "Qwen3ForCausalLM".
const char* ArchitectureName(Architecture arch);
// Accepts the HF class names above and the short names "qwen2", "llama", "qwen3".
StatusOr<Architecture> ParseArchitecture(std::string_view name);

// `rope_scaling` of config.json. kNone when absent or null.
struct RopeScaling {
  enum class Type { kNone, kLinear, kLlama3, kYarn };
  Type type = Type::kNone;
  double factor = 1.0;
  // llama3
  double low_freq_factor = 1.0;
  double high_freq_factor = 4.0;
  int64_t original_max_position_embeddings = 0;  // 0: max_position_embeddings
  // yarn
  double beta_fast = 32.0;
  double beta_slow = 1.0;
  double attention_factor = 0.0;  // 0: derived from factor (0.1 ln(factor) + 1)
  double mscale = 0.0;
  double mscale_all_dim = 0.0;
};

struct ModelConfig {
  Architecture arch = Architecture::kQwen2;
  int64_t hidden_size = 0;
  int64_t num_layers = 0;
  int64_t num_heads = 0;
  int64_t num_kv_heads = 0;  // defaults to num_heads
  int64_t head_dim = 0;      // defaults to hidden_size / num_heads
  int64_t intermediate_size = 0;
  int64_t vocab_size = 0;
  int64_t max_position_embeddings = 0;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // bias on q/k/v projections (always for Qwen2)
  bool o_bias = false;    // bias on o_proj (Llama/Qwen3 with attention_bias)
  bool qk_norm = false;   // per-head RMSNorm of q and k before RoPE (Qwen3)
  DType torch_dtype = DType::kBF16;
  int64_t bos_token_id = -1;
  std::vector<int64_t> eos_token_ids;
  // GGUF files (llama.cpp's rope_freqs.weight): inv_freq[i] is divided by factor i, after
  // rope_scaling. Empty: none.
  std::vector<float> rope_freq_factors;
};

// Parses config.json text. Unknown architectures and unsupported features (sliding window,
// dynamic/longrope RoPE scaling, non-SiLU activations) are errors that say what is unsupported.
StatusOr<ModelConfig> ParseModelConfig(std::string_view json);

// The inverse frequencies of RoPE (head_dim / 2 of them) after rope_scaling, and the factor
// that scales cos/sin (yarn's attention factor; 1 otherwise).
void RopeFrequencies(const ModelConfig& config, std::vector<float>* inv_freq, float* attn_factor);

struct KvCacheOptions {
  int64_t num_blocks = 0;  // required, > 0
  int64_t block_size = 16;
  DType dtype = DType::kBF16;
  // Fault every page in at creation (the serving engine does; see kv_cache.cc).
  bool prefault = false;
};

// The paged KV cache: one arena allocated up front. Block b occupies
// [base() + b * bytes_per_block(), + bytes_per_block()) and holds, for every layer, K then V,
// each [num_kv_heads][block_size][head_dim]: layout [block][layer][k/v][kv_head][slot][dim].
// So a request's blocks with contiguous ids form one contiguous byte range covering all
// layers: a few large transfer descriptors. Memory is zeroed, page aligned, and stays put
// for the cache's lifetime (register it with the transfer engine once).
class KvCache {
 public:
  static StatusOr<std::unique_ptr<KvCache>> Create(const ModelConfig& config, const KvCacheOptions& options);
  ~KvCache();
  KvCache(const KvCache&) = delete;
  KvCache& operator=(const KvCache&) = delete;

  void* base() const { return base_; }
  size_t size_bytes() const { return size_; }
  size_t bytes_per_block() const { return bytes_per_block_; }
  int64_t num_blocks() const { return num_blocks_; }
  int64_t block_size() const { return block_size_; }
  DType dtype() const { return dtype_; }
  int64_t num_layers() const { return num_layers_; }
  int64_t num_kv_heads() const { return num_kv_heads_; }
  int64_t head_dim() const { return head_dim_; }
  // Element offset of K (v = false) or V of `layer` from the start of a block.
  int64_t LayerOffset(int64_t layer, bool v) const;

 private:
  KvCache() = default;
  void* base_ = nullptr;
  size_t size_ = 0;
  size_t bytes_per_block_ = 0;
  int64_t num_blocks_ = 0, block_size_ = 0, num_layers_ = 0, num_kv_heads_ = 0, head_dim_ = 0;
  DType dtype_ = DType::kBF16;
};

// One sequence in a forward step: `tokens` are at positions start_pos, start_pos + 1, ...; the
// first start_pos positions are already in the cache. block_table[i] is the cache block of
// positions [i * block_size, (i + 1) * block_size); it must cover start_pos + tokens.size().
// A prefill chunk and a decode token are the same thing with different lengths, and one
// Forward call can mix them.
struct SequenceInput {
  std::span<const int32_t> tokens;
  int64_t start_pos = 0;
  std::span<const int32_t> block_table;
  bool all_logits = false;  // logits for every token, not only the last
};

struct ForwardOutput {
  int64_t vocab_size = 0;
  std::vector<float> logits;                                     // rows of vocab_size floats
  std::vector<int64_t> first_row;                                // per sequence: its first row in logits
  std::vector<int64_t> num_rows;                                 // per sequence: 1, or tokens.size() with all_logits
  std::span<const float> Row(size_t seq, int64_t i = -1) const;  // -1: the sequence's last row
};

struct LoadOptions {
  int num_threads = 0;  // compute threads, the caller included; 0 = all cores
  kernels::Isa max_isa = kernels::Isa::kAmxBf16;
  bool use_gemm_library = true;
  // Read the weight files into anonymous memory backed by 2 MiB pages (the default), rather
  // than streaming them from the files' mappings: decode reads every weight once per token, and
  // the page cache holds a just-written file in scattered 4 KiB pages. The environment variable
  // KVFERRY_WEIGHTS=mmap turns it off.
  bool weights_in_memory = true;
  // When mapped: fault the weights in at load (with a progress line on a terminal when it takes
  // a while), rather than during the first forward pass.
  bool prefault = true;
  bool show_progress = true;
};

class Model {
 public:
  // Loads `dir`: config.json, then model.safetensors or model.safetensors.index.json + shards;
  // or, when `dir` is a GGUF file, the config and weights from it (gguf_model.cc).
  // Errors name the file and tensor (missing tensor, wrong shape or dtype, truncated file).
  static StatusOr<std::unique_ptr<Model>> Load(const std::string& dir, const LoadOptions& options);
  ~Model();

  const ModelConfig& config() const;
  // dtype of the large matrices (the embedding's).
  DType weight_dtype() const;
  // Bytes of weights a decode step reads once per step: every layer matrix plus the output
  // projection (the embedding when tied); the embedding rows looked up are not counted.
  uint64_t decode_weight_bytes() const;
  // "Qwen2ForCausalLM 24 layers bf16, isa=... threads=2 gemm=..."
  std::string Describe() const;
  // Identifies the weights: "Qwen2ForCausalLM q8_0 24x896 #<16 hex digits>", the hash over every
  // matrix's dtype and shape and 64 bytes at its start, middle and end, and the final norm. Two
  // loads of one file (safetensors directory or GGUF) give the same string; another model,
  // another quantization of it or other random weights of the same shape give another. The
  // connector compares the prefiller's with the decoder's.
  std::string Fingerprint() const;
  // "988 MB read into memory, 986 MB in 2 MiB pages" or "988 MB mapped from the files".
  std::string DescribeWeightMemory() const;
  // The compute team Forward runs on (its Profile shows where the time went).
  kernels::Compute& compute();

  StatusOr<std::unique_ptr<KvCache>> CreateKvCache(const KvCacheOptions& options) const;

  // Runs one step over `batch` and writes the new tokens' K/V into `cache`. Invalid input
  // (token id out of range, short block table, block id out of range, cache of another shape)
  // is InvalidArgument and leaves the cache unchanged.
  Status Forward(std::span<const SequenceInput> batch, KvCache& cache, ForwardOutput* out);

 private:
  struct Impl;
  explicit Model(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

// --- Test models ---------------------------------------------------------------------------

// Writes tokenizer.json and tokenizer_config.json into a model directory. The tokenizer
// component provides the real one; until then MakeTinyModel uses WritePlaceholderTokenizer.
using TokenizerWriter = std::function<Status(const std::string& dir, const ModelConfig& config)>;

// A minimal but valid byte-level BPE tokenizer: the 256 byte tokens, a few merges, and the
// special tokens <|endoftext|>, <|im_start|>, <|im_end|> (ids 151643-151645 when the vocab is
// that large, else right after the merges), plus a tokenizer_config.json with a ChatML template.
Status WritePlaceholderTokenizer(const std::string& dir, const ModelConfig& config);
// Ids of the special tokens the placeholder tokenizer assigns for `vocab_size`.
struct SpecialTokenIds {
  int64_t endoftext, im_start, im_end;
};
SpecialTokenIds PlaceholderSpecialTokens(int64_t vocab_size);

struct MakeTinyOptions {
  Architecture arch = Architecture::kQwen2;
  // "" or "qwen2.5-0.5b" (the exact shape of Qwen2.5-0.5B-Instruct; overrides the shape).
  std::string like;
  uint64_t seed = 0;
  int64_t hidden_size = 64;
  int64_t num_layers = 2;
  int64_t num_heads = 4;
  int64_t num_kv_heads = 2;
  int64_t head_dim = 0;  // 0: hidden_size / num_heads
  int64_t intermediate_size = 128;
  int64_t vocab_size = 512;
  int64_t max_position_embeddings = 4096;
  double rope_theta = 0;  // 0: the architecture's usual (1e6 Qwen, 5e5 Llama)
  // -1: the architecture's usual (Qwen2 tied, Llama/Qwen3 untied).
  int tie_word_embeddings = -1;
  // "", "none", "linear", "llama3", "yarn". "": llama3 for Llama, none otherwise.
  std::string rope_scaling;
  DType dtype = DType::kBF16;
  // Multiplies the logits (the final norm's gain): sharper greedy choices, for comparisons with
  // other engines that skip near-ties. Default 1 (logit std ~2).
  double logit_scale = 1.0;
  bool show_progress = true;
  TokenizerWriter tokenizer_writer;  // null: WritePlaceholderTokenizer
};

// Writes config.json, generation_config.json, model.safetensors and the tokenizer files. The
// weights are random but deterministic in (seed, tensor name), scaled so that activations stay
// O(1), attention is spread over the context and logits are spread out (std ~2): greedy output
// depends on the whole prompt, which makes the model a sharp test of the forward pass.
Status MakeTinyModel(const std::string& dir, const MakeTinyOptions& options);

// --- GGUF files ----------------------------------------------------------------------------

// Weight types of a GGUF file written by ConvertToGguf. Matrices take the type; norms, biases
// and rope_freqs stay f32. kQ4_0 stores the output projection as Q6_K; kQ4_K_M mixes Q4_K with
// Q6_K for the output projection and for attn_v / ffn_down of llama-quantize's "more bits"
// layers. K-quant matrices whose rows are not a multiple of 256 fall back as llama-quantize's
// do: Q4_K to Q5_0, Q6_K to Q8_0.
enum class GgufFileType { kF32, kF16, kBF16, kQ8_0, kQ4_0, kQ4_K_M };
const char* GgufFileTypeName(GgufFileType type);  // "f32", ..., "q4_k_m"
StatusOr<GgufFileType> ParseGgufFileType(std::string_view name);

struct GgufConvertOptions {
  GgufFileType type = GgufFileType::kF32;
};

// Converts the HF model directory `dir` (config.json, safetensors, tokenizer.json and
// tokenizer_config.json with a byte-level BPE tokenizer) into the GGUF file `path` with
// llama.cpp's tensor names and conventions: the Q/K row permutation of llama, tied output
// weights (no output.weight), llama3 RoPE scaling as rope_freqs.weight, and the tokenizer and
// chat template as `tokenizer.ggml.*` / `tokenizer.chat_template` metadata.
Status ConvertToGguf(const std::string& dir, const std::string& path, const GgufConvertOptions& options);

// Whether `path` names a GGUF file (a regular file starting with the GGUF magic): Model::Load
// and the tokenizer take such a path where a model directory goes.
bool IsGgufFile(const std::string& path);
// The config of the GGUF model file at `path`, from its metadata, as Model::Load reads it.
StatusOr<ModelConfig> ReadGgufConfig(const std::string& path);

}  // namespace kvferry::model
