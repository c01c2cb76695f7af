// Matrix products against bf16 weights packed for vdpbf16ps (kernels.h, PackBf16Weights): one
// 64-byte line of a packed block is one pair of k for 16 outputs, so a vdpbf16ps of that line
// with a broadcast pair of x adds two products into the 16 outputs' own lanes. No horizontal
// sums, and the number of x rows a weight line meets is the tile's height, not a pass count:
//
// - decode (m <= 16): all m rows against each line as it streams in, with a software prefetch
//   16 KiB ahead of the tile's streams (this VM's hardware prefetcher alone left the line loads
//   waiting). On the 0.5B shape's decode matrices (2 threads, Zen 5 VM): 16 rows 35-41 ms a
//   step against 48 ms for the row-major kernel's 4-row passes, 8 rows 30 against 34-36 ms, 4
//   rows 23-25 against 26-28 ms, 1 row 19-24 against 23-24 ms.
// - prefill (m > 16): tiles of 12 rows by 2 blocks (24 accumulators) with the weights held in
//   L1/L2 while the row groups of a chunk pass: 460-500 GFLOP/s on one core alone, against
//   390-420 for oneDNN's bf16 brgemm on the same shapes (the vdpbf16ps peak is about 480). In
//   the model on 2 threads: 690-700 GFLOP/s at 256-1,024 prompt tokens, oneDNN 640-660 at 256
//   and 690-760 at 512-1,024.
//
// x comes as PackedX (kernel_table.h): groups of rows, each [k/2][rows] of 32-bit bf16 pairs,
// so a tile's broadcasts are constant offsets from one pointer.
//
// Every output lane sums its k pairs in order from zero whatever the tile, so a row's result
// does not depend on m: a prompt token computes exactly what a decode step of it would.
// Compiled with AVX-512 F/BW/VL/DQ + AVX512_BF16 flags.

#include <immintrin.h>

#include <algorithm>
#include <cstdint>

#include "kvferry/kernels/kernel_table.h"

namespace kvferry::kernels::avx512bf16 {
namespace {

inline __m512bh AsBh(__m512i v) {
  return (__m512bh)v;  // same 64 bytes, viewed as 32 bf16 values
}

// Bytes requested ahead in decode tiles, shared by the tile's NB streams (kAhead: elements
// per stream). One row (4 streams) read fastest with 8 KiB, 16 rows (one stream) with 16-24.
template <int NB>
constexpr int64_t kAhead = (NB == 1 ? 16384 : 8192) / NB / 2;
// Prefill: bytes of x (a chunk of rows) that meet the thread's weights before the next chunk.
constexpr int64_t kXChunkBytes = 512 << 10;

// R rows of x (xg: [k/2][R] pairs) against NB packed blocks from block `blk`; y gets the
// 16 * NB outputs of each row. With kPrefetch, each block's stream is prefetched ahead.
template <int R, int NB, bool kPrefetch>
inline void Tile(const uint32_t* xg, const uint16_t* w, int64_t k, int64_t blk, float* y, int64_t ldy,
                 bool next_pair = false) {
  __m512 acc[R][NB];
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_setzero_ps();
  }
  const uint16_t* wb = w + blk * kPackRows * k;
  const int64_t block = kPackRows * k;  // elements from one block to the next
  const int64_t pairs = k / 2;
  for (int64_t kp = 0; kp < pairs; ++kp) {
    // A stream's prefetch runs on into the same stream of the next tile, NB blocks on (the
    // block right after it is the next stream of this tile, already on its way).
    const int64_t pos = kp * 32;
    const int64_t pf = pos + kAhead<NB> < block ? kAhead<NB> : kAhead<NB> + (NB - 1) * block;
    __m512i wv[NB];
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) {
      const uint16_t* line = wb + b * block + pos;
      if constexpr (kPrefetch) _mm_prefetch(reinterpret_cast<const char*>(line + pf), _MM_HINT_T0);
      if (next_pair) _mm_prefetch(reinterpret_cast<const char*>(line + NB * block), _MM_HINT_T1);
      wv[b] = _mm512_loadu_si512(line);
    }
    const uint32_t* xk = xg + kp * R;
#pragma GCC unroll 16
    for (int r = 0; r < R; ++r) {
      const __m512i xb = _mm512_set1_epi32(static_cast<int>(xk[r]));
#pragma GCC unroll 4
      for (int b = 0; b < NB; ++b) acc[r][b] = _mm512_dpbf16_ps(acc[r][b], AsBh(xb), AsBh(wv[b]));
    }
  }
#pragma GCC unroll 16
  for (int r = 0; r < R; ++r) {
#pragma GCC unroll 4
    for (int b = 0; b < NB; ++b) _mm512_storeu_ps(y + r * ldy + (blk + b) * kPackRows, acc[r][b]);
  }
}

// Blocks [b0, b1) for one group of R rows, NB blocks a tile (single blocks at the end).
template <int R, int NB, bool kPrefetch>
void Blocks(const uint32_t* xg, const uint16_t* w, int64_t k, int64_t b0, int64_t b1, float* y, int64_t ldy) {
  if constexpr (kPrefetch) {  // the first lines of the first tile's streams
    const int64_t n = std::min<int64_t>(NB, b1 - b0);
    for (int64_t b = 0; b < n; ++b) {
      const char* s = reinterpret_cast<const char*>(w + (b0 + b) * kPackRows * k);
      const int64_t bytes = std::min<int64_t>(2 * kAhead<NB>, kPackRows * k * 2);
      for (int64_t d = 0; d < bytes; d += 64) _mm_prefetch(s + d, _MM_HINT_T0);
    }
  }
  int64_t b = b0;
  for (; b + NB <= b1; b += NB) Tile<R, NB, kPrefetch>(xg, w, k, b, y, ldy);
  for (; b < b1; ++b) Tile<R, 1, kPrefetch>(xg, w, k, b, y, ldy);
}

// Decode: every row against each line once. Blocks per tile: enough accumulators to cover the
// vdpbf16ps latency, few enough streams for the prefetch.
void Decode(const uint32_t* xp, int64_t m, const uint16_t* w, int64_t k, int64_t b0, int64_t b1, float* y,
            int64_t ldy) {
  switch (m) {
    case 1: return Blocks<1, 4, true>(xp, w, k, b0, b1, y, ldy);
    case 2: return Blocks<2, 4, true>(xp, w, k, b0, b1, y, ldy);
    case 3: return Blocks<3, 4, true>(xp, w, k, b0, b1, y, ldy);
    case 4: return Blocks<4, 3, true>(xp, w, k, b0, b1, y, ldy);
    case 5: return Blocks<5, 2, true>(xp, w, k, b0, b1, y, ldy);
    case 6: return Blocks<6, 2, true>(xp, w, k, b0, b1, y, ldy);
    case 7: return Blocks<7, 2, true>(xp, w, k, b0, b1, y, ldy);
    case 8: return Blocks<8, 2, true>(xp, w, k, b0, b1, y, ldy);
    case 9: return Blocks<9, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 10: return Blocks<10, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 11: return Blocks<11, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 12: return Blocks<12, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 13: return Blocks<13, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 14: return Blocks<14, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 15: return Blocks<15, 1, true>(xp, w, k, b0, b1, y, ldy);
    case 16: return Blocks<16, 1, true>(xp, w, k, b0, b1, y, ldy);
    default: return;
  }
}

// Prefill: the last group of fewer than kPackedGroup rows.
void Tail(const uint32_t* xg, int64_t rows, const uint16_t* w, int64_t k, int64_t blk, int64_t nb, float* y,
          int64_t ldy) {
  const int64_t b1 = blk + nb;
  switch (rows) {
    case 1: return Blocks<1, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 2: return Blocks<2, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 3: return Blocks<3, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 4: return Blocks<4, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 5: return Blocks<5, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 6: return Blocks<6, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 7: return Blocks<7, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 8: return Blocks<8, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 9: return Blocks<9, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 10: return Blocks<10, 2, false>(xg, w, k, blk, b1, y, ldy);
    case 11: return Blocks<11, 2, false>(xg, w, k, blk, b1, y, ldy);
    default: return;
  }
}

}  // namespace

void MatMulPacked(const uint32_t* xp, int64_t m, const uint16_t* w, int64_t k, int64_t b0, int64_t b1, float* y,
                  int64_t ldy) {
  if (m <= kPackedDecodeRows) return Decode(xp, m, w, k, b0, b1, y, ldy);
  // Prefill: two blocks at a time (2 * 32 * k bytes, in L1/L2) meet every row group of a chunk
  // of rows whose x stays in L2, instead of the whole x coming from L3 for every two blocks.
  constexpr int64_t G = kPackedGroup;
  const int64_t pairs = k / 2;
  const int64_t chunk = std::max<int64_t>(1, kXChunkBytes / (4 * pairs) / G) * G;
  for (int64_t c0 = 0; c0 < m; c0 += chunk) {
    const int64_t c1 = std::min(m, c0 + chunk);
    for (int64_t b = b0; b < b1; b += 2) {
      const int64_t nb = b + 2 <= b1 ? 2 : 1;
      int64_t r0 = c0;
      for (; r0 + G <= c1; r0 += G) {
        const uint32_t* xg = xp + r0 * pairs;
        if (nb == 2) {
          // The chunk's first tile also requests the next two blocks (into L2), so that the
          // next pair's first tile does not start on lines still in memory.
          Tile<G, 2, false>(xg, w, k, b, y + r0 * ldy, ldy, r0 == c0 && b + 4 <= b1);
        } else {
          Tile<G, 1, false>(xg, w, k, b, y + r0 * ldy, ldy);
        }
      }
      if (r0 < c1) Tail(xp + r0 * pairs, c1 - r0, w, k, b, nb, y + r0 * ldy, ldy);
    }
  }
}

}  // namespace kvferry::kernels::avx512bf16
