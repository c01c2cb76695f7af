// The portable kernels compiled for the avx512 level (flags set in CMakeLists.txt).
#define KVF_ISA_NS avx512
#define KVF_ISA_LEVEL ::kvferry::kernels::Isa::kAvx512
#define KVF_GEMV ::kvferry::kernels::avx512::Gemv
#define KVF_SILU_MUL ::kvferry::kernels::avx512::SiluMul
#include "kvferry/kernels/vec_kernels.inc"
