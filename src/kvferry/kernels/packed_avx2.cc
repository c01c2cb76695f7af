// Matrix products against bf16 weights in the packed layout (kernels.h, kPackRows) on AVX2 +
// FMA: the layout of the AVX512-BF16 kernels, read here 32 bytes (one half line, 8 outputs) at a
// time. A half line holds one pair of k for 8 outputs, each output's pair in its own 32-bit lane
// (the lower k in the low half): a 16-bit shift gives the lower k's weights as f32, an `and`
// with 0xFFFF0000 the upper k's, and two FMAs against the two broadcast x values add both
// products into the 8 outputs' own lanes. No horizontal sums, and the number of x rows a weight
// line meets is the tile's height, not a pass count. x stays f32 (read in place, broadcast from
// its rows), so the results are those of f32 arithmetic on the bf16 weights, like the row-major
// AVX2 GEMV's.
//
// - decode (m <= 16): up to kDecodeGroup rows in one pass over tiles of 1-4 blocks, each block's
//   stream prefetched kAheadBytes ahead (one row: 29-34 ms for the 0.5B model's decode step on 2
//   threads of the Zen 3 VM, 31-39 GB/s, against 46-48 ms for the row-major GEMV). From 6 rows
//   on, the pass that streams kDecodeBlocks blocks from memory is the 6-row tile below, with the
//   prefetch; the other rows meet the blocks in L1/L2 (16 rows: 86-95 ms against 162-174).
// - prefill (m > 16): the 6-row x 16-output tile, one block held in L1/L2 while the row groups
//   of a chunk of rows (x within kXChunkBytes) pass: 166-189 GFLOP/s on the 0.5B shapes at 512
//   rows, 2 threads, where oneDNN's f32 GEMM on widened tiles got 157-168 and an FMA loop ~200.
//
// Every output lane sums its k in order from zero (lower k of a pair first) whatever the tile,
// so a row's result does not depend on m: a prompt token computes exactly what a decode step of
// it would. Compiled with AVX2 + FMA flags only.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx2 {
namespace {

// Bytes requested ahead in decode tiles, shared by the tile's streams (one row: 8 KiB read
// faster than 4 or 16 in alternating runs).
constexpr int64_t kAheadBytes = 8192;
// Decode: rows a pass takes at most (2 * R * NB accumulators + 4 weight registers + 2
// broadcasts within the 16 ymm registers).
constexpr int64_t kDecodeGroup = 5;
// Prefill: rows of a register tile, and bytes of x (a chunk of rows) that meet a block before
// the next chunk.
constexpr int64_t kPrefillRows = 6;
constexpr int64_t kXChunkBytes = 384 << 10;
// Decode of more than 6 rows: blocks that the row groups meet in turn (in L1/L2).
constexpr int64_t kDecodeBlocks = 4;

// R rows of x against NB packed blocks from block `blk`; y gets the 16 * NB outputs of each
// row. With kPrefetch, each block's stream is prefetched ahead (into the next tile's streams
// at the end).
template <int R, int NB, bool kPrefetch>
inline void Tile(const float* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t blk, float* y, int64_t ldy) {
  __m256 acc[R][NB][2];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      acc[r][b][0] = _mm256_setzero_ps();
      acc[r][b][1] = _mm256_setzero_ps();
    }
  }
  const __m256i hi = _mm256_set1_epi32(static_cast<int>(0xFFFF0000u));
  const uint16_t* wb = w + blk * kPackRows * k;
  const int64_t block = kPackRows * k;             // elements from one block to the next
  constexpr int64_t ahead = kAheadBytes / NB / 2;  // elements
  for (int64_t c = 0; c < k; c += 2) {
    const int64_t pos = c * kPackRows;
    __m256 we[NB][2], wo[NB][2];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      const uint16_t* line = wb + b * block + pos;
      if constexpr (kPrefetch) {
        // A stream's prefetch runs on into the same stream of the next tile, NB blocks on.
        const int64_t pf = pos + ahead < block ? ahead : ahead + (NB - 1) * block;
        _mm_prefetch(reinterpret_cast<const char*>(line + pf), _MM_HINT_T0);
      }
#pragma GCC unroll 2
      for (int h = 0; h < 2; ++h) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(line + h * 16));
        we[b][h] = _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));  // low halves: weights of k = c
        wo[b][h] = _mm256_castsi256_ps(_mm256_and_si256(v, hi));   // high halves: k = c + 1
      }
    }
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      const __m256 xe = _mm256_broadcast_ss(x + r * ldx + c);
      const __m256 xo = _mm256_broadcast_ss(x + r * ldx + c + 1);
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) {
#pragma GCC unroll 2
        for (int h = 0; h < 2; ++h) {
          acc[r][b][h] = _mm256_fmadd_ps(we[b][h], xe, acc[r][b][h]);
          acc[r][b][h] = _mm256_fmadd_ps(wo[b][h], xo, acc[r][b][h]);
        }
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      float* out = y + r * ldy + (blk + b) * kPackRows;
      _mm256_storeu_ps(out, acc[r][b][0]);
      _mm256_storeu_ps(out + 8, acc[r][b][1]);
    }
  }
}

// Prefill: 6 rows against one block, 12 accumulators. Per pair of k, the lower k's weights
// (both half lines, 2 registers) meet all 6 rows, then the upper k's (the line read again with
// the mask): 2 weight registers, one broadcast register, the mask, and 12 accumulators fill the
// 16 ymm registers exactly. Written in assembly because GCC 12, given the same order in
// intrinsics, hoists the upper k's broadcasts and spills four accumulators to the stack (120
// against 150+ GFLOP/s on two cores of the Zen 3 VM). Each lane still adds the lower k before
// the upper one with the same FMA as Tile, so results are bitwise Tile's.
static_assert(kPrefillRows == 6);
#define KVF_PREFETCH ".if %c[pf]\n\tprefetcht0 (%[w],%[ahead],1)\n\t.endif\n\t"
// One row: the broadcast x value times both weight registers into the row's two accumulators.
#define KVF_ROW(addr, a, b)          \
  "vbroadcastss " addr               \
  ", %%ymm14\n\t"                    \
  "vfmadd231ps %%ymm12, %%ymm14, " a \
  "\n\t"                             \
  "vfmadd231ps %%ymm13, %%ymm14, " b "\n\t"
#define KVF_ROWS(off)                                \
  KVF_ROW(off "(%[p0])", "%%ymm0", "%%ymm1")         \
  KVF_ROW(off "(%[p0],%[ld],1)", "%%ymm2", "%%ymm3") \
  KVF_ROW(off "(%[p0],%[ld],2)", "%%ymm4", "%%ymm5") \
  KVF_ROW(off "(%[p1])", "%%ymm6", "%%ymm7")         \
  KVF_ROW(off "(%[p1],%[ld],1)", "%%ymm8", "%%ymm9") \
  KVF_ROW(off "(%[p1],%[ld],2)", "%%ymm10", "%%ymm11")
#define KVF_STORE(addr, a, b) \
  "vmovups " a ", " addr      \
  "\n\t"                      \
  "vmovups " b ", 32" addr "\n\t"
// With kPrefetch (the first pass of a decode step over a block), each line requests the one
// kAheadBytes on, into the next block at the end.
template <bool kPrefetch>
inline void PrefillTile(const float* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t blk, float* y, int64_t ldy) {
  const uint16_t* line = w + blk * kPackRows * k;
  const float* p0 = x;            // rows 0-2: p0, p0 + ldx, p0 + 2 ldx
  const float* p1 = x + 3 * ldx;  // rows 3-5
  int64_t n = k / 2;              // k >= 16 (CanPackBf16)
  float* o0 = y + blk * kPackRows;
  float* o1 = o0 + 3 * ldy;
  const int64_t ld = ldx * 4, ldo = ldy * 4;
  const uint32_t mask = 0xFFFF0000u;
  const int64_t ahead = kAheadBytes;
  __asm__ volatile(
      "vbroadcastss %[mask], %%ymm15\n\t"
      "vxorps %%xmm0, %%xmm0, %%xmm0\n\t"
      "vxorps %%xmm1, %%xmm1, %%xmm1\n\t"
      "vxorps %%xmm2, %%xmm2, %%xmm2\n\t"
      "vxorps %%xmm3, %%xmm3, %%xmm3\n\t"
      "vxorps %%xmm4, %%xmm4, %%xmm4\n\t"
      "vxorps %%xmm5, %%xmm5, %%xmm5\n\t"
      "vxorps %%xmm6, %%xmm6, %%xmm6\n\t"
      "vxorps %%xmm7, %%xmm7, %%xmm7\n\t"
      "vxorps %%xmm8, %%xmm8, %%xmm8\n\t"
      "vxorps %%xmm9, %%xmm9, %%xmm9\n\t"
      "vxorps %%xmm10, %%xmm10, %%xmm10\n\t"
      "vxorps %%xmm11, %%xmm11, %%xmm11\n\t"
      ".p2align 5\n\t"
      "1:\n\t"
      KVF_PREFETCH
      "vmovdqu (%[w]), %%ymm12\n\t"
      "vmovdqu 32(%[w]), %%ymm13\n\t"
      "vpslld $16, %%ymm12, %%ymm12\n\t"
      "vpslld $16, %%ymm13, %%ymm13\n\t"
      KVF_ROWS("")
      "vpand (%[w]), %%ymm15, %%ymm12\n\t"
      "vpand 32(%[w]), %%ymm15, %%ymm13\n\t"
      KVF_ROWS("4")
      "add $64, %[w]\n\t"
      "add $8, %[p0]\n\t"
      "add $8, %[p1]\n\t"
      "dec %[n]\n\t"
      "jnz 1b\n\t"
      KVF_STORE("(%[o0])", "%%ymm0", "%%ymm1")
      KVF_STORE("(%[o0],%[ldo],1)", "%%ymm2", "%%ymm3")
      KVF_STORE("(%[o0],%[ldo],2)", "%%ymm4", "%%ymm5")
      KVF_STORE("(%[o1])", "%%ymm6", "%%ymm7")
      KVF_STORE("(%[o1],%[ldo],1)", "%%ymm8", "%%ymm9")
      KVF_STORE("(%[o1],%[ldo],2)", "%%ymm10", "%%ymm11")
      : [w] "+r"(line), [p0] "+r"(p0), [p1] "+r"(p1), [n] "+r"(n)
      : [ld] "r"(ld), [ldo] "r"(ldo), [o0] "r"(o0), [o1] "r"(o1), [mask] "m"(mask), [ahead] "r"(ahead),
        [pf] "i"(kPrefetch ? 1 : 0)
      : "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12",
        "xmm13", "xmm14", "xmm15", "cc", "memory");
}
#undef KVF_PREFETCH
#undef KVF_STORE
#undef KVF_ROWS
#undef KVF_ROW

// Blocks [b0, b1) for one group of R rows, NB blocks a tile (single blocks at the end).
template <int R, int NB, bool kPrefetch>
void Blocks(const float* x, int64_t ldx, const uint16_t* w, int64_t k, int64_t b0, int64_t b1, float* y, int64_t ldy) {
  if constexpr (kPrefetch) {  // the first lines of the first tile's streams
    const int64_t n = std::min<int64_t>(NB, b1 - b0);
    for (int64_t b = 0; b < n; ++b) {
      const char* s = reinterpret_cast<const char*>(w + (b0 + b) * kPackRows * k);
      const int64_t bytes = std::min<int64_t>(kAheadBytes / NB, kPackRows * k * 2);
      for (int64_t d = 0; d < bytes; d += 64) _mm_prefetch(s + d, _MM_HINT_T0);
    }
  }
  int64_t b = b0;
  for (; b + NB <= b1; b += NB) Tile<R, NB, kPrefetch>(x, ldx, w, k, b, y, ldy);
  for (; b < b1; ++b) Tile<R, 1, kPrefetch>(x, ldx, w, k, b, y, ldy);
}

// One decode pass: R rows against blocks [b0, b1); blocks per tile enough to cover the FMA
// latency with one row, fewer as rows add accumulators.
template <bool kPrefetch>
void DecodePass(const float* x, int64_t rows, int64_t ldx, const uint16_t* w, int64_t k, int64_t b0, int64_t b1,
                float* y, int64_t ldy) {
  switch (rows) {
    case 1: return Blocks<1, 4, kPrefetch>(x, ldx, w, k, b0, b1, y, ldy);
    case 2: return Blocks<2, 2, kPrefetch>(x, ldx, w, k, b0, b1, y, ldy);
    case 3: return Blocks<3, 1, kPrefetch>(x, ldx, w, k, b0, b1, y, ldy);
    case 4: return Blocks<4, 1, kPrefetch>(x, ldx, w, k, b0, b1, y, ldy);
    case 5: return Blocks<5, 1, kPrefetch>(x, ldx, w, k, b0, b1, y, ldy);
    default: return;
  }
}

}  // namespace

void MatMulPacked(const float* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t k, int64_t b0, int64_t b1,
                  float* y, int64_t ldy) {
  if (m <= 0 || b0 >= b1) return;
  if (m <= kDecodeGroup) return DecodePass<true>(x, m, ldx, w, k, b0, b1, y, ldy);
  if (m <= kDecodeRowsMax) {
    // Per kDecodeBlocks blocks, the first pass takes 6 rows and streams the blocks from memory
    // while it computes; the other rows meet them in L1/L2, 6 at a time, then the rest (a
    // tile of several blocks, so that even one row has 8 accumulator chains).
    for (int64_t b = b0; b < b1; b += kDecodeBlocks) {
      const int64_t e = std::min(b1, b + kDecodeBlocks);
      for (int64_t i = b; i < e; ++i) PrefillTile<true>(x, ldx, w, k, i, y, ldy);
      int64_t r0 = kPrefillRows;
      for (; r0 + kPrefillRows <= m; r0 += kPrefillRows)
        for (int64_t i = b; i < e; ++i) PrefillTile<false>(x + r0 * ldx, ldx, w, k, i, y + r0 * ldy, ldy);
      if (r0 < m) DecodePass<false>(x + r0 * ldx, m - r0, ldx, w, k, b, e, y + r0 * ldy, ldy);
    }
    return;
  }
  // Prefill: one block at a time (32 * k bytes, in L1/L2) meets every row group of a chunk of
  // rows whose x stays in L2, instead of the whole x coming from L3 for every block.
  constexpr int64_t G = kPrefillRows;
  const int64_t chunk = std::max<int64_t>(1, kXChunkBytes / (4 * k) / G) * G;
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t c1 = std::min(m, c0 + chunk);
    for (int64_t b = b0; b < b1; ++b) {
      int64_t r0 = c0;
      for (; r0 + G <= c1; r0 += G) PrefillTile<false>(x + r0 * ldx, ldx, w, k, b, y + r0 * ldy, ldy);
      if (r0 < c1) DecodePass<false>(x + r0 * ldx, c1 - r0, ldx, w, k, b, b + 1, y + r0 * ldy, ldy);
    }
  }
}

}  // namespace kvferry::kernels::avx2
