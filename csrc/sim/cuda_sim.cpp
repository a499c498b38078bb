// The SIMT runtime of the simulation build: every CUDA thread of a block is a fiber (its own stack, switched by
// hand on x86-64, by ucontext elsewhere) on one host thread; a scheduler runs the fibers of a block until each
// reaches a yield point (barrier, warp collective, and under the seeded schedule memory accesses), in an order
// fixed by the schedule, so results never depend on the host's thread scheduling. Blocks run in parallel on
// at::parallel_for's threads. A barrier or warp collective that cannot complete is an error naming the kernel,
// block, thread and source line.
#include <ATen/Parallel.h>
#include <sys/mman.h>

#include <algorithm>
#include <cstdio>
#include <deque>
#include <map>
#include <memory>
#include <mutex>
#include <stdexcept>

#include "sim/cuda_sim_host.h"
#include "sim/cuda_sim_internal.h"

#if !defined(__x86_64__)
#include <ucontext.h>
#endif
#if defined(__SANITIZE_ADDRESS__)  // the sanitizer build (EUROKERNELS_SANITIZE=1): stack switches are announced
#include <sanitizer/common_interface_defs.h>
#endif

namespace eurokernels::sim {

thread_local const uint3* tls_thread_idx = nullptr;
thread_local const BlockInfo* tls_block = nullptr;

namespace {

// ------------------------------------------------------------------------------------------- context switch
#if defined(__x86_64__)
// Saves the callee-saved registers, MXCSR and the x87 control word on the current stack, stores the stack pointer
// in *save, and resumes the context whose stack pointer is `load` (System V ABI: nothing else survives a call).
extern "C" void ek_sim_switch(void** save, void* load);
asm(R"(
  .text
  .globl ek_sim_switch
  .hidden ek_sim_switch
  .type ek_sim_switch, @function
ek_sim_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size ek_sim_switch, .-ek_sim_switch
)");

struct Context {
  void* sp = nullptr;
  const void* bottom = nullptr;  // the stack this context runs on (AddressSanitizer is told at each switch)
  size_t size = 0;
};

// A fresh context that starts `entry` on the stack [stack, stack + bytes): the frame ek_sim_switch pops, then
// entry's address for its `ret`, then a null return address for entry (which never returns).
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  auto* sp = reinterpret_cast<uint64_t*>(stack + bytes);  // 16-byte aligned
  *--sp = 0;
  *--sp = reinterpret_cast<uint64_t>(entry);
  for (int i = 0; i < 6; ++i) *--sp = 0;
  uint32_t csr[2] = {0, 0};
  asm volatile("stmxcsr %0\n\tfnstcw %1" : "=m"(csr[0]), "=m"(csr[1]));
  --sp;
  std::memcpy(sp, csr, 8);
  c.sp = sp;
  c.bottom = stack;
  c.size = bytes;
}
void raw_switch(Context& from, Context& to) { ek_sim_switch(&from.sp, to.sp); }
#else
struct Context {
  ucontext_t uc;
  const void* bottom = nullptr;
  size_t size = 0;
};
void make_context(Context& c, char* stack, size_t bytes, void (*entry)()) {
  c.bottom = stack;
  c.size = bytes;
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = stack;
  c.uc.uc_stack.ss_size = bytes;
  c.uc.uc_link = nullptr;
  makecontext(&c.uc, entry, 0);
}
void raw_switch(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
#endif

// AddressSanitizer keeps its own idea of the current stack: without these announcements a fiber's frames look like
// wild writes into another stack. Fibers only ever switch to and from the scheduler, whose stack (the host thread's)
// is learnt the first time a fiber starts.
thread_local Context tls_sched;  // per host thread: the scheduler's own context
void arrived(bool on_fiber) {
#if defined(__SANITIZE_ADDRESS__)
  const void* bottom = nullptr;
  size_t size = 0;
  __sanitizer_finish_switch_fiber(nullptr, &bottom, &size);
  if (on_fiber) {
    tls_sched.bottom = bottom;
    tls_sched.size = size;
  }
#else
  (void)on_fiber;
#endif
}
void switch_context(Context& from, Context& to) {
#if defined(__SANITIZE_ADDRESS__)
  __sanitizer_start_switch_fiber(nullptr, to.bottom, to.size);
#endif
  raw_switch(from, to);
  arrived(&from != &tls_sched);
}

// ------------------------------------------------------------------------------------------------- state
constexpr size_t kStackBytes = 256 << 10;  // kernels keep their arrays on the stack ("registers")
constexpr size_t kGuardBytes = 4096;       // below each stack: an overflow faults instead of corrupting memory

enum class State : uint8_t { Runnable, Barrier, Warp, Done };

struct CopyOp {
  void* dst;
  const void* src;
  int cp_bytes, src_bytes;
};

struct Fiber {
  Context ctx;
  char* stack = nullptr;
  uint3 tid{};
  int linear = 0;
  State state = State::Runnable;
  WarpOp op{};        // the collective it waits at (State::Warp)
  unsigned mask = 0;
  LaneArg* arg = nullptr;
  Site site{};        // where it waits
  std::vector<CopyOp> open_group;             // cp.async since the last commit
  std::deque<std::vector<CopyOp>> committed;  // oldest first
};

enum class Order : uint8_t { RoundRobin, Reverse, Seeded };

struct Block {
  BlockInfo info;
  const Kernel* kernel;
  void (*body)(const void*);
  const void* ctx;
  Fiber* fibers;
  int n = 0, live = 0, exited = 0, at_barrier = 0, cursor = 0;
  Order order = Order::RoundRobin;
  uint64_t rng = 0;
  std::string error;
};

// Per host thread: the running block and fiber, and reusable fibers and stacks.
thread_local Block* tls_blk = nullptr;
thread_local Fiber* tls_fiber = nullptr;

struct ThreadPool {
  std::vector<Fiber> fibers;
  std::vector<char*> stacks;
  std::unique_ptr<char[]> smem;
  ~ThreadPool() {
    for (char* s : stacks) munmap(s - kGuardBytes, kStackBytes + kGuardBytes);
  }
  char* stack(size_t i) {
    while (stacks.size() <= i) {
      void* p = mmap(nullptr, kStackBytes + kGuardBytes, PROT_READ | PROT_WRITE,
                     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
      if (p == MAP_FAILED) throw std::runtime_error("CUDA simulation: cannot map a fiber stack");
      mprotect(p, kGuardBytes, PROT_NONE);
      stacks.push_back(static_cast<char*>(p) + kGuardBytes);
    }
    return stacks[i];
  }
};
thread_local ThreadPool tls_pool;

// ------------------------------------------------------------------------------------------------ settings
struct Settings {
  int arch = 90;
  int64_t max_grid_x = 2147483647;
  Order order = Order::RoundRobin;
  uint64_t seed = 0;
  bool record = false, run = true;
};
Settings g_settings;
std::mutex g_records_mutex;
std::vector<LaunchRecord> g_records;
thread_local std::string tls_last_error;

int max_optin_smem(int arch) { return arch >= 90 ? 227 * 1024 : 163 * 1024; }
constexpr int kMaxStaticSmem = 48 * 1024;  // without opt-in

uint64_t splitmix(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}
uint64_t next(uint64_t& s) {
  s ^= s << 13;
  s ^= s >> 7;
  s ^= s << 17;
  return s;
}

std::string fmt3(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + ", " + std::to_string(y) + ", " + std::to_string(z) + ")";
}
std::string where(const Site& s) {
  std::string f = s.file_name();
  const size_t c = f.rfind("csrc/");
  return (c == std::string::npos ? f : f.substr(c + 5)) + ":" + std::to_string(s.line());
}
std::string thread_name(const Block&, const Fiber& f) {
  return "thread " + fmt3(f.tid.x, f.tid.y, f.tid.z) + " (warp " + std::to_string(f.linear / 32) + ", lane " +
         std::to_string(f.linear % 32) + ")";
}
std::string context(const Block& b) {
  const auto& i = b.info.block_idx;
  return "kernel " + std::string(b.kernel->name) + ", block " + fmt3(i.x, i.y, i.z);
}
std::string waiting_at(const Fiber& f) {
  if (f.state == State::Barrier) return "__syncthreads at " + where(f.site);
  char mask[16];
  std::snprintf(mask, sizeof mask, "0x%08x", f.mask);
  return std::string(op_name(f.op)) + " (mask " + mask + ") at " + where(f.site);
}

void set_error(Block& b, const std::string& what) {
  if (b.error.empty()) b.error = "CUDA simulation: " + what + " [" + context(b) + "]";
}

[[noreturn]] void abandon() {  // back to the scheduler for good: the block has failed
  switch_context(tls_fiber->ctx, tls_sched);
  std::abort();  // never resumed
}

void yield() { switch_context(tls_fiber->ctx, tls_sched); }

void run_copies(std::vector<CopyOp>& ops) {
  for (const CopyOp& c : ops) {
    std::memcpy(c.dst, c.src, size_t(c.src_bytes));
    std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, size_t(c.cp_bytes - c.src_bytes));
  }
  ops.clear();
}

// A barrier completes when every live thread waits at one; then they must wait at the same one, and none may have
// exited (an early return before a barrier is undefined behaviour on the GPU: it may hang or skip the barrier).
void check_barrier(Block& b) {
  if (b.at_barrier == 0 || b.at_barrier < b.live) return;
  const Fiber* first = nullptr;
  for (int i = 0; i < b.n; ++i) {
    const Fiber& f = b.fibers[i];
    if (f.state != State::Barrier) continue;
    if (!first) {
      first = &f;
    } else if (f.site.line() != first->site.line() || std::strcmp(f.site.file_name(), first->site.file_name())) {
      set_error(b, "divergent barrier: " + thread_name(b, *first) + " waits at __syncthreads at " +
                       where(first->site) + " while " + thread_name(b, f) + " waits at " + where(f.site));
      abandon();
    }
  }
  if (b.exited > 0) {
    for (int i = 0; i < b.n; ++i) {
      if (b.fibers[i].state == State::Done) {
        set_error(b, thread_name(b, b.fibers[i]) + " exited without reaching the __syncthreads at " +
                         where(first->site) + " that " + thread_name(b, *first) + " waits at");
        abandon();
      }
    }
  }
  for (int i = 0; i < b.n; ++i) {
    if (b.fibers[i].state == State::Barrier) b.fibers[i].state = State::Runnable;
  }
  b.at_barrier = 0;
}

// Completes the collective of `warp` named by `caller`'s mask if every lane in it has arrived with that mask.
void check_warp(Block& b, const Fiber& caller) {
  const int warp = caller.linear / 32;
  LaneArg* args[32] = {};
  for (int l = 0; l < 32; ++l) {
    if (!(caller.mask >> l & 1)) continue;
    const int idx = warp * 32 + l;
    if (idx >= b.n) {
      set_error(b, thread_name(b, caller) + " waits at " + waiting_at(caller) + ", whose mask names lane " +
                       std::to_string(l) + ", which this block of " + std::to_string(b.n) + " threads does not have");
      abandon();
    }
    const Fiber& o = b.fibers[idx];
    if (o.state == State::Done) {
      set_error(b, thread_name(b, o) + " exited without reaching the " + waiting_at(caller) + " that " +
                       thread_name(b, caller) + " waits at");
      abandon();
    }
    if (o.state != State::Warp || o.mask != caller.mask) return;  // not there yet
    if (o.op != caller.op) {
      set_error(b, "lanes of one mask meet at different warp operations: " + thread_name(b, caller) + " at " +
                       waiting_at(caller) + ", " + thread_name(b, o) + " at " + waiting_at(o));
      abandon();
    }
    args[l] = o.arg;
  }
  const std::string err = complete_collective(caller.op, caller.mask, args);
  if (!err.empty()) {
    set_error(b, err + " at " + where(caller.site));
    abandon();
  }
  for (int l = 0; l < 32; ++l) {
    if (caller.mask >> l & 1) b.fibers[warp * 32 + l].state = State::Runnable;
  }
}

// A thread that exits must not be awaited by a barrier or a collective of its warp.
void finish(Block& b, Fiber& f) {
  if (!f.open_group.empty()) f.committed.push_back(std::move(f.open_group));
  for (auto& g : f.committed) run_copies(g);
  f.committed.clear();
  f.state = State::Done;
  --b.live;
  ++b.exited;
  const int warp = f.linear / 32, lane = f.linear % 32;
  for (int l = 0; l < 32 && warp * 32 + l < b.n; ++l) {
    const Fiber& o = b.fibers[warp * 32 + l];
    if (o.state == State::Warp && (o.mask >> lane & 1)) {
      set_error(b, thread_name(b, f) + " exited without reaching the " + waiting_at(o) + " that " +
                       thread_name(b, o) + " waits at");
      return;
    }
  }
  check_barrier(b);
}

void fiber_entry() {
  arrived(true);
  Block& b = *tls_blk;
  Fiber& f = *tls_fiber;
  try {
    b.body(b.ctx);
  } catch (const std::exception& e) {  // no exception may unwind past the fiber's first frame
    set_error(b, thread_name(b, f) + ": " + e.what());
  } catch (...) {
    set_error(b, thread_name(b, f) + ": an exception that is not a std::exception");
  }
  finish(b, f);
  abandon();  // the scheduler never resumes a finished fiber
}

int pick(Block& b) {
  const int n = b.n;
  int start = b.cursor;
  if (b.order == Order::Seeded) start = int(next(b.rng) % uint64_t(n));
  for (int k = 0; k < n; ++k) {
    const int i = b.order == Order::Reverse ? ((start - k) % n + n) % n : (start + k) % n;
    if (b.fibers[i].state == State::Runnable) {
      b.cursor = b.order == Order::Reverse ? i - 1 : i + 1;
      return i;
    }
  }
  return -1;
}

std::string deadlock(const Block& b) {
  std::string s = "deadlock: no thread can proceed;";
  int shown = 0;
  for (int i = 0; i < b.n && shown < 4; ++i) {
    const Fiber& f = b.fibers[i];
    if (f.state == State::Barrier || f.state == State::Warp) {
      s += " " + thread_name(b, f) + " waits at " + waiting_at(f) + ";";
      ++shown;
    }
  }
  return s;
}

void run_block(Block& b) {
  ThreadPool& pool = tls_pool;
  if (pool.fibers.size() < size_t(b.n)) pool.fibers.resize(b.n);
  b.fibers = pool.fibers.data();
  const dim3 bd = b.info.block_dim;
  for (int i = 0; i < b.n; ++i) {
    Fiber& f = b.fibers[i];
    f.stack = pool.stack(size_t(i));
    f.tid = uint3{unsigned(i) % bd.x, unsigned(i) / bd.x % bd.y, unsigned(i) / (bd.x * bd.y)};
    f.linear = i;
    f.state = State::Runnable;
    f.open_group.clear();
    f.committed.clear();
    make_context(f.ctx, f.stack, kStackBytes, &fiber_entry);
  }
  b.live = b.n;
  tls_blk = &b;
  tls_block = &b.info;
  while (b.error.empty()) {
    const int i = pick(b);
    if (i < 0) break;
    tls_fiber = &b.fibers[i];
    tls_thread_idx = &b.fibers[i].tid;
    switch_context(tls_sched, b.fibers[i].ctx);
  }
  if (b.error.empty() && b.live > 0) set_error(b, deadlock(b));
  tls_blk = nullptr;
  tls_fiber = nullptr;
  tls_block = nullptr;
  tls_thread_idx = nullptr;
}

std::string check_config(const Kernel& k, dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (!grid.x || !grid.y || !grid.z || !threads) return "a grid or block dimension is 0";
  if (block.x > 1024 || block.y > 1024 || block.z > 64 || threads > 1024) {
    return "block " + fmt3(block.x, block.y, block.z) +
           " exceeds the 1024 threads (x, y <= 1024, z <= 64) a block may have";
  }
  if (int64_t(grid.x) > g_settings.max_grid_x || grid.y > 65535 || grid.z > 65535) {
    return "grid " + fmt3(grid.x, grid.y, grid.z) + " exceeds the limits (x <= " +
           std::to_string(g_settings.max_grid_x) + ", y and z <= 65535)";
  }
  // Registers are allocated per warp, in units of 256 (8 per thread): a block needs warps x that, at most 65536.
  const int regs = k.registers[g_settings.arch >= 90];
  const uint64_t warps = (threads + 31) / 32, per_warp = (uint64_t(regs) + 7) / 8 * 8 * 32;
  if (warps * per_warp > 65536) {
    return "too many resources requested: " + std::to_string(regs) + " registers per thread (the sm_" +
           std::to_string(g_settings.arch) + " cubin) x " + std::to_string(threads) +
           " threads exceed the 65536 of an SM";
  }
  if (smem > size_t(k.max_dynamic_smem)) {
    return std::to_string(smem) + " bytes of dynamic shared memory exceed the kernel's limit of " +
           std::to_string(k.max_dynamic_smem) + " (48 KB unless raised by cudaFuncSetAttribute, at most " +
           std::to_string(max_optin_smem(g_settings.arch)) + " on sm_" + std::to_string(g_settings.arch) + ")";
  }
  return "";
}

std::map<const void*, Kernel*>& registry() {
  static std::map<const void*, Kernel*> r;
  return r;
}

}  // namespace

// ---------------------------------------------------------------------------------------------- yield points
void fail(const std::string& what, const Site& site) {
  set_error(*tls_blk, thread_name(*tls_blk, *tls_fiber) + ": " + what + " at " + where(site));
  abandon();
}

void block_barrier(const Site& site) {
  Block& b = *tls_blk;
  Fiber& f = *tls_fiber;
  f.state = State::Barrier;
  f.site = site;
  ++b.at_barrier;
  check_barrier(b);
  yield();
}

void warp_collective(WarpOp op, unsigned mask, LaneArg& a, const Site& site) {
  Block& b = *tls_blk;
  Fiber& f = *tls_fiber;
  if (!(mask >> (f.linear % 32) & 1)) {
    char m[16];
    std::snprintf(m, sizeof m, "0x%08x", mask);
    fail(std::string(op_name(op)) + " with mask " + m + ", which does not include the calling lane", site);
  }
  f.state = State::Warp;
  f.op = op;
  f.mask = mask;
  f.arg = &a;
  f.site = site;
  check_warp(b, f);
  yield();
}

void memory_point() {
  Block* b = tls_blk;
  if (b && b->order == Order::Seeded && (next(b->rng) & 1)) yield();
}

char* dynamic_shared() {
  if (!tls_pool.smem) tls_pool.smem.reset(new char[232448]);
  return tls_pool.smem.get();
}

void cp_async(void* dst, const void* src, int cp_bytes, int src_bytes, const Site& site) {
  if (cp_bytes != 4 && cp_bytes != 8 && cp_bytes != 16) {
    fail("cp.async of " + std::to_string(cp_bytes) + " bytes", site);
  }
  if (src_bytes < 0 || src_bytes > cp_bytes) fail("cp.async with src-size " + std::to_string(src_bytes), site);
  if (reinterpret_cast<uintptr_t>(dst) % cp_bytes || reinterpret_cast<uintptr_t>(src) % cp_bytes) {
    fail("cp.async address not aligned to its " + std::to_string(cp_bytes) + " bytes", site);
  }
  tls_fiber->open_group.push_back(CopyOp{dst, src, cp_bytes, src_bytes});
  memory_point();
}

void cp_async_commit() { tls_fiber->committed.push_back(std::move(tls_fiber->open_group)); }

void cp_async_wait(int pending) {
  auto& q = tls_fiber->committed;
  while (int(q.size()) > pending) {
    run_copies(q.front());
    q.pop_front();
  }
  memory_point();
}

// ------------------------------------------------------------------------------------------------- launches
Kernel& register_kernel(const char* pretty, const void* address) {
  std::string s = pretty;  // "... kernel_name() [with auto K = NAME]"
  const size_t eq = s.find("= ");
  s = eq == std::string::npos ? s : s.substr(eq + 2, s.size() - eq - 3);
  for (size_t p; (p = s.find("{anonymous}::")) != std::string::npos;) s.erase(p, 13);
  auto* k = new Kernel{strdup(s.c_str())};  // lives as long as the module
  registry()[address] = k;
  return *k;
}

std::vector<std::string> kernel_names() {
  std::vector<std::string> out;
  for (const auto& [addr, k] : registry()) out.push_back(k->name);
  std::sort(out.begin(), out.end());
  return out;
}

bool set_kernel_registers(int arch, const std::string& kernel, int registers) {
  if (arch != 80 && arch != 90) return false;
  for (auto& [addr, k] : registry()) {
    if (std::string(k->name) == "eurokernels::" + kernel) {
      k->registers[arch >= 90] = registers;
      return true;
    }
  }
  return false;
}

cudaError_t set_max_dynamic_smem(const void* address, int bytes) {
  auto it = registry().find(address);
  if (it == registry().end() || bytes < 0 || bytes > max_optin_smem(g_settings.arch)) return cudaErrorInvalidValue;
  it->second->max_dynamic_smem = std::max(bytes, kMaxStaticSmem);
  return cudaSuccess;
}

void launch(Kernel& k, dim3 grid, dim3 block, size_t smem, void (*body)(const void*), const void* ctx) {
  const Settings s = g_settings;
  const std::string bad = check_config(k, grid, block, smem);
  if (s.record) {
    std::lock_guard<std::mutex> lock(g_records_mutex);
    g_records.push_back(LaunchRecord{k.name, grid, block, smem, bad});
  }
  if (!bad.empty()) {
    if (tls_last_error.empty()) {
      tls_last_error = "CUDA simulation: launch of " + std::string(k.name) + " refused: " + bad;
    }
    return;
  }
  if (!s.run) return;
  const int64_t blocks = int64_t(grid.x) * grid.y * grid.z;
  std::mutex m;
  int64_t first_bad = blocks;
  std::string first_error;
  at::parallel_for(0, blocks, 1, [&](int64_t b0, int64_t b1) {
    for (int64_t i = b0; i < b1; ++i) {
      Block b;
      b.info.block_idx = uint3{unsigned(i % grid.x), unsigned(i / grid.x % grid.y),
                               unsigned(i / (int64_t(grid.x) * grid.y))};
      b.info.block_dim = block;
      b.info.grid_dim = grid;
      b.kernel = &k;
      b.body = body;
      b.ctx = ctx;
      b.n = int(uint64_t(block.x) * block.y * block.z);
      b.order = s.order;
      b.cursor = s.order == Order::Reverse ? b.n - 1 : 0;
      b.rng = splitmix(s.seed * 0x100000001b3ull + uint64_t(i)) | 1;
      if (smem) std::memset(dynamic_shared(), 0xff, smem);  // undefined on a GPU: make stale reads show (NaN)
      run_block(b);
      if (!b.error.empty()) {
        std::lock_guard<std::mutex> lock(m);
        if (i < first_bad) first_bad = i, first_error = b.error;
      }
    }
  });
  if (!first_error.empty() && tls_last_error.empty()) tls_last_error = first_error;
}

// ------------------------------------------------------------------------------------------------- controls
void set_arch(int sm) {
  if (sm != 80 && sm != 90) {
    throw std::invalid_argument("CUDA simulation: arch must be 80 or 90, got " + std::to_string(sm));
  }
  g_settings.arch = sm;
}
int arch() { return g_settings.arch; }
int sm_count() { return g_settings.arch >= 90 ? 132 : 108; }
void set_max_grid_x(int64_t n) {
  if (n < 1 || n > 2147483647) throw std::invalid_argument("CUDA simulation: max_grid_x must be in [1, 2^31 - 1]");
  g_settings.max_grid_x = n;
}
int64_t max_grid_x() { return g_settings.max_grid_x; }

void set_schedule(const std::string& spec) {
  if (spec == "rr") {
    g_settings.order = Order::RoundRobin;
  } else if (spec == "reverse") {
    g_settings.order = Order::Reverse;
  } else if (spec.rfind("seed:", 0) == 0 && spec.size() > 5 &&
             spec.find_first_not_of("0123456789", 5) == std::string::npos) {
    g_settings.order = Order::Seeded;
    g_settings.seed = std::stoull(spec.substr(5));
  } else {
    throw std::invalid_argument("CUDA simulation: schedule must be 'rr', 'reverse' or 'seed:N', got '" + spec + "'");
  }
}
std::string schedule() {
  switch (g_settings.order) {
    case Order::RoundRobin: return "rr";
    case Order::Reverse: return "reverse";
    default: return "seed:" + std::to_string(g_settings.seed);
  }
}

void set_capture(bool record, bool run) {
  g_settings.record = record;
  g_settings.run = run;
}
std::vector<LaunchRecord> take_records() {
  std::lock_guard<std::mutex> lock(g_records_mutex);
  return std::exchange(g_records, {});
}
std::string take_launch_error() { return std::exchange(tls_last_error, {}); }

}  // namespace eurokernels::sim
