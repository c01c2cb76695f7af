#include "kvferry/kernels/gemm_library.h"

#if KVFERRY_HAVE_DNNL
#include <oneapi/dnnl/dnnl.hpp>

#include <cstdlib>
#include <map>
#include <mutex>
#include <tuple>
#include <vector>

#include "kvferry/base/base.h"
#include "kvferry/kernels/kernels.h"

extern "C" void omp_set_num_threads(int);

namespace kvferry::kernels {
namespace {

using Key = std::tuple<int, int64_t, int64_t, int64_t, int64_t, int64_t>;  // type, m, n, k, ldx, ldy

class DnnlGemm final : public GemmLibrary {
 public:
  explicit DnnlGemm(int num_threads) : engine_(dnnl::engine::kind::cpu, 0) {
    per_thread_.resize(num_threads);
    for (auto& pt : per_thread_) pt.stream = dnnl::stream(engine_);
  }

  bool MatMulF32(int t, const float* x, int64_t m, int64_t ldx, const float* w, int64_t n, int64_t k, float* y,
                 int64_t ldy) override {
    return Run(t, 0, x, m, ldx, w, n, k, y, ldy);
  }
  bool MatMulBf16(int t, const uint16_t* x, int64_t m, int64_t ldx, const uint16_t* w, int64_t n, int64_t k, float* y,
                  int64_t ldy) override {
    return Run(t, 1, x, m, ldx, w, n, k, y, ldy);
  }
  std::string LastImpl() const override {
    std::lock_guard<std::mutex> lock(impl_mu_);
    return last_impl_;
  }

 private:
  struct Entry {
    dnnl::memory::desc a, b, c;
    dnnl::matmul prim;
  };
  struct PerThread {
    dnnl::stream stream;
    std::map<Key, Entry> cache;
    bool omp_set = false;
  };

  bool Run(int t, int type, const void* x, int64_t m, int64_t ldx, const void* w, int64_t n, int64_t k, float* y,
           int64_t ldy) {
    if (t < 0 || t >= static_cast<int>(per_thread_.size())) return false;
    PerThread& pt = per_thread_[t];
    if (!pt.omp_set) {
      omp_set_num_threads(1);  // this thread's ICV: oneDNN runs inline on it
      pt.omp_set = true;
    }
    const Key key{type, m, n, k, ldx, ldy};
    auto it = pt.cache.find(key);
    try {
      if (it == pt.cache.end()) {
        using dt = dnnl::memory::data_type;
        const dt in = type == 0 ? dt::f32 : dt::bf16;
        Entry e;
        e.a = dnnl::memory::desc({m, k}, in, dnnl::memory::dims{ldx, 1});
        e.b = dnnl::memory::desc({k, n}, in, dnnl::memory::dims{1, k});
        e.c = dnnl::memory::desc({m, n}, dt::f32, dnnl::memory::dims{ldy, 1});
        dnnl::matmul::desc md(e.a, e.b, e.c);
        dnnl::matmul::primitive_desc pd(md, engine_);
        {
          std::lock_guard<std::mutex> lock(impl_mu_);
          last_impl_ = pd.impl_info_str();
        }
        e.prim = dnnl::matmul(pd);
        if (pt.cache.size() > 256) pt.cache.clear();
        it = pt.cache.emplace(key, std::move(e)).first;
      }
      Entry& e = it->second;
      dnnl::memory am(e.a, engine_, const_cast<void*>(x));
      dnnl::memory bm(e.b, engine_, const_cast<void*>(w));
      dnnl::memory cm(e.c, engine_, y);
      e.prim.execute(pt.stream, {{DNNL_ARG_SRC, am}, {DNNL_ARG_WEIGHTS, bm}, {DNNL_ARG_DST, cm}});
      pt.stream.wait();
      return true;
    } catch (const dnnl::error& err) {
      KVF_LOG_WARN("oneDNN matmul {}x{}x{} failed: {}", m, n, k, err.what());
      return false;
    }
  }

  dnnl::engine engine_;
  std::vector<PerThread> per_thread_;
  mutable std::mutex impl_mu_;
  std::string last_impl_;
};

}  // namespace

namespace {

// With KVFERRY_ISA set, oneDNN is held to the same level (once per process, before its first
// primitive), so that side-by-side figures of a lower level do not use oneDNN's best kernels.
void LimitDnnlIsa() {
  static const bool done = [] {
    const char* env = std::getenv("KVFERRY_ISA");
    if (env == nullptr || *env == '\0' || std::getenv("DNNL_MAX_CPU_ISA") != nullptr) return true;
    auto isa = SelectedIsa();
    if (!isa.ok()) return true;
    dnnl::cpu_isa cap = dnnl::cpu_isa::all;
    switch (*isa) {
      case Isa::kScalar: cap = dnnl::cpu_isa::sse41; break;
      case Isa::kAvx2: cap = dnnl::cpu_isa::avx2; break;
      case Isa::kAvx512: cap = dnnl::cpu_isa::avx512_core; break;
      case Isa::kAvx512Vnni: cap = dnnl::cpu_isa::avx512_core_vnni; break;
      case Isa::kAvx512Bf16: cap = dnnl::cpu_isa::avx512_core_bf16; break;
      case Isa::kAmxBf16: cap = dnnl::cpu_isa::all; break;
    }
    try {
      dnnl::set_max_cpu_isa(cap);
    } catch (const dnnl::error& err) {
      KVF_LOG_WARN("oneDNN: cannot limit its ISA to KVFERRY_ISA={}: {}", env, err.what());
    }
    return true;
  }();
  (void)done;
}

}  // namespace

std::unique_ptr<GemmLibrary> GemmLibrary::Create(int num_threads) {
  LimitDnnlIsa();
  try {
    return std::make_unique<DnnlGemm>(num_threads);
  } catch (const dnnl::error& err) {
    KVF_LOG_WARN("oneDNN unavailable: {}", err.what());
    return nullptr;
  }
}

}  // namespace kvferry::kernels

#else  // !KVFERRY_HAVE_DNNL

namespace kvferry::kernels {
std::unique_ptr<GemmLibrary> GemmLibrary::Create(int) {
  return nullptr;
}
}  // namespace kvferry::kernels

#endif

namespace kvferry::kernels {
bool HaveGemmLibrary() {
  return KVFERRY_HAVE_DNNL != 0;
}
}  // namespace kvferry::kernels
