// EK_HD: a function for both the host and the device, so that math shared by the CPU and CUDA kernels is
// compiled into both (and the CPU tests exercise it). The one definition: every *_common.h includes this.
#pragma once

#ifndef EK_HD
#if defined(__CUDACC__)
#define EK_HD __host__ __device__ __forceinline__
#else
#define EK_HD inline
#endif
#endif
