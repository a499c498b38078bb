// Launchers of the warp matrix wrappers' test kernels (warp_matrix_kernels.cu). Raw pointers, no torch; launched
// on the default stream.
#pragma once
#include <cstdint>

namespace eurokernels::testing {

// d = a (16x16, row major) * b + c in one mma.sync: mode 0 loads the fragments from global memory by the PTX ISA's
// formulas; 1 stages a and b ([16, 8] = (k, n)) in shared memory and loads them with ldmatrix (b: x2.trans); 2 the
// same with b given as [8, 16] = (n, k) (ldmatrix x2). a, b: fp16 or bf16 bits; c, d: fp32 [16, 8].
void mma(const uint16_t* a, const uint16_t* b, const float* c, float* d, bool bf16, int mode);
// num (1, 2, 4) 8x8 matrices of 16-bit values -> out[lane * num + j] = register j of each lane after ldmatrix.
void ldmatrix_dump(const uint16_t* m, uint32_t* out, int num, bool trans);
// cp.async in two commit groups (see the kernel): src 224 floats, out0 [32, 4], out1 [32, 3].
void cp_async_copy(const float* src, float* out0, float* out1, int src_bytes_last);

}  // namespace eurokernels::testing
