"""Softmax and log-softmax over the last dimension, any length (a 256K-vocabulary row does not fit in one block).

Registered ops:
  eurokernels::softmax           (x, log) -> (y, lse [rows] fp32)
  eurokernels::softmax_backward  (dy, x, lse, log) -> dx
Backends: reference (eurokernels/reference.py), cpu (csrc/softmax/softmax_cpu.cpp, sharing the blockwise online softmax
of csrc/online_softmax_cpu.h), triton (eurokernels/triton/softmax.py), cuda (csrc/softmax/softmax.cu,
sharing the online softmax of csrc/online_softmax.cuh with the cross-entropy kernel). The forward reads the input once
for the log-sum-exp (online softmax) and once more for the output (from cache for rows that fit in L2). The backward
recomputes p = exp(x - lse) in fp32 from the input and the saved lse rather than using the rounded output: with bf16
outputs on a 128K row, the output's rounding times sum(dy) made log_softmax's gradient several times less accurate than
PyTorch's (measured); same traffic either way.
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op, kernel_table


def softmax(x, dim=-1, *, backend=None):
    """``softmax(x)`` along ``dim``, fp32 math, x's dtype out. Forward and backward; any size along ``dim``."""
    return _softmax(x, dim, False, backend)


def log_softmax(x, dim=-1, *, backend=None):
    """``log_softmax(x)`` along ``dim``, fp32 math, x's dtype out. Forward and backward; any size along ``dim``."""
    return _softmax(x, dim, True, backend)


def _softmax(x, dim, log, backend):
    _checks.check_tensor("x", x, dtypes=None, min_dim=1)
    backend = _backend.resolve(backend, x)
    _checks.check_tensor("x", x, dtypes=_checks.float_dtypes(backend))
    if isinstance(dim, bool) or not isinstance(dim, int) or not -x.dim() <= dim < x.dim():
        raise ValueError(f"dim: expected an int in [{-x.dim()}, {x.dim()}), got {dim!r}")
    last = dim in (-1, x.dim() - 1)
    xt = x if last else x.movedim(dim, -1)  # the kernels work along the last dimension
    y, _ = torch.ops.eurokernels.softmax(xt, log, backend)
    return y if last else y.movedim(-1, dim)


def _forward_2d(kernel):
    def run(x, log):
        y, lse = kernel(_checks.rows_view(x), log)
        return y.view(x.shape), lse.view(x.shape[:-1])
    return run


def _backward_2d(kernel):
    def run(dy, x, lse, log):
        return kernel(_checks.rows_view(dy), _checks.rows_view(x), lse.reshape(-1).contiguous(), log).view(x.shape)
    return run


def _fake(x, log):
    return (torch.empty_like(x, memory_format=torch.contiguous_format),
            x.new_empty(x.shape[:-1], dtype=torch.float32))


def _fake_backward(dy, x, lse, log):
    return torch.empty_like(x, memory_format=torch.contiguous_format)


_fwd = define_op(
    "softmax", "(Tensor x, bool log, str backend) -> (Tensor, Tensor)",
    impls={b: _forward_2d(k) for b, k in kernel_table("softmax", "forward", ref.softmax).items()},
    fake=_fake, family="softmax",
)

_bwd = define_op(
    "softmax_backward", "(Tensor dy, Tensor x, Tensor lse, bool log, str backend) -> Tensor",
    impls={b: _backward_2d(k) for b, k in kernel_table("softmax", "backward", ref.softmax_backward).items()},
    fake=_fake_backward, family="softmax",
)


def _setup_context(ctx, inputs, output):
    x, log, backend = inputs
    ctx.save_for_backward(x, output[1])
    ctx.log, ctx.backend = log, backend


def _backward(ctx, dy, _dlse):
    x, lse = ctx.saved_tensors
    return _bwd(dy, x, lse, ctx.log, ctx.backend), None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)
