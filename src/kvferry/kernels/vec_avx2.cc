// The portable kernels compiled for the avx2 level (flags set in CMakeLists.txt).
#define KVF_ISA_NS avx2
#define KVF_ISA_LEVEL ::kvferry::kernels::Isa::kAvx2
#define KVF_GEMV ::kvferry::kernels::avx2::Gemv
#define KVF_SILU_MUL ::kvferry::kernels::avx2::SiluMul
#include "kvferry/kernels/vec_kernels.inc"
