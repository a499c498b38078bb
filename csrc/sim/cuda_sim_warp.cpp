// What each warp collective computes once every lane of its mask has arrived (cuda_sim.cpp decides when): shuffles
// and votes, and the warp matrix instructions mma.sync.m16n8k16 and ldmatrix emulated from the PTX ISA's fragment
// layouts ("Matrix Fragments for mma.m16n8k16 with floating point type", "ldmatrix"):
//   groupID = lane >> 2, tig = lane % 4 (threadID_in_group)
//   A 16x16 (row major), a0..a7 in 4 registers: row = groupID + 8 * ((i >> 1) & 1), col = 2 tig + (i & 1) + 8 (i >> 2)
//   B 16x8 (column major), b0..b3 in 2 registers: row (k) = 2 tig + (i & 1) + 8 (i >> 1), col (n) = groupID
//   C, D 16x8 fp32, c0..c3:                       row = groupID + 8 (i >> 1),          col = 2 tig + (i & 1)
//   ldmatrix m8n8 b16: lane 8j + r gives the address of row r of matrix j; register j of lane L holds row L / 4,
//   columns 2 (L % 4) and 2 (L % 4) + 1 of matrix j (.trans: column L / 4, rows 2 (L % 4) and 2 (L % 4) + 1).
// In a 32-bit register the element with the lower index sits in the lower half.
#include <cstdio>

#include "sim/cuda_sim_internal.h"

namespace eurokernels::sim {

const char* op_name(WarpOp op) {
  switch (op) {
    case WarpOp::Sync: return "__syncwarp";
    case WarpOp::Shfl: return "__shfl_sync";
    case WarpOp::ShflUp: return "__shfl_up_sync";
    case WarpOp::ShflDown: return "__shfl_down_sync";
    case WarpOp::ShflXor: return "__shfl_xor_sync";
    case WarpOp::Ballot: return "__ballot_sync";
    case WarpOp::Any: return "__any_sync";
    case WarpOp::All: return "__all_sync";
    case WarpOp::Mma: return "mma.sync.m16n8k16";
    case WarpOp::Ldmatrix: return "ldmatrix";
  }
  return "?";
}

namespace {

struct MmaLane {
  const uint32_t* a;
  const uint32_t* b;
  const float* c;
  float* d;
};
struct LdmatrixLane {
  const void* row;
  uint32_t* regs;
};

float half_at(uint32_t reg, int hi, bool bf16) {
  const uint16_t bits = uint16_t(hi ? reg >> 16 : reg & 0xffffu);
  return bf16 ? __bfloat162float(__nv_bfloat16{bits}) : __half2float(__half{bits});
}

std::string lane_error(const char* op, int lane, const std::string& what) {
  return std::string(op) + ": lane " + std::to_string(lane) + " " + what;
}

std::string shuffle(WarpOp op, unsigned mask, LaneArg* const (&args)[32]) {
  uint64_t result[32];
  for (int l = 0; l < 32; ++l) {
    if (!args[l]) continue;
    const int w = args[l]->width, arg = args[l]->arg;
    if (w < 1 || w > 32 || (w & (w - 1))) return lane_error(op_name(op), l, "passes width " + std::to_string(w));
    const int base = l & ~(w - 1);
    int src = l;
    switch (op) {
      case WarpOp::Shfl: src = base + (arg & (w - 1)); break;
      case WarpOp::ShflUp: src = l - arg >= base ? l - arg : l; break;
      case WarpOp::ShflDown: src = l + arg < base + w ? l + arg : l; break;
      default: src = (l ^ arg) < base + w ? (l ^ arg) : l; break;  // xor: later segments give the own value
    }
    if (src < 0 || src > 31 || !(mask >> src & 1)) {
      char m[16];
      std::snprintf(m, sizeof m, "0x%08x", mask);
      return lane_error(op_name(op), l, "reads lane " + std::to_string(src) + ", which is not in the mask " + m);
    }
    result[l] = args[src]->value;
  }
  for (int l = 0; l < 32; ++l) {
    if (args[l]) args[l]->result = result[l];
  }
  return "";
}

std::string mma(unsigned mask, LaneArg* const (&args)[32]) {
  if (mask != 0xffffffffu) return "mma.sync needs all 32 lanes (mask 0xffffffff)";
  const bool bf16 = args[0]->arg != 0;
  float a[16][16], b[16][8], c[16][8];
  for (int l = 0; l < 32; ++l) {
    if ((args[l]->arg != 0) != bf16) return lane_error("mma.sync", l, "uses another input type than lane 0");
    const auto* m = static_cast<const MmaLane*>(args[l]->data);
    const int g = l >> 2, t = l & 3;
    for (int i = 0; i < 8; ++i) {
      a[g + 8 * ((i >> 1) & 1)][2 * t + (i & 1) + 8 * (i >> 2)] = half_at(m->a[i / 2], i & 1, bf16);
    }
    for (int i = 0; i < 4; ++i) b[2 * t + (i & 1) + 8 * (i >> 1)][g] = half_at(m->b[i / 2], i & 1, bf16);
    for (int i = 0; i < 4; ++i) c[g + 8 * (i >> 1)][2 * t + (i & 1)] = m->c[i];
  }
  // Products of 16-bit values are exact in fp32; the sum is formed in fp64 and rounded once (a tensor core rounds
  // its internal sums differently: results may differ from a GPU's in the last bits).
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    float* d = static_cast<const MmaLane*>(args[l]->data)->d;
    for (int i = 0; i < 4; ++i) {
      const int r = g + 8 * (i >> 1), col = 2 * t + (i & 1);
      double s = c[r][col];
      for (int k = 0; k < 16; ++k) s += double(a[r][k]) * double(b[k][col]);
      d[i] = float(s);
    }
  }
  return "";
}

std::string ldmatrix(unsigned mask, LaneArg* const (&args)[32]) {
  if (mask != 0xffffffffu) return "ldmatrix needs all 32 lanes (mask 0xffffffff)";
  const int num = args[0]->arg & 0xff;
  const bool trans = args[0]->arg >> 8;
  uint16_t m[4][8][8];
  for (int j = 0; j < num; ++j) {
    for (int r = 0; r < 8; ++r) {
      const int l = 8 * j + r;
      if (args[l]->arg != args[0]->arg) return lane_error("ldmatrix", l, "uses another shape than lane 0");
      const void* row = static_cast<const LdmatrixLane*>(args[l]->data)->row;
      if (reinterpret_cast<uintptr_t>(row) % 16) {
        return lane_error("ldmatrix", l, "gives a row address not aligned to 16 bytes");
      }
      std::memcpy(m[j][r], row, 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    uint32_t* regs = static_cast<const LdmatrixLane*>(args[l]->data)->regs;
    for (int j = 0; j < num; ++j) {
      const int q = l / 4, p = 2 * (l % 4);
      const uint16_t lo = trans ? m[j][p][q] : m[j][q][p], hi = trans ? m[j][p + 1][q] : m[j][q][p + 1];
      regs[j] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  }
  return "";
}

}  // namespace

std::string complete_collective(WarpOp op, unsigned mask, LaneArg* const (&args)[32]) {
  switch (op) {
    case WarpOp::Sync: return "";
    case WarpOp::Ballot:
    case WarpOp::Any:
    case WarpOp::All: {
      unsigned ballot = 0;
      for (int l = 0; l < 32; ++l) {
        if (args[l] && args[l]->value) ballot |= 1u << l;
      }
      const uint64_t r = op == WarpOp::Ballot ? ballot : op == WarpOp::Any ? ballot != 0 : ballot == mask;
      for (int l = 0; l < 32; ++l) {
        if (args[l]) args[l]->result = r;
      }
      return "";
    }
    case WarpOp::Mma: return mma(mask, args);
    case WarpOp::Ldmatrix: return ldmatrix(mask, args);
    default: return shuffle(op, mask, args);
  }
}

void mma_m16n8k16(bool bf16, float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], const float (&c)[4],
                  const Site& site) {
  float out[4];  // d may alias c
  MmaLane lane{a, b, c, out};
  LaneArg arg;
  arg.arg = bf16;
  arg.data = &lane;
  warp_collective(WarpOp::Mma, 0xffffffffu, arg, site);
  for (int i = 0; i < 4; ++i) d[i] = out[i];
}

void ldmatrix(int num, bool trans, uint32_t* regs, const void* row, const Site& site) {
  LdmatrixLane lane{row, regs};
  LaneArg arg;
  arg.arg = num | int(trans) << 8;
  arg.data = &lane;
  warp_collective(WarpOp::Ldmatrix, 0xffffffffu, arg, site);
}

}  // namespace eurokernels::sim
