// Compute: the thread team and the multi-threaded kernels (MatMul, PagedAttention, bandwidth).

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <thread>
#include <vector>

#include "kvferry/kernels/gemm_library.h"
#include "kvferry/kernels/kernel_table.h"
#include "kvferry/kernels/kernels.h"
#include "kvferry/kernels/quant.h"
#include "kvferry/kernels/thread_team.h"

namespace kvferry::kernels {
namespace {

// Up to this many x rows a MatMul streams the weights (GEMV); above it, GEMM.
constexpr int64_t kGemvMaxM = 16;
// Weight rows per GEMV block: 4 x-row groups reuse the block from L1/L2.
constexpr int64_t kGemvBlock = 64;
// Weight rows per GEMM tile (converted to f32 in per-thread scratch when not f32).
constexpr int64_t kGemmTile = 256;
// Query tokens per attention work item (portable kernels).
constexpr int64_t kQueryTile = 16;
// Bytes of packed x one pass of the AVX-512 GEMM keeps in L2.
constexpr int64_t kGemmPassBytes = 512 << 10;
// Bytes of bf16 weights per tile of the quantized prefill GEMM (dequantized per tile; about
// the L2 of a core).
constexpr int64_t kQuantTileBytes = 1 << 20;
// (query token, head) rows per AVX-512 attention tile; the AVX2 tile takes half as many.
constexpr int64_t kTileRows = 128;
// AVX2 packed prefill: parts per thread, fewest blocks (16 weight rows each) and x rows in a
// part, and the kernel's register tile height (packed_avx2.cc), at whose multiples rows are cut.
constexpr int64_t kPrefillPartsPerThread = 16;
constexpr int64_t kPrefillGroupBlocks = 4;
constexpr int64_t kPrefillSliceRows = 48;
constexpr int64_t kPrefillTileRows = 6;

}  // namespace

struct Compute::Impl {
  Isa isa = Isa::kScalar;
  const KernelTable* table = nullptr;
  std::unique_ptr<GemmLibrary> lib;
  bool bf16_gemm = false;  // activations to bf16 + oneDNN bf16 matmul for bf16 weights
  std::unique_ptr<ThreadTeam> team;
  std::vector<std::vector<float>> scratch;  // per thread
  std::vector<uint16_t> x_bf16;             // shared: x converted for the bf16 GEMM
  std::vector<uint32_t> x_packed;           // shared: x as PackedX for packed weights
  std::vector<float> x_rounded;             // shared: x rounded like the int8 kernel (QuantGemm)
  std::vector<float> xt;                    // shared: x packed for the AVX-512 GEMM
  Compute::Profile prof;

  int size() const { return team->size(); }

  float* Scratch(int t, size_t n) {
    if (scratch[t].size() < n) scratch[t].resize(n);
    return scratch[t].data();
  }

  void ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
    if (n <= 0) return;
    if (n == 1 || size() == 1) {  // not worth waking the team (decode steps)
      fn(0, n);
      return;
    }
    // A few parts per thread, handed out dynamically (a thread that lost its core holds up
    // one part, not half the work).
    const int64_t parts = std::min<int64_t>(n, 4 * size());
    team->RunParts(parts, [&](int, int64_t p) {
      const int64_t b = n * p / parts, e = n * (p + 1) / parts;
      if (b < e) fn(b, e);
    });
  }

  void GemvPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs);
  void PackedPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs);
  void GemmPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs);
  void OwnGemm(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs);
  bool QuantGemm(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs);
  void AttentionItem(int t, const AttentionArgs& a, const AttentionSequence& seq, int64_t g, int64_t i0, int64_t i1);
};

namespace {

void AddBias(const float* bias, int64_t m, int64_t n0, int64_t n1, float* y, int64_t ldy) {
  if (bias == nullptr) return;
  for (int64_t r = 0; r < m; ++r)
    for (int64_t j = n0; j < n1; ++j) y[r * ldy + j] += bias[j];
}

int64_t Ldy(const MatMulOutput& o) {
  return o.ldy != 0 ? o.ldy : o.w.rows;
}

// Rows [n0, n1) of output `out`: one tile of a thread's share of a fused MatMul.
struct RowTile {
  size_t out;
  int64_t n0, n1;
};

// Splits the concatenated output rows into nt equal shares (in units of `unit` rows), each cut
// into near-equal tiles of at most max_rows rows (a multiple of unit) that never cross outputs.
std::vector<std::vector<RowTile>> SplitRows(std::span<const MatMulOutput> outs, int nt, int64_t unit,
                                            int64_t max_rows) {
  int64_t total = 0;
  for (const auto& o : outs) total += o.w.rows;
  const int64_t units = (total + unit - 1) / unit;
  std::vector<std::vector<RowTile>> work(nt);
  for (int t = 0; t < nt; ++t) {
    const int64_t b = std::min(total, units * t / nt * unit), e = std::min(total, units * (t + 1) / nt * unit);
    int64_t base = 0;
    for (size_t i = 0; i < outs.size() && b < e; ++i) {
      const int64_t hi = std::min(e, base + outs[i].w.rows);
      for (int64_t r = std::max(b, base); r < hi;) {
        const int64_t left = hi - r, parts = (left + max_rows - 1) / max_rows;
        const int64_t len = std::min(left, ((left + parts - 1) / parts + unit - 1) / unit * unit);
        work[t].push_back({i, r - base, r - base + len});
        r += len;
      }
      base += outs[i].w.rows;
    }
  }
  return work;
}

// Maps a global row index over the concatenated outputs to (output, row).
struct RowCursor {
  std::span<const MatMulOutput> outs;
  void Split(int64_t g, size_t* o, int64_t* row) const {
    size_t i = 0;
    while (i + 1 < outs.size() && g >= outs[i].w.rows) g -= outs[i++].w.rows;
    *o = i;
    *row = g;
  }
};

}  // namespace

void Compute::Impl::GemvPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs) {
  int64_t total = 0;
  bool all_bf16 = true;
  for (const auto& o : outs) {
    total += o.w.rows;
    all_bf16 = all_bf16 && o.w.dtype == DType::kBF16;
  }
  const int64_t k = outs[0].w.cols;
  // AVX512_BF16: x rounded to bf16 once, then vdpbf16ps against the weights as stored.
  const bool bf16_dot = all_bf16 && isa >= Isa::kAvx512Bf16;
  if (bf16_dot) {
    x_bf16.resize(static_cast<size_t>(m * k));
    for (int64_t r = 0; r < m; ++r) table->from_f32(x + r * ldx, k, DType::kBF16, &x_bf16[r * k]);
  }
  const RowCursor cursor{outs};
  // Parts of whole 4-row units (the kernels' row blocks), about 8 per thread, claimed
  // dynamically by the team.
  const int64_t units = (total + 3) / 4;
  const int64_t parts = std::min<int64_t>(units, 8 * size());
  team->RunParts(parts, [&](int, int64_t p) {
    int64_t b = units * p / parts * 4, e = units * (p + 1) / parts * 4;
    if (e > total) e = total;
    while (b < e) {
      size_t oi;
      int64_t row;
      cursor.Split(b, &oi, &row);
      const MatMulOutput& o = outs[oi];
      const int64_t rend = std::min(o.w.rows, row + (e - b));
      const int64_t ldy = Ldy(o);
      for (int64_t jb = row; jb < rend; jb += kGemvBlock) {
        const int64_t je = std::min(rend, jb + kGemvBlock);
        if (bf16_dot) {
          avx512bf16::GemvBf16(x_bf16.data(), m, k, static_cast<const uint16_t*>(o.w.data), k, jb, je, o.y, ldy);
          continue;
        }
        for (int64_t r0 = 0; r0 < m; r0 += kGemvMaxRows) {
          table->gemv(x + r0 * ldx, std::min(kGemvMaxRows, m - r0), ldx, o.w.data, o.w.dtype, o.w.cols, jb, je,
                      o.y + r0 * ldy, ldy);
        }
      }
      AddBias(o.bias, m, row, rend, o.y, ldy);
      b += rend - row;
    }
  });
}

// Packed bf16 weights: at AVX512-BF16, x to bf16 pairs once (PackedX); at AVX2, x as it is.
// Then parts of whole blocks of 16 weight rows over the concatenated outputs, claimed
// dynamically: about 8 a thread for decode, 4 of two blocks each for the AVX512-BF16 prefill,
// and for the AVX2 prefill ~16 a thread in rows x blocks (below). One kernel per level serves
// decode and prefill: m only picks the tile.
void Compute::Impl::PackedPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs) {
  const int64_t k = outs[0].w.cols, pairs = k / 2;
  // AVX2 reads x as it is (f32, broadcast from its rows); AVX512-BF16 wants bf16 pairs.
  const bool bf16_pairs = isa != Isa::kAvx2;
  const int64_t g = avx512bf16::PackedGroupRows(m);
  if (bf16_pairs) {
    x_bf16.resize(static_cast<size_t>(m * k));
    x_packed.resize(static_cast<size_t>(m * pairs));
  }
  auto pack = [&](int64_t g0, int64_t g1) {
    for (int64_t gi = g0; gi < g1; ++gi) {
      const int64_t r0 = gi * g, rows = std::min(g, m - r0);
      uint32_t* dst = &x_packed[r0 * pairs];
      for (int64_t r = 0; r < rows; ++r) {
        uint16_t* row = &x_bf16[(r0 + r) * k];
        table->from_f32(x + (r0 + r) * ldx, k, DType::kBF16, row);
        for (int64_t p = 0; p < pairs; ++p)
          dst[p * rows + r] = static_cast<uint32_t>(row[2 * p]) | static_cast<uint32_t>(row[2 * p + 1]) << 16;
      }
    }
  };
  if (bf16_pairs) {
    const int64_t groups = (m + g - 1) / g;
    if (m <= kGemvMaxM) {
      pack(0, groups);  // one group: not worth waking the team
    } else {
      ParallelFor(groups, pack);
    }
  }
  int64_t total = 0;  // blocks
  for (const auto& o : outs) total += o.w.rows / kPackRows;
  // Blocks [b, e) of the concatenated outputs for rows [r0, r1).
  auto run = [&](int64_t b, int64_t e, int64_t r0, int64_t r1) {
    int64_t first = 0;  // block index of the current output's block 0 in the concatenation
    for (const auto& o : outs) {
      const int64_t nb = o.w.rows / kPackRows;
      const int64_t lb = std::max(b, first) - first, le = std::min(e, first + nb) - first;
      first += nb;
      if (lb >= le) continue;
      const int64_t ldy = Ldy(o);
      const auto* w = static_cast<const uint16_t*>(o.w.data);
      float* y = o.y + r0 * ldy;
      if (bf16_pairs) {
        avx512bf16::MatMulPacked(x_packed.data(), m, w, k, lb, le, o.y, ldy);
      } else {
        avx2::MatMulPacked(x + r0 * ldx, r1 - r0, ldx, w, k, lb, le, y, ldy);
      }
      AddBias(o.bias, r1 - r0, lb * kPackRows, le * kPackRows, y, ldy);
    }
  };
  if (!bf16_pairs && m > avx2::kDecodeRowsMax) {
    // AVX2 prefill: near-equal parts in rows x blocks. Cut by blocks only (as decode is), the
    // attention and MLP-down shapes of a small model (56-72 blocks) made 3-5 two-block units a
    // part, and the thread that finished one unit later held the other waiting: 165-171 GFLOP/s
    // against 183-187 for gate/up (0.5B shapes, 512 rows, Zen 3 VM); in slices of rows too,
    // 181-193 for all four. Rows are cut at multiples of the kernel's register tile.
    const int64_t want = kPrefillPartsPerThread * size();
    const int64_t groups = std::clamp<int64_t>(total / kPrefillGroupBlocks, 1, want);
    const int64_t slices =
        std::clamp<int64_t>((want + groups - 1) / groups, 1, std::max<int64_t>(1, m / kPrefillSliceRows));
    auto cut = [&](int64_t s) { return s == slices ? m : m * s / slices / kPrefillTileRows * kPrefillTileRows; };
    team->RunParts(groups * slices, [&](int, int64_t p) {
      const int64_t s = p / groups, gi = p % groups;
      run(total * gi / groups, total * (gi + 1) / groups, cut(s), cut(s + 1));
    });
    return;
  }
  const int64_t unit = m <= kGemvMaxM ? 1 : 2;
  const int64_t units = (total + unit - 1) / unit;
  const int64_t parts = std::min<int64_t>(units, (m <= kGemvMaxM ? 8 : 4) * size());
  team->RunParts(parts, [&](int, int64_t p) {
    run(units * p / parts * unit, std::min(total, units * (p + 1) / parts * unit), 0, m);
  });
}

void Compute::Impl::GemmPath(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs) {
  const int nt = size();
  bool all_bf16 = true;
  for (const auto& o : outs) all_bf16 = all_bf16 && o.w.dtype == DType::kBF16;
  const int64_t k = outs[0].w.cols;

  if (lib != nullptr && bf16_gemm && all_bf16) {
    // Native bf16 (AVX512-BF16 / AMX): x to bf16 once, weights used in place.
    x_bf16.resize(static_cast<size_t>(m * k));
    ParallelFor(m, [&](int64_t b, int64_t e) {
      for (int64_t r = b; r < e; ++r) table->from_f32(x + r * ldx, k, DType::kBF16, &x_bf16[r * k]);
    });
    // Each output in tiles of equal row counts (one oneDNN primitive shape per output, cached
    // per thread), two per thread, handed out dynamically.
    std::vector<RowTile> tiles;
    for (size_t oi = 0; oi < outs.size(); ++oi) {
      const int64_t rows = outs[oi].w.rows;
      const int64_t per = std::max<int64_t>(16, ((rows + 2 * nt - 1) / (2 * nt) + 15) / 16 * 16);
      for (int64_t n0 = 0; n0 < rows; n0 += per) tiles.push_back({oi, n0, std::min(rows, n0 + per)});
    }
    std::atomic<bool> failed{false};
    team->RunParts(static_cast<int64_t>(tiles.size()), [&](int t, int64_t i) {
      const auto& [oi, n0, n1] = tiles[i];
      const MatMulOutput& o = outs[oi];
      const uint16_t* w = static_cast<const uint16_t*>(o.w.data) + n0 * k;
      if (!lib->MatMulBf16(t, x_bf16.data(), m, k, w, n1 - n0, k, o.y + n0, Ldy(o))) {
        failed = true;
        return;
      }
      AddBias(o.bias, m, n0, n1, o.y, Ldy(o));
    });
    if (!failed) return;
    // Fall through: recompute everything with the f32 path.
  }

  // Without oneDNN (sanitizer builds, use_gemm_library = false), the AVX-512 GEMM. With it,
  // oneDNN's f32 kernel on widened tiles measured 20-40% faster here than ours, so it stays.
  if (lib == nullptr && isa >= Isa::kAvx512) {
    OwnGemm(x, m, ldx, outs);
    return;
  }

  // f32 GEMM on weight tiles of up to kGemmTile rows, converted to f32.
  std::vector<RowTile> tiles;
  for (const auto& share : SplitRows(outs, 2 * nt, 16, kGemmTile))
    tiles.insert(tiles.end(), share.begin(), share.end());
  team->RunParts(static_cast<int64_t>(tiles.size()), [&](int t, int64_t i) {
    const auto& [oi, n0, n1] = tiles[i];
    const MatMulOutput& o = outs[oi];
    const int64_t esize = static_cast<int64_t>(DTypeSize(o.w.dtype));
    const char* wsrc = static_cast<const char*>(o.w.data) + n0 * k * esize;
    float* buf = Scratch(t, static_cast<size_t>(kGemmTile * k + 16 * k));
    const float* wf;
    if (o.w.dtype == DType::kF32) {
      wf = reinterpret_cast<const float*>(wsrc);
    } else {
      table->to_f32(wsrc, o.w.dtype, (n1 - n0) * k, buf);
      wf = buf;
    }
    const int64_t ldy = Ldy(o);
    if (lib == nullptr || !lib->MatMulF32(t, x, m, ldx, wf, n1 - n0, k, o.y + n0, ldy))
      table->gemm_f32(x, m, ldx, wf, k, n1 - n0, o.y + n0, ldy, buf + kGemmTile * k);
    AddBias(o.bias, m, n0, n1, o.y, ldy);
  });
}

// Prefill with quantized weights: x rounded once as the int8 kernels round it (back in f32),
// each tile of weight rows dequantized to f32 in the thread's scratch (from L2 the GEMM then
// reads it m / 16 times) and multiplied by oneDNN's f32 GEMM. Each weight is expanded once per
// call, a small cost next to the m * k multiply-adds of its row. Returns false (nothing is left half done that matters:
// the caller recomputes every output) when the library refuses.
bool Compute::Impl::QuantGemm(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs) {
  const int nt = size();
  const int64_t k = outs[0].w.cols;
  // Activations rounded the way the int8 decode kernel rounds them, and weights dequantized to
  // exactly what it multiplies: a prompt token's result is then the one a decode step would
  // give (up to summation order), so disaggregated output equals colocated output.
  x_rounded.resize(static_cast<size_t>(m * k));
  std::atomic<bool> failed{false};
  ParallelFor(m, [&](int64_t b, int64_t e) {
    for (int64_t r = b; r < e; ++r)
      if (!RoundActivationsInt8At(isa, x + r * ldx, k, &x_rounded[r * k])) failed = true;
  });
  if (failed) return false;
  // Tiles of at most kQuantTileBytes (dequantized, then read by the GEMM while still in L2),
  // at least two per thread, handed out dynamically.
  const int64_t max_rows = std::max<int64_t>(16, kQuantTileBytes / (4 * k) / 16 * 16);
  std::vector<RowTile> tiles;
  for (size_t oi = 0; oi < outs.size(); ++oi) {
    const int64_t rows = outs[oi].w.rows;
    const int64_t parts = std::max<int64_t>((rows + max_rows - 1) / max_rows, std::min<int64_t>(2 * nt, rows / 16));
    const int64_t per = std::max<int64_t>(16, ((rows + parts - 1) / parts + 15) / 16 * 16);
    for (int64_t n0 = 0; n0 < rows; n0 += per) tiles.push_back({oi, n0, std::min(rows, n0 + per)});
  }
  team->RunParts(static_cast<int64_t>(tiles.size()), [&](int t, int64_t i) {
    if (failed) return;
    const auto& [oi, n0, n1] = tiles[i];
    const MatMulOutput& o = outs[oi];
    const int64_t rb = DTypeRowBytes(o.w.dtype, k);
    float* wt = Scratch(t, static_cast<size_t>((n1 - n0) * k));
    DequantizeRowsF32At(isa, QuantTypeOf(o.w.dtype), static_cast<const char*>(o.w.data) + n0 * rb, n1 - n0, k, wt);
    if (!lib->MatMulF32(t, x_rounded.data(), m, k, wt, n1 - n0, k, o.y + n0, Ldy(o))) {
      failed = true;
      return;
    }
    AddBias(o.bias, m, n0, n1, o.y, Ldy(o));
  });
  return !failed;
}

void Compute::Impl::OwnGemm(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outs) {
  const int nt = size();
  const int64_t k = outs[0].w.cols;
  constexpr int64_t P = avx512::kGemmPanelRows, B = avx512::kGemmTokens;
  const int64_t nblk = (m + B - 1) / B;
  xt.resize(static_cast<size_t>(nblk * k * B));
  ParallelFor(nblk, [&](int64_t b, int64_t e) {
    for (int64_t i = b; i < e; ++i) avx512::GemmPackX(x, m, ldx, k, i * B, &xt[i * k * B]);
  });
  // Whole panels, in groups of consecutive panels (about 4 groups per thread) handed out
  // dynamically.
  const std::vector<RowTile> panels = SplitRows(outs, 1, P, P)[0];
  const int64_t group = std::max<int64_t>(1, (static_cast<int64_t>(panels.size()) + 4 * nt - 1) / (4 * nt));
  const int64_t ngroups = (static_cast<int64_t>(panels.size()) + group - 1) / group;
  // Token blocks per pass: their packed x (k * kGemmTokens floats each) stays in L2 while the
  // thread's panels go by; each panel slice, widened once per pass, sits in L1 and meets every
  // block of the pass, and the panel's partial tiles stay in L1 too.
  constexpr int64_t Kc = avx512::kGemmKc;
  const int64_t mc = std::clamp<int64_t>((kGemmPassBytes / 4) / (k * B), 1, nblk);
  team->RunParts(ngroups, [&](int t, int64_t gi) {
    const std::span<const RowTile> mine(panels.data() + gi * group,
                                        std::min<size_t>(group, panels.size() - gi * group));
    const size_t tile = static_cast<size_t>(P * B);
    float* wp = Scratch(t, static_cast<size_t>(P * Kc) + tile * static_cast<size_t>(mc));
    float* ct = wp + P * Kc;  // [block in pass] tiles of the current panel
    for (int64_t b0 = 0; b0 < nblk; b0 += mc) {
      const int64_t b1 = std::min(nblk, b0 + mc);
      for (const auto& [oi, n0, n1] : mine) {
        const MatMulOutput& o = outs[oi];
        const int64_t rows = n1 - n0;
        const int64_t esize = static_cast<int64_t>(DTypeSize(o.w.dtype));
        const char* w = static_cast<const char*>(o.w.data) + n0 * k * esize;
        for (int64_t k0 = 0; k0 < k; k0 += Kc) {
          const int64_t kc = std::min(Kc, k - k0);
          avx512::GemmWidenPanel(w, o.w.dtype, k, rows, k0, kc, wp);
          for (int64_t bi = b0; bi < b1; ++bi)
            avx512::GemmMicro(&xt[(bi * k + k0) * B], kc, wp, k0 == 0, ct + (bi - b0) * tile);
        }
        const int64_t ldy = Ldy(o);
        for (int64_t bi = b0; bi < b1; ++bi)
          avx512::GemmStore(ct + (bi - b0) * tile, rows, std::min(B, m - bi * B), o.y + bi * B * ldy + n0, ldy);
      }
    }
    for (const auto& [oi, n0, n1] : mine) AddBias(outs[oi].bias, m, n0, n1, outs[oi].y, Ldy(outs[oi]));
  });
}

void Compute::Impl::AttentionItem(int t, const AttentionArgs& a, const AttentionSequence& seq, int64_t g, int64_t i0,
                                  int64_t i1) {
  const int64_t hd = a.head_dim;
  const int64_t group = a.num_heads / a.num_kv_heads;
  const int64_t ldq = a.num_heads * hd;
  const int64_t rows = (i1 - i0) * group;
  const int64_t c = kKeyChunk;
  // Scratch: q [rows][hd], out [rows][hd], s [rows][c], kt [hd][c], v [c][hd], mx, sum, tmp.
  float* q = Scratch(t, static_cast<size_t>(2 * rows * hd + rows * c + 2 * hd * c + 2 * rows + hd));
  float* out = q + rows * hd;
  float* s = out + rows * hd;
  float* kt = s + rows * c;
  float* v = kt + hd * c;
  float* mx = v + c * hd;
  float* sum = mx + rows;
  float* tmp = sum + rows;
  for (int64_t i = i0; i < i1; ++i)
    std::memcpy(q + (i - i0) * group * hd, a.q + (seq.row0 + i) * ldq + g * group * hd, sizeof(float) * group * hd);
  std::memset(out, 0, sizeof(float) * rows * hd);
  for (int64_t r = 0; r < rows; ++r) {
    mx[r] = -std::numeric_limits<float>::infinity();
    sum[r] = 0;
  }
  const int64_t nkeys = seq.start_pos + i1;
  const int64_t esize = static_cast<int64_t>(DTypeSize(a.kv.dtype));
  const char* base = static_cast<const char*>(a.kv.base);
  for (int64_t c0 = 0; c0 < nkeys; c0 += c) {
    const int64_t nc = std::min(c, nkeys - c0);
    for (int64_t l = 0; l < c; ++l) {
      if (l < nc) {
        const int64_t p = c0 + l;
        const char* blk = base + static_cast<int64_t>(seq.block_table[p / a.kv.block_size]) * a.kv.block_bytes;
        const int64_t slot = p % a.kv.block_size;
        const int64_t off = g * a.kv.head_stride + slot * hd;
        table->to_f32(blk + (a.kv.k_offset + off) * esize, a.kv.dtype, hd, tmp);
        for (int64_t d = 0; d < hd; ++d) kt[d * c + l] = tmp[d];
        table->to_f32(blk + (a.kv.v_offset + off) * esize, a.kv.dtype, hd, v + l * hd);
      } else {
        for (int64_t d = 0; d < hd; ++d) kt[d * c + l] = 0;
        std::memset(v + l * hd, 0, sizeof(float) * hd);
      }
    }
    table->attn_scores(q, rows, hd, hd, kt, a.scale, s);
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t pos = seq.start_pos + i0 + r / group;  // the query's position
      float* sr = s + r * c;
      float m_new = mx[r];
      for (int64_t l = 0; l < c; ++l) {
        if (c0 + l > pos || l >= nc) sr[l] = -std::numeric_limits<float>::infinity();
        m_new = std::max(m_new, sr[l]);
      }
      for (int64_t l = 0; l < c; ++l) sr[l] -= m_new;
      if (m_new != mx[r]) {
        const float alpha = std::exp(mx[r] - m_new);
        sum[r] *= alpha;
        table->scale_add(out + r * hd, alpha, out + r * hd, 0.0f, hd);
        mx[r] = m_new;
      }
    }
    table->exp_inplace(s, rows * c);
    for (int64_t r = 0; r < rows; ++r) {
      float ps = 0;
      for (int64_t l = 0; l < c; ++l) ps += s[r * c + l];
      sum[r] += ps;
    }
    table->attn_pv(s, rows, v, hd, out);
  }
  for (int64_t r = 0; r < rows; ++r) {
    const int64_t i = i0 + r / group, h = g * group + r % group;
    float* dst = a.out + (seq.row0 + i) * ldq + h * hd;
    const float inv = 1.0f / sum[r];
    for (int64_t d = 0; d < hd; ++d) dst[d] = out[r * hd + d] * inv;
  }
}

Compute::Compute(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Compute::~Compute() = default;

StatusOr<std::unique_ptr<Compute>> Compute::Create(const ComputeOptions& options) {
  int n = options.num_threads;
  if (n < 0 || n > 1024) return InvalidArgumentError("num_threads must be in [0, 1024]");
  if (n == 0) n = std::max(1u, std::thread::hardware_concurrency());
  auto impl = std::make_unique<Impl>();
  KVF_ASSIGN_OR_RETURN(const Isa selected, SelectedIsa());
  impl->isa = std::min(selected, options.max_isa);
  impl->table = &TableFor(impl->isa);
  if (options.use_gemm_library) impl->lib = GemmLibrary::Create(n);
  impl->bf16_gemm = impl->isa >= Isa::kAvx512Bf16 || options.force_bf16_gemm;
  impl->team = std::make_unique<ThreadTeam>(n);
  impl->scratch.resize(n);
  return std::unique_ptr<Compute>(new Compute(std::move(impl)));
}

int Compute::num_threads() const {
  return impl_->size();
}
Isa Compute::isa() const {
  return impl_->isa;
}
bool Compute::PacksBf16() const {
  return impl_->isa == Isa::kAvx512Bf16 || impl_->isa == Isa::kAvx2;
}

bool CanPackBf16(const Matrix& w) {
  return w.dtype == DType::kBF16 && w.rows > 0 && w.rows % kPackRows == 0 && w.cols > 0 && w.cols % 16 == 0;
}

void PackBf16Blocks(uint16_t* w, int64_t cols, int64_t b0, int64_t b1) {
  const int64_t pairs = cols / 2;
  std::vector<uint32_t> rows(static_cast<size_t>(kPackRows * pairs));
  for (int64_t b = b0; b < b1; ++b) {
    uint16_t* block = w + b * kPackRows * cols;
    std::memcpy(rows.data(), block, sizeof(uint16_t) * kPackRows * cols);  // [16][pairs] pairs
    char* out = reinterpret_cast<char*>(block);
    for (int64_t p = 0; p < pairs; ++p)
      for (int64_t r = 0; r < kPackRows; ++r) std::memcpy(out + (p * kPackRows + r) * 4, &rows[r * pairs + p], 4);
  }
}

void UnpackBf16Row(const uint16_t* w, int64_t cols, int64_t row, uint16_t* out) {
  const uint16_t* block = w + row / kPackRows * kPackRows * cols;
  const int64_t r = row % kPackRows;
  for (int64_t p = 0; p < cols / 2; ++p) {
    out[2 * p] = block[(p * kPackRows + r) * 2];
    out[2 * p + 1] = block[(p * kPackRows + r) * 2 + 1];
  }
}

std::string Compute::Describe() const {
  std::string s = std::string("isa=") + IsaName(impl_->isa) + " threads=" + std::to_string(impl_->size()) + " gemm=";
  if (impl_->lib == nullptr) {
    s += impl_->isa >= Isa::kAvx512 ? "built-in AVX-512 (bf16/f16 weights widened per slice)" : "built-in f32";
  } else if (impl_->bf16_gemm) {
    s += "oneDNN bf16";
  } else {
    s += "oneDNN f32 (bf16/f16 weights widened per tile)";
  }
  s += " gemv=";
  if (impl_->isa >= Isa::kAvx512Bf16) {
    s += "AVX512-BF16 vdpbf16ps for bf16 weights (activations rounded to bf16)";
  } else if (impl_->isa >= Isa::kAvx512) {
    s += "AVX-512 (bf16/f16 widened in registers)";
  } else if (impl_->isa >= Isa::kAvx2) {
    s += "AVX2 (bf16/f16 widened in registers)";
  } else {
    s += "scalar";
  }
  if (PacksBf16()) {
    s += std::string("; bf16 weights packed at load: ") +
         (impl_->isa == Isa::kAvx2 ? "AVX2 FMA register tiles" : "vdpbf16ps GEMV and GEMM") + " (no oneDNN) on them";
  }
  s += " quantized=";
  if (impl_->isa >= Isa::kAvx512Vnni) {
    s += "int8 AVX512-VNNI vpdpbusd (Q4_K/Q6_K: AVX2)";
  } else if (impl_->isa >= Isa::kAvx2) {
    s += "int8 AVX2 vpmaddubsw";
  } else {
    s += "reference (dequantized rows)";
  }
  if (impl_->lib != nullptr && impl_->isa >= Isa::kAvx2) s += ", prefill oneDNN f32 on int8-rounded activations";
  return s;
}

namespace {
double Since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}
}  // namespace

namespace {
// Rows [begin, end) of one output whose weights are quantized (or a float matrix fused with
// quantized ones, widened row by row), bias included.
void QuantRows(const MatMulOutput& o, int64_t begin, int64_t end, const float* x, int64_t m, int64_t ldx, Isa isa) {
  const int64_t ldy = o.ldy ? o.ldy : o.w.rows;
  const int64_t rb = DTypeRowBytes(o.w.dtype, o.w.cols);
  if (IsQuantized(o.w.dtype)) {
    QuantMatMulAt(isa, QuantTypeOf(o.w.dtype), static_cast<const char*>(o.w.data) + begin * rb, end - begin, o.w.cols,
                  x, m, ldx, o.y + begin, ldy);
  } else {
    std::vector<float> row(o.w.cols);
    for (int64_t r = begin; r < end; ++r) {
      ConvertToF32(static_cast<const char*>(o.w.data) + r * rb, o.w.dtype, o.w.cols, row.data());
      for (int64_t t = 0; t < m; ++t) {
        float s = 0;
        for (int64_t k = 0; k < o.w.cols; ++k) s += row[k] * x[t * ldx + k];
        o.y[t * ldy + r] = s;
      }
    }
  }
  if (o.bias != nullptr)
    for (int64_t t = 0; t < m; ++t)
      for (int64_t r = begin; r < end; ++r) o.y[t * ldy + r] += o.bias[r];
}
}  // namespace

void Compute::MatMul(const float* x, int64_t m, int64_t ldx, std::span<const MatMulOutput> outputs) {
  if (m <= 0 || outputs.empty()) return;
  const auto t0 = std::chrono::steady_clock::now();
  double n = 0, bytes = 0;
  bool quantized = false;
  for (const auto& o : outputs) {
    n += static_cast<double>(o.w.rows);
    bytes += static_cast<double>(o.w.rows * DTypeRowBytes(o.w.dtype, o.w.cols));
    quantized |= IsQuantized(o.w.dtype);
  }
  Profile& p = impl_->prof;
  auto account = [&] {  // decode steps count bytes streamed, prefill flops
    (m <= kGemvMaxM ? p.gemv_s : p.gemm_s) += Since(t0);
    if (m <= kGemvMaxM)
      p.gemv_bytes += bytes;
    else
      p.gemm_flop += 2.0 * static_cast<double>(m) * n * static_cast<double>(outputs[0].w.cols);
  };
  bool all_quantized = quantized;
  for (const auto& o : outputs) all_quantized = all_quantized && IsQuantized(o.w.dtype);
  if (all_quantized && m > kGemvMaxM && impl_->lib != nullptr && impl_->isa >= Isa::kAvx2 &&
      impl_->QuantGemm(x, m, ldx, outputs)) {
    account();
    return;
  }
  if (quantized) {  // GGUF weights (quant.h): the rows of all outputs, one after another, split over the team
    // One team dispatch for all outputs (q, k and v; gate and up): each is a barrier, and a
    // part that spans two outputs keeps streaming weights instead of waiting at one.
    int64_t total = 0;
    for (const auto& o : outputs) total += o.w.rows;
    impl_->ParallelFor(total, [&](int64_t begin, int64_t end) {
      int64_t first = 0;  // row index of the current output's row 0 in the concatenation
      for (const auto& o : outputs) {
        const int64_t b = std::max(begin, first) - first, e = std::min(end, first + o.w.rows) - first;
        first += o.w.rows;
        if (b >= e) continue;
        QuantRows(o, b, e, x, m, ldx, impl_->isa);
      }
    });
    account();
    return;
  }
  size_t packed = 0;
  for (const auto& o : outputs) packed += o.w.packed ? 1 : 0;
  if (packed != 0) {
    if (!PacksBf16() || packed != outputs.size()) {  // a caller's bug, not an input error
      KVF_LOG_ERROR("MatMul: packed bf16 weights need a Compute that packs them and all outputs packed ({})",
                    Describe());
      std::abort();
    }
    impl_->PackedPath(x, m, ldx, outputs);
    account();
    return;
  }
  if (m <= kGemvMaxM) {
    impl_->GemvPath(x, m, ldx, outputs);
  } else {
    impl_->GemmPath(x, m, ldx, outputs);
  }
  account();
}

double Compute::MeasurePeakGflops(int reps) {
  if (impl_->isa < Isa::kAvx512 || reps <= 0) return 0;
  constexpr int64_t kIters = 1 << 20;  // 24 Mi FMAs a thread
  std::vector<float> sink(impl_->size());
  double best = 0;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    impl_->team->Run([&](int t) { sink[t] += avx512::FmaLoop(kIters); });
    const double s = Since(t0);
    best = std::max(best, static_cast<double>(impl_->size()) * kIters * 24 * 32 / s / 1e9);
  }
  volatile float keep = sink[0];
  (void)keep;
  return best;
}

Compute::Profile Compute::profile() const {
  return impl_->prof;
}
void Compute::ResetProfile() {
  impl_->prof = {};
}

void Compute::PagedAttention(const AttentionArgs& args) {
  const auto t0 = std::chrono::steady_clock::now();
  double flop = 0;  // q·k and p·v over the causal span
  for (const auto& seq : args.sequences) {
    const double n = static_cast<double>(seq.n_tokens);
    const double keys = n * static_cast<double>(seq.start_pos) + n * (n + 1) / 2;
    flop += 4.0 * keys * static_cast<double>(args.num_heads * args.head_dim);
  }
  PagedAttentionImpl(args);
  impl_->prof.attention_s += Since(t0);
  impl_->prof.attention_flop += flop;
}

void Compute::PagedAttentionImpl(const AttentionArgs& args) {
  struct Item {
    size_t seq;
    int64_t g, i0, i1;
  };
  const int64_t group = args.num_heads / args.num_kv_heads;
  // The AVX-512 and AVX2 tiles put (query token, head) rows on vector lanes: ~128 rows fill 8
  // vectors of 16, ~64 rows 8 vectors of 8.
  const bool wide = impl_->isa >= Isa::kAvx512;
  const bool tile = impl_->isa >= Isa::kAvx2 && args.head_dim % 4 == 0;
  const int64_t qtile = tile ? std::max<int64_t>(1, (wide ? kTileRows : kTileRows / 2) / group) : kQueryTile;
  std::vector<Item> items;
  for (size_t s = 0; s < args.sequences.size(); ++s) {
    const auto& seq = args.sequences[s];
    for (int64_t i0 = 0; i0 < seq.n_tokens; i0 += qtile)
      for (int64_t g = 0; g < args.num_kv_heads; ++g) items.push_back({s, g, i0, std::min(seq.n_tokens, i0 + qtile)});
  }
  // Later query tiles attend to more keys: hand out the expensive ones first, dynamically.
  std::vector<size_t> order(items.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    const auto& a = items[x];
    const auto& b = items[y];
    return args.sequences[a.seq].start_pos + a.i1 > args.sequences[b.seq].start_pos + b.i1;
  });
  impl_->team->RunParts(static_cast<int64_t>(order.size()), [&](int t, int64_t i) {
    const Item& it = items[order[i]];
    const AttentionSequence& seq = args.sequences[it.seq];
    if (!tile) {
      impl_->AttentionItem(t, args, seq, it.g, it.i0, it.i1);
      return;
    }
    const int64_t ld = args.num_heads * args.head_dim;
    AttentionTileArgs ta;
    ta.q = args.q + (seq.row0 + it.i0) * ld + it.g * group * args.head_dim;
    ta.ldq = ld;
    ta.out = args.out + (seq.row0 + it.i0) * ld + it.g * group * args.head_dim;
    ta.ldo = ld;
    ta.n_queries = it.i1 - it.i0;
    ta.group = group;
    ta.head_dim = args.head_dim;
    ta.first_pos = seq.start_pos + it.i0;
    ta.n_keys = seq.start_pos + it.i1;
    ta.scale = args.scale;
    ta.kv_base = args.kv.base;
    ta.kv_dtype = args.kv.dtype;
    ta.block_bytes = args.kv.block_bytes;
    ta.block_size = args.kv.block_size;
    ta.k_offset = args.kv.k_offset + it.g * args.kv.head_stride;
    ta.v_offset = args.kv.v_offset + it.g * args.kv.head_stride;
    ta.block_table = seq.block_table;
    const int64_t rows = ta.n_queries * group;
    if (wide) {
      avx512::AttentionTile(
          ta, impl_->Scratch(t, static_cast<size_t>(avx512::AttentionTileScratchFloats(rows, args.head_dim))));
    } else {
      avx2::AttentionTile(
          ta, impl_->Scratch(t, static_cast<size_t>(avx2::AttentionTileScratchFloats(rows, args.head_dim))));
    }
  });
}

void Compute::ParallelFor(int64_t n, const std::function<void(int64_t, int64_t)>& fn) {
  const auto t0 = std::chrono::steady_clock::now();
  impl_->ParallelFor(n, fn);
  impl_->prof.other_s += Since(t0);
}

double Compute::MeasureReadBandwidth(size_t bytes, int reps) {
  const int nt = impl_->size();
  const size_t per = (bytes / nt) & ~size_t{4095};
  if (per == 0 || reps <= 0) return 0;
  std::vector<void*> bufs(nt, nullptr);
  // Each thread allocates and first-touches its own slice.
  impl_->team->Run([&](int t) {
    bufs[t] = std::aligned_alloc(4096, per);
    if (bufs[t] != nullptr) std::memset(bufs[t], t + 1, per);
  });
  double best = 0;
  std::vector<uint64_t> sink(nt);
  for (int r = 0; r < reps; ++r) {
    const auto t0 = std::chrono::steady_clock::now();
    impl_->team->Run([&](int t) {
      if (bufs[t] != nullptr) sink[t] += impl_->table->read_sum(bufs[t], per);
    });
    const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, static_cast<double>(per) * nt / dt / 1e9);
  }
  bool ok = true;
  for (int t = 0; t < nt; ++t) {
    ok = ok && bufs[t] != nullptr;
    std::free(bufs[t]);
  }
  volatile uint64_t keep = sink[0];
  (void)keep;
  return ok ? best : 0;
}

}  // namespace kvferry::kernels
