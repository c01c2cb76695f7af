// The portable kernels compiled for the scalar level (flags set in CMakeLists.txt).
#define KVF_ISA_NS scalar
#define KVF_ISA_LEVEL ::kvferry::kernels::Isa::kScalar
#define KVF_GEMV Gemv
#include "kvferry/kernels/vec_kernels.inc"
