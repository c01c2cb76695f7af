#include <sys/mman.h>

#include <cerrno>

#include "kvferry/model/model.h"

namespace kvferry::model {

StatusOr<std::unique_ptr<KvCache>> KvCache::Create(const ModelConfig& config, const KvCacheOptions& options) {
  if (options.num_blocks <= 0) return InvalidArgumentError("KV cache needs num_blocks > 0");
  if (options.block_size <= 0 || options.block_size > 4096)
    return InvalidArgumentError("KV cache block_size must be in [1, 4096]");
  auto c = std::unique_ptr<KvCache>(new KvCache());
  c->num_blocks_ = options.num_blocks;
  c->block_size_ = options.block_size;
  c->num_layers_ = config.num_layers;
  c->num_kv_heads_ = config.num_kv_heads;
  c->head_dim_ = config.head_dim;
  c->dtype_ = options.dtype;
  c->bytes_per_block_ = static_cast<size_t>(config.num_layers) * 2 * config.num_kv_heads * options.block_size *
                        config.head_dim * kernels::DTypeSize(options.dtype);
  if (c->bytes_per_block_ == 0 || static_cast<size_t>(options.num_blocks) > (size_t{1} << 46) / c->bytes_per_block_)
    return InvalidArgumentError("KV cache too large");
  c->size_ = c->bytes_per_block_ * static_cast<size_t>(options.num_blocks);
  void* p = ::mmap(nullptr, c->size_, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED)
    return ResourceExhaustedError("KV cache: cannot map " + std::to_string(c->size_) +
                                  " bytes: " + std::to_string(errno));
#ifdef MADV_HUGEPAGE
  ::madvise(p, c->size_, MADV_HUGEPAGE);
#endif
  // Fault the whole arena in now (zeroed, in huge pages where the kernel has them), as a GPU
  // engine allocates its cache up front: otherwise the first prefill or the first remote KV
  // write into each block pays the page faults and zeroing, inside a request's TTFT (seen as
  // 12 MiB transfers taking 20-30 ms instead of 3 on a decoder). Resident memory is the arena
  // from the start.
  if (options.prefault) {
#ifdef MADV_POPULATE_WRITE
    ::madvise(p, c->size_, MADV_POPULATE_WRITE);
#endif
    // Then write one byte of every 4 KiB page. In some VMs (seen in Firecracker) a populated
    // 4 KiB page still costs ~5 us at the first access through its page-table entry: a 12 MiB
    // copy into fresh blocks took 15-20 ms instead of 1. Huge pages are not affected, but the
    // arena gets 4 KiB pages when the kernel has no huge ones free. One store per page otherwise.
    volatile char* bytes = static_cast<volatile char*>(p);
    for (size_t off = 0; off < c->size_; off += 4096) bytes[off] = 0;
  }
  c->base_ = p;
  return c;
}

KvCache::~KvCache() {
  if (base_ != nullptr) ::munmap(base_, size_);
}

int64_t KvCache::LayerOffset(int64_t layer, bool v) const {
  const int64_t per = num_kv_heads_ * block_size_ * head_dim_;
  return (2 * layer + (v ? 1 : 0)) * per;
}

}  // namespace kvferry::model
