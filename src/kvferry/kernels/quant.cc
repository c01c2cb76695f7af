#include "kvferry/kernels/quant.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>

#include "kvferry/kernels/kernels.h"

namespace kvferry::kernels {
namespace {

// The smallest half h with F16ToF32(h) >= v (v >= 0, finite, below the half range).
uint16_t HalfUp(float v) {
  uint16_t h = F32ToF16(v);
  if (F16ToF32(h) < v && h < 0x7bff) ++h;  // positive halves are ordered like their bits
  return h;
}

int Round(float v) { return static_cast<int>(std::nearbyint(v)); }

// Q6_K element e (0..255) of a block: where its low 4 and high 2 bits live.
struct Q6Pos {
  int ql, ql_shift, qh, qh_shift;
};
Q6Pos Q6Position(int e) {
  const int half = e / 128, sub = (e % 128) / 32, l = e % 32;
  return {64 * half + l + (sub & 1) * 32, (sub >> 1) * 4, 32 * half + l, 2 * sub};
}

void QuantizeQ8_0(const float* x, BlockQ8_0* b) {
  float amax = 0;
  for (int i = 0; i < 32; ++i) amax = std::max(amax, std::fabs(x[i]));
  b->d = HalfUp(amax / 127);
  const float d = F16ToF32(b->d);
  for (int i = 0; i < 32; ++i) b->qs[i] = static_cast<int8_t>(d == 0 ? 0 : std::clamp(Round(x[i] / d), -127, 127));
}

void QuantizeQ4_0(const float* x, BlockQ4_0* b) {
  // Like ggml: the element of largest magnitude maps exactly to -8, so the other sign gets 7
  // steps.
  float amax = 0, max = 0;
  for (int i = 0; i < 32; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  const uint16_t h = HalfUp(amax / 8);
  b->d = max > 0 ? static_cast<uint16_t>(h | 0x8000) : h;  // d = max / -8
  const float d = F16ToF32(b->d);
  for (int j = 0; j < 16; ++j) {
    const int q0 = d == 0 ? 8 : std::clamp(Round(x[j] / d), -8, 7) + 8;
    const int q1 = d == 0 ? 8 : std::clamp(Round(x[j + 16] / d), -8, 7) + 8;
    b->qs[j] = static_cast<uint8_t>(q0 | (q1 << 4));
  }
}

void QuantizeQ5_0(const float* x, BlockQ5_0* b) {
  // As Q4_0 with 32 levels: the element of largest magnitude maps exactly to -16.
  float amax = 0, max = 0;
  for (int i = 0; i < 32; ++i)
    if (std::fabs(x[i]) > amax) amax = std::fabs(x[i]), max = x[i];
  const uint16_t h = HalfUp(amax / 16);
  b->d = max > 0 ? static_cast<uint16_t>(h | 0x8000) : h;  // d = max / -16
  const float d = F16ToF32(b->d);
  uint32_t qh = 0;
  for (int j = 0; j < 16; ++j) {
    const int q0 = d == 0 ? 16 : std::clamp(Round(x[j] / d), -16, 15) + 16;
    const int q1 = d == 0 ? 16 : std::clamp(Round(x[j + 16] / d), -16, 15) + 16;
    b->qs[j] = static_cast<uint8_t>((q0 & 15) | ((q1 & 15) << 4));
    qh |= static_cast<uint32_t>(q0 >> 4) << j;
    qh |= static_cast<uint32_t>(q1 >> 4) << (j + 16);
  }
  std::memcpy(b->qh, &qh, 4);
}

void QuantizeQ4_K(const float* x, BlockQ4_K* b) {
  // Each sub-block covers [-dmin * m, -dmin * m + 15 * d * sc]. m is rounded up so the lower end
  // reaches the sub-block's minimum (or 0), then sc up so the upper end reaches its maximum.
  float lo[8], hi[8], max_min = 0;
  for (int j = 0; j < 8; ++j) {
    lo[j] = 0, hi[j] = 0;
    for (int i = 0; i < 32; ++i) lo[j] = std::min(lo[j], x[32 * j + i]), hi[j] = std::max(hi[j], x[32 * j + i]);
    max_min = std::max(max_min, -lo[j]);
  }
  b->dmin = HalfUp(max_min / 63);
  const float dmin = F16ToF32(b->dmin);
  uint8_t m[8], sc[8];
  float range[8], max_range = 0;
  for (int j = 0; j < 8; ++j) {
    m[j] = dmin == 0 ? 0 : static_cast<uint8_t>(std::min(63.0f, std::ceil(-lo[j] / dmin)));
    range[j] = hi[j] + dmin * m[j];
    max_range = std::max(max_range, range[j]);
  }
  b->d = HalfUp(max_range / (15 * 63));
  const float d = F16ToF32(b->d);
  for (int j = 0; j < 8; ++j)
    sc[j] = d == 0 ? 0 : static_cast<uint8_t>(std::min(63.0f, std::ceil(range[j] / (15 * d))));
  std::memset(b->scales, 0, sizeof(b->scales));
  for (int j = 0; j < 8; ++j) {
    if (j < 4) {
      b->scales[j] = sc[j];
      b->scales[j + 4] = m[j];
    } else {
      b->scales[j + 4] = static_cast<uint8_t>((sc[j] & 15) | ((m[j] & 15) << 4));
      b->scales[j - 4] |= static_cast<uint8_t>((sc[j] >> 4) << 6);
      b->scales[j] |= static_cast<uint8_t>((m[j] >> 4) << 6);
    }
  }
  for (int j = 0; j < 8; ++j) {
    const float step = d * sc[j], offset = dmin * m[j];
    for (int i = 0; i < 32; ++i) {
      const int q = step == 0 ? 0 : std::clamp(Round((x[32 * j + i] + offset) / step), 0, 15);
      uint8_t& byte = b->qs[32 * (j / 2) + i];
      if (j % 2 == 0)
        byte = static_cast<uint8_t>(q);
      else
        byte = static_cast<uint8_t>(byte | (q << 4));
    }
  }
}

void QuantizeQ6_K(const float* x, BlockQ6_K* b) {
  float scale[16], max_scale = 0;
  for (int j = 0; j < 16; ++j) {
    float amax = 0;
    for (int i = 0; i < 16; ++i) amax = std::max(amax, std::fabs(x[16 * j + i]));
    scale[j] = amax / 31;
    max_scale = std::max(max_scale, scale[j]);
  }
  b->d = HalfUp(max_scale / 127);
  const float d = F16ToF32(b->d);
  std::memset(b->ql, 0, sizeof(b->ql));
  std::memset(b->qh, 0, sizeof(b->qh));
  for (int j = 0; j < 16; ++j) {
    const int sc = d == 0 ? 0 : static_cast<int>(std::min(127.0f, std::ceil(scale[j] / d)));
    b->scales[j] = static_cast<int8_t>(sc);
    const float step = d * sc;
    for (int i = 0; i < 16; ++i) {
      const int e = 16 * j + i;
      const int q = (step == 0 ? 0 : std::clamp(Round(x[e] / step), -32, 31)) + 32;
      const Q6Pos p = Q6Position(e);
      b->ql[p.ql] = static_cast<uint8_t>(b->ql[p.ql] | ((q & 15) << p.ql_shift));
      b->qh[p.qh] = static_cast<uint8_t>(b->qh[p.qh] | ((q >> 4) << p.qh_shift));
    }
  }
}

void DequantizeQ8_0(const BlockQ8_0* b, float* y) {
  const float d = F16ToF32(b->d);
  for (int i = 0; i < 32; ++i) y[i] = b->qs[i] * d;
}

void DequantizeQ4_0(const BlockQ4_0* b, float* y) {
  const float d = F16ToF32(b->d);
  for (int j = 0; j < 16; ++j) {
    y[j] = ((b->qs[j] & 15) - 8) * d;
    y[j + 16] = ((b->qs[j] >> 4) - 8) * d;
  }
}

void DequantizeQ5_0(const BlockQ5_0* b, float* y) {
  const float d = F16ToF32(b->d);
  uint32_t qh;
  std::memcpy(&qh, b->qh, 4);
  for (int j = 0; j < 16; ++j) {
    const int h0 = static_cast<int>((qh >> j) & 1), h1 = static_cast<int>((qh >> (j + 16)) & 1);
    y[j] = static_cast<float>(((b->qs[j] & 15) | (h0 << 4)) - 16) * d;
    y[j + 16] = static_cast<float>(((b->qs[j] >> 4) | (h1 << 4)) - 16) * d;
  }
}

void DequantizeQ4_K(const BlockQ4_K* b, float* y) {
  const float d = F16ToF32(b->d), dmin = F16ToF32(b->dmin);
  for (int j = 0; j < 8; ++j) {
    uint8_t sc, m;
    Q4KScaleMin(b->scales, j, &sc, &m);
    const float d1 = d * sc, m1 = dmin * m;
    const int shift = (j % 2) * 4;
    for (int i = 0; i < 32; ++i) y[32 * j + i] = d1 * ((b->qs[32 * (j / 2) + i] >> shift) & 15) - m1;
  }
}

int Q6Quant(const BlockQ6_K* b, int e) {
  const Q6Pos p = Q6Position(e);
  return (((b->ql[p.ql] >> p.ql_shift) & 15) | (((b->qh[p.qh] >> p.qh_shift) & 3) << 4)) - 32;
}

void DequantizeQ6_K(const BlockQ6_K* b, float* y) {
  const float d = F16ToF32(b->d);
  for (int e = 0; e < 256; ++e) y[e] = d * b->scales[e / 16] * Q6Quant(b, e);
}

}  // namespace

const char* QuantTypeName(QuantType type) {
  switch (type) {
    case QuantType::kQ8_0: return "q8_0";
    case QuantType::kQ4_0: return "q4_0";
    case QuantType::kQ4_K: return "q4_k";
    case QuantType::kQ6_K: return "q6_k";
    case QuantType::kQ5_0: return "q5_0";
  }
  return "?";
}

StatusOr<QuantType> ParseQuantType(std::string_view name) {
  std::string lower(name);
  for (char& c : lower) c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  for (QuantType t : {QuantType::kQ8_0, QuantType::kQ4_0, QuantType::kQ4_K, QuantType::kQ6_K, QuantType::kQ5_0})
    if (lower == QuantTypeName(t)) return t;
  return InvalidArgumentError("unknown quantization type '" + std::string(name) +
                              "' (want q8_0, q4_0, q5_0, q4_k or q6_k)");
}

int64_t QuantBlockElems(QuantType type) {
  return type == QuantType::kQ4_K || type == QuantType::kQ6_K ? 256 : 32;
}

int64_t QuantBlockBytes(QuantType type) {
  switch (type) {
    case QuantType::kQ8_0: return sizeof(BlockQ8_0);
    case QuantType::kQ4_0: return sizeof(BlockQ4_0);
    case QuantType::kQ4_K: return sizeof(BlockQ4_K);
    case QuantType::kQ6_K: return sizeof(BlockQ6_K);
    case QuantType::kQ5_0: return sizeof(BlockQ5_0);
  }
  return 0;
}

void Q4KScaleMin(const uint8_t* q, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = q[j] & 63;
    *m = q[j + 4] & 63;
  } else {
    *sc = static_cast<uint8_t>((q[j + 4] & 15) | ((q[j - 4] >> 6) << 4));
    *m = static_cast<uint8_t>((q[j + 4] >> 4) | ((q[j] >> 6) << 4));
  }
}

void QuantizeRow(QuantType type, const float* x, int64_t n, void* out) {
  const int64_t be = QuantBlockElems(type), blocks = n / be;
  for (int64_t k = 0; k < blocks; ++k) {
    switch (type) {
      case QuantType::kQ8_0: QuantizeQ8_0(x + k * be, static_cast<BlockQ8_0*>(out) + k); break;
      case QuantType::kQ4_0: QuantizeQ4_0(x + k * be, static_cast<BlockQ4_0*>(out) + k); break;
      case QuantType::kQ4_K: QuantizeQ4_K(x + k * be, static_cast<BlockQ4_K*>(out) + k); break;
      case QuantType::kQ6_K: QuantizeQ6_K(x + k * be, static_cast<BlockQ6_K*>(out) + k); break;
      case QuantType::kQ5_0: QuantizeQ5_0(x + k * be, static_cast<BlockQ5_0*>(out) + k); break;
    }
  }
}

void DequantizeRow(QuantType type, const void* in, int64_t n, float* y) {
  const int64_t be = QuantBlockElems(type), blocks = n / be;
  for (int64_t k = 0; k < blocks; ++k) {
    switch (type) {
      case QuantType::kQ8_0: DequantizeQ8_0(static_cast<const BlockQ8_0*>(in) + k, y + k * be); break;
      case QuantType::kQ4_0: DequantizeQ4_0(static_cast<const BlockQ4_0*>(in) + k, y + k * be); break;
      case QuantType::kQ4_K: DequantizeQ4_K(static_cast<const BlockQ4_K*>(in) + k, y + k * be); break;
      case QuantType::kQ6_K: DequantizeQ6_K(static_cast<const BlockQ6_K*>(in) + k, y + k * be); break;
      case QuantType::kQ5_0: DequantizeQ5_0(static_cast<const BlockQ5_0*>(in) + k, y + k * be); break;
    }
  }
}

float QuantErrorBound(QuantType type, const void* in, int64_t i) {
  const int64_t k = i / QuantBlockElems(type), e = i % QuantBlockElems(type);
  switch (type) {
    case QuantType::kQ8_0: return 0.5f * std::fabs(F16ToF32(static_cast<const BlockQ8_0*>(in)[k].d));
    case QuantType::kQ4_0: return std::fabs(F16ToF32(static_cast<const BlockQ4_0*>(in)[k].d));
    case QuantType::kQ5_0: return std::fabs(F16ToF32(static_cast<const BlockQ5_0*>(in)[k].d));
    case QuantType::kQ4_K: {
      const BlockQ4_K& b = static_cast<const BlockQ4_K*>(in)[k];
      uint8_t sc, m;
      Q4KScaleMin(b.scales, static_cast<int>(e / 32), &sc, &m);
      return 0.5f * F16ToF32(b.d) * sc;
    }
    case QuantType::kQ6_K: {
      const BlockQ6_K& b = static_cast<const BlockQ6_K*>(in)[k];
      return 0.5f * F16ToF32(b.d) * std::abs(b.scales[e / 16]);
    }
  }
  return 0;
}

}  // namespace kvferry::kernels
