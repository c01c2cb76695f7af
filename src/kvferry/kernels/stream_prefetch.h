// StreamPrefetch: the software prefetch of the decode GEMVs that read a tile of weight rows nb
// rows per pass. Header-only with internal linkage on purpose: it is compiled into TUs built
// with different ISA flags (AVX2, AVX-512), and an inline function with external linkage could
// have its AVX-512 copy picked by the linker for the AVX2 kernel.
#pragma once

#include <immintrin.h>

#include <cstdint>

namespace kvferry::kernels {
namespace {  // NOLINT(build/namespaces): one copy per ISA translation unit, see above

// Software prefetch for a tile of weight rows read nb rows per pass: stream b is rows b, b + nb, ...
// of the tile. p is stream 0's next line to request; the other streams' lines are b row lengths
// further. Lines at or past the tile's end are not requested (the next rows may be another
// thread's, already read).
class StreamPrefetch {
 public:
  StreamPrefetch(const char* tile, const char* end, int64_t row_bytes, int nb)
      : p_(tile), end_(end), row_bytes_(row_bytes), left_(row_bytes), skip_((nb - 1) * row_bytes), nb_(nb) {}

  // Requests the next line of every stream.
  void Next() {
    for (int b = 0; b < nb_; ++b) {
      const char* a = p_ + b * row_bytes_;
      if (a < end_) _mm_prefetch(a, _MM_HINT_T0);
    }
    p_ += 64;
    left_ -= 64;
    while (left_ <= 0) {  // past stream 0's row: on to its row in the next pass
      p_ += skip_;
      left_ += row_bytes_;
    }
  }

 private:
  const char* p_;
  const char* end_;
  int64_t row_bytes_, left_, skip_;
  int nb_;
};

}  // namespace
}  // namespace kvferry::kernels
