// eurokernels._cuda_sim's own functions (beside the kernels bindings_cuda.cpp binds): the simulation's controls,
// dry-run launch plans of the row launchers, and the runtime's test kernels (tests/test_cuda_sim.py).
#include <torch/extension.h>

#include "cross_entropy/cross_entropy_launch.h"
#include "cuda_utils_host.h"
#include "rms_norm/rms_norm_launch.h"
#include "sim/cuda_sim_half.h"
#include "sim/cuda_sim_host.h"
#include "sim/sim_test_kernels.h"
#include "testing/warp_matrix_kernels.h"

namespace eurokernels::sim {
namespace {

namespace py = pybind11;

py::list records_to_list(const std::vector<LaunchRecord>& records) {
  py::list out;
  for (const auto& r : records) {
    py::dict d;
    d["kernel"] = r.kernel;
    d["grid"] = py::make_tuple(r.grid.x, r.grid.y, r.grid.z);
    d["block"] = py::make_tuple(r.block.x, r.block.y, r.block.z);
    d["smem"] = r.smem;
    d["error"] = r.error;
    out.append(d);
  }
  return out;
}

// Runs `f` with launches checked and recorded but not executed; returns the records.
template <typename F>
py::list dry_run(F&& f) {
  take_records();
  set_capture(true, false);
  try {
    f();
  } catch (...) {
    set_capture(false, true);
    throw;
  }
  set_capture(false, true);
  take_launch_error();
  return records_to_list(take_records());
}

// A 16-byte-aligned address that is never dereferenced (dry runs only): the launchers pick vector widths from
// pointer alignment, as with a fresh allocation.
void* fake_pointer() { return reinterpret_cast<void*>(uintptr_t(1) << 24); }

template <typename T>
T* ptr(const at::Tensor& t, const char* name) {
  TORCH_CHECK(t.device().is_cpu() && t.is_contiguous(), name, " must be a contiguous CPU tensor");
  return static_cast<T*>(t.data_ptr());
}

}  // namespace

void bind(py::module_& m) {
  m.def("set_schedule", &set_schedule, "Thread interleaving: 'rr', 'reverse' or 'seed:N'");
  m.def("schedule", &schedule);
  m.def("set_arch", &set_arch, "Simulated GPU: 80 (A100) or 90 (H100)");
  m.def("arch", &arch);
  m.def("sm_count", &sm_count);
  m.def("set_max_grid_x", &set_max_grid_x, "Largest gridDim.x (lowered by tests to drive grid-stride loops)");
  m.def("max_grid_x", &max_grid_x);
  m.def("kernels", &kernel_names, "Every kernel instantiation this module can run");
  m.def("set_kernel_registers", &set_kernel_registers, py::arg("arch"), py::arg("kernel"), py::arg("registers"));
  m.def("set_capture", &set_capture, py::arg("record"), py::arg("run"));
  m.def("take_records", [] { return records_to_list(take_records()); });

  // What the row launchers would launch for `rows` rows of n elements (no memory touched).
  m.def("plan_rms_norm_forward", [](int64_t rows, int64_t n, int dtype) {
    return dry_run([&] {
      rms_norm::ForwardParams p{};
      p.x = p.y = fake_pointer();
      p.rstd = static_cast<float*>(fake_pointer());
      p.rows = rows;
      p.n = p.stride_x = n;
      p.x_dtype = p.w_dtype = dtype;
      rms_norm::launch_forward(p, nullptr);
    });
  });
  m.def("plan_cross_entropy", [](int64_t rows, int64_t n, int dtype) {
    return dry_run([&] {
      cross_entropy::Params p{};
      p.x = fake_pointer();
      p.rows = rows;
      p.n = p.stride_x = n;
      p.dtype = dtype;
      cross_entropy::launch(p, nullptr);
    });
  });

  // x (fp32) rounded to dtype by the simulation's __float2half_rn / __float2bfloat16_rn, and back to fp32.
  m.def("round_to", [](const at::Tensor& x, at::ScalarType dtype) {
    TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16, "dtype must be float16 or bfloat16");
    at::Tensor in = x.to(at::kFloat).contiguous(), out = at::empty_like(in);
    const float* src = in.const_data_ptr<float>();
    float* dst = out.mutable_data_ptr<float>();
    for (int64_t i = 0; i < in.numel(); ++i) {
      dst[i] = dtype == at::kHalf ? __half2float(__float2half_rn(src[i]))
                                  : __bfloat162float(__float2bfloat16_rn(src[i]));
    }
    return out;
  });

  namespace t = tests;
  m.def("test_barrier_misuse", [](int mode, at::Tensor out) {
    t::barrier_misuse(mode, ptr<int>(out, "out"));
    cuda::check_launch();
  });
  m.def("test_warp_ops", [](at::Tensor out, uint32_t mask, int width) {
    t::warp_ops(ptr<int>(out, "out"), mask, width);
    cuda::check_launch();
  });
  m.def("test_launch", [](std::tuple<unsigned, unsigned, unsigned> g, std::tuple<unsigned, unsigned, unsigned> b,
                          size_t smem, int optin, at::Tensor out) {
    const int status = t::launch_probe(dim3(std::get<0>(g), std::get<1>(g), std::get<2>(g)),
                                       dim3(std::get<0>(b), std::get<1>(b), std::get<2>(b)), smem, optin,
                                       ptr<int>(out, "out"));
    return py::make_tuple(status, take_launch_error());
  });
  m.def("test_shared_memory", [](at::Tensor out, int blocks, int threads) {
    t::shared_memory(ptr<int>(out, "out"), blocks, threads);
    cuda::check_launch();
  });
  m.def("test_atomics", [](at::Tensor counter, at::Tensor sum, at::Tensor max_tid, int blocks, int threads) {
    t::atomics(ptr<int>(counter, "counter"), ptr<float>(sum, "sum"), ptr<int>(max_tid, "max_tid"), blocks, threads);
    cuda::check_launch();
  });
  m.def("test_mma", [](at::Tensor a, at::Tensor b, at::Tensor c, at::Tensor d, bool bf16, int mode) {
    testing::mma(ptr<uint16_t>(a, "a"), ptr<uint16_t>(b, "b"), ptr<float>(c, "c"), ptr<float>(d, "d"), bf16, mode);
    cuda::check_launch();
  });
  m.def("test_ldmatrix", [](at::Tensor mats, at::Tensor out, int num, bool trans) {
    testing::ldmatrix_dump(ptr<uint16_t>(mats, "mats"), ptr<uint32_t>(out, "out"), num, trans);
    cuda::check_launch();
  });
  m.def("test_cp_async", [](at::Tensor src, at::Tensor out0, at::Tensor out1, int src_bytes_last) {
    testing::cp_async_copy(ptr<float>(src, "src"), ptr<float>(out0, "out0"), ptr<float>(out1, "out1"), src_bytes_last);
    cuda::check_launch();
  });
  m.def("test_race", [](at::Tensor flag, at::Tensor seen, int threads) {
    t::race(ptr<int>(flag, "flag"), ptr<int>(seen, "seen"), threads);
    cuda::check_launch();
  });
}

}  // namespace eurokernels::sim
