"""Attention: exact softmax attention computed blockwise (FlashAttention-2), forward and backward.

Features packed multilingual training needs: GQA/MQA without expanding K/V, causal masks aligned bottom-right,
sliding windows, Gemma-2 softcapping, packed variable-length documents (cu_seqlens), the log-sum-exp output.

Registered ops (schema below):
  eurokernels::attention           -> (out, lse)
  eurokernels::attention_backward  -> (dq, dk, dv)
Backends: reference (eurokernels/reference.py), cpu (csrc/attention/attention_cpu_{fwd,bwd}.cpp),
triton (eurokernels/triton/attention.py), cuda (csrc/attention/attention_kernels.cuh: FlashAttention-2 on tensor
cores, mma.sync; float16 / bfloat16 only, run on CPU tensors under the CUDA simulation in CI).

Every kernel sees the packed form: q [total_q, hq, d], k/v [total_k, hk, d] (unit stride along d, any token and
head strides), int32 cu_seqlens_q/k [n + 1], lse [hq, total_q]. The [b, s, h, d] form is viewed as b documents of
s tokens; its lse is permuted to [b, hq, s] outside the kernels (b * hq * s floats).
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op, kernel_table

MAX_HEAD_DIM = 256
CUDA_DTYPES = (torch.float16, torch.bfloat16)  # the tensor cores' input types (see the docstring on float32)


def attention(q, k, v, *, causal=False, softmax_scale=None, window_size=(-1, -1), softcap=0.0, cu_seqlens_q=None,
              cu_seqlens_k=None, max_seqlen_q=None, max_seqlen_k=None, return_lse=False, backend=None):
    """softmax(mask(cap(scale * q @ k^T))) @ v without materializing the scores; gradients for q, k and v.

    Args:
        q: ``[batch, seqlen_q, heads_q, head_dim]``, or packed ``[total_q, heads_q, head_dim]`` with cu_seqlens.
        k, v: ``[batch, seqlen_k, heads_k, head_dim]`` (packed: ``[total_k, heads_k, head_dim]``); heads_q must be a
            multiple of heads_k (GQA/MQA: query head h uses key/value head h // (heads_q // heads_k)).
            head_dim: a multiple of 8, at most 256. dtypes: float16 / bfloat16 on every backend, float32 on
            reference, cpu and triton (triton: head_dim <= 128), float64 on reference (gradcheck). The cuda
            backend multiplies on tensor cores, whose inputs are 16-bit: float32 inputs raise a TypeError naming
            float16 / bfloat16 rather than being converted behind the caller's back (convert them, or pick
            another backend). q, k and v share one dtype and device.
        causal: query i sees keys j <= i + seqlen_k - seqlen_q (aligned bottom-right, as FlashAttention does);
            the same as ``window_size=(left, 0)``.
        softmax_scale: multiplies q.k; default 1 / sqrt(head_dim).
        window_size: ``(left, right)``: query i sees keys from ``left`` before to ``right`` after its aligned
            position i + seqlen_k - seqlen_q; -1 means unbounded on that side.
        softcap: if > 0, scores become ``softcap * tanh(scores / softcap)`` before the softmax (Gemma 2).
        cu_seqlens_q, cu_seqlens_k: int32 ``[n_docs + 1]`` cumulative document lengths of the packed form; each
            document attends only within itself. Rows outside every document give zeros.
        max_seqlen_q, max_seqlen_k: Python ints bounding the packed documents' lengths (they size the kernel grid).
            Pass them to avoid a device-to-host sync (and a graph break under torch.compile); when omitted they
            are read from cu_seqlens.
        return_lse: also return lse = log(sum(exp(scores))) over the visible keys, fp32 (fp64 for fp64 inputs),
            ``[batch, heads_q, seqlen_q]`` (packed: ``[heads_q, total_q]``). It carries no gradient.
        backend: "reference" | "cpu" | "triton" | "cuda" | None (see eurokernels.use_backend).

    Returns:
        ``out`` with q's shape and dtype, or ``(out, lse)``. A query row that sees no key (possible with windows,
        or with causal and seqlen_q > seqlen_k) outputs zeros, has lse = -inf and gets zero gradients.
        The backward is deterministic: the same inputs give bitwise-equal gradients (no atomics; on the cpu
        backend, for a given number of threads, which decides how a GQA group's dK/dV is split before a
        fixed-order sum; on cuda, the dK/dV of a key tile loop over the group's q heads and query tiles in a fixed
        order, and dQ has its own pass).
    """
    varlen = cu_seqlens_q is not None or cu_seqlens_k is not None
    backend, softmax_scale, left, right = check_args(q, k, v, varlen, causal, softmax_scale, window_size, softcap,
                                                     backend)
    if varlen:
        max_seqlen_q = _check_varlen("q", q, cu_seqlens_q, max_seqlen_q)
        max_seqlen_k = _check_varlen("k", q, cu_seqlens_k, max_seqlen_k)
        if cu_seqlens_q.shape != cu_seqlens_k.shape:
            raise ValueError(f"cu_seqlens_k: expected the shape of cu_seqlens_q {tuple(cu_seqlens_q.shape)} (one "
                             f"entry per document + 1), got {tuple(cu_seqlens_k.shape)}")
    else:
        for name, value in (("max_seqlen_q", max_seqlen_q), ("max_seqlen_k", max_seqlen_k)):
            if value is not None:
                raise ValueError(f"{name}: only meaningful with cu_seqlens (the packed form); leave it None")
        max_seqlen_q, max_seqlen_k = q.shape[1], k.shape[1]
    cu_seqlens_q, cu_seqlens_k = _checks.replicated_like(q, cu_seqlens_q, cu_seqlens_k)
    out, lse = torch.ops.eurokernels.attention(q, k, v, cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k,
                                               float(softmax_scale), left, right, float(softcap), backend)
    return (out, lse) if return_lse else out


def check_args(q, k, v, varlen, causal, softmax_scale, window_size, softcap, backend):
    """The checks of attention()'s arguments (context_parallel_attention takes the same): returns the resolved
    backend, the softmax scale and the window (causal folded in as right = 0)."""
    _checks.check_tensor("q", q, dtypes=None)
    backend = _backend.resolve(backend, q)
    _check_qkv(q, k, v, varlen, CUDA_DTYPES if backend == "cuda" else _checks.float_dtypes(backend))
    left, right = _check_window(window_size)
    if causal not in (True, False):
        raise TypeError(f"causal: expected a bool, got {causal!r}")
    if causal:
        right = 0
    if softmax_scale is None:
        softmax_scale = q.shape[-1] ** -0.5
    _checks.check_number("softmax_scale", softmax_scale)
    _checks.check_number("softcap", softcap, min_value=0.0)
    return backend, softmax_scale, left, right


def _check_qkv(q, k, v, varlen, dtypes):
    dim = 3 if varlen else 4
    layout = "[total, heads, head_dim] (packed, with cu_seqlens)" if varlen else "[batch, seqlen, heads, head_dim]"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _checks.check_tensor(name, t, dtypes=dtypes)
        if t.dim() != dim:
            raise ValueError(f"{name}: expected {layout}, got shape {tuple(t.shape)}")
    for name, t in (("k", k), ("v", v)):
        _checks.check_same_device(name, t, "q", q)
        if t.dtype != q.dtype:
            raise TypeError(f"{name}: expected dtype {q.dtype} (that of q), got {t.dtype}")
    if v.shape != k.shape:
        raise ValueError(f"v: expected the shape of k {tuple(k.shape)}, got {tuple(v.shape)}")
    if not varlen and k.shape[0] != q.shape[0]:
        raise ValueError(f"k: expected batch size {q.shape[0]} (that of q), got {k.shape[0]}")
    d = q.shape[-1]
    if d % 8 != 0 or not 8 <= d <= MAX_HEAD_DIM:
        raise ValueError(f"q: expected head_dim a multiple of 8 in [8, {MAX_HEAD_DIM}], got {d}")
    if k.shape[-1] != d:
        raise ValueError(f"k: expected head_dim {d} (that of q), got {k.shape[-1]}")
    hq, hk = q.shape[-2], k.shape[-2]
    if hk == 0 or hq % hk != 0:
        raise ValueError(f"k: expected a number of heads dividing q's {hq} (GQA), got {hk}")


def _check_window(window_size):
    if not isinstance(window_size, (tuple, list)) or len(window_size) != 2:
        raise ValueError(f"window_size: expected a pair (left, right), got {window_size!r}")
    for w in window_size:
        if isinstance(w, bool) or not isinstance(w, int) or w < -1:
            raise ValueError(f"window_size: expected ints >= 0 or -1 (unbounded), got {window_size!r}")
    return int(window_size[0]), int(window_size[1])


def _check_varlen(which, q, cu, max_seqlen):
    name = f"cu_seqlens_{which}"
    if cu is None:
        other = "cu_seqlens_k" if which == "q" else "cu_seqlens_q"
        raise ValueError(f"{name}: expected an int32 tensor since {other} is given (the packed form needs both)")
    _checks.check_tensor(name, cu, dtypes=(torch.int32,), dim=1)
    _checks.check_same_device(name, cu, "q", q)
    if cu.shape[0] < 2:
        raise ValueError(f"{name}: expected at least 2 entries (one document), got shape {tuple(cu.shape)}")
    if max_seqlen is None:  # one device-to-host sync; pass max_seqlen_* to avoid it
        return int((cu[1:] - cu[:-1]).max().item())
    if isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int) or max_seqlen < 0:
        raise ValueError(f"max_seqlen_{which}: expected a Python int >= 0, got {max_seqlen!r}")
    return max_seqlen


# --- backends: kernels take the packed form (see the module docstring) ----------------------------------------

def _packed(q, k, v, cu_q, cu_k, max_q, max_k):
    """The packed views of q/k/v and the cu_seqlens a kernel needs (dense [b, s, h, d] is b documents of s)."""
    if cu_q is not None:
        return q, k, v, cu_q, cu_k, max_q, max_k
    b, sq, sk = q.shape[0], q.shape[1], k.shape[1]
    steps = torch.arange(b + 1, dtype=torch.int32, device=q.device)
    return (q.reshape(b * sq, *q.shape[2:]), k.reshape(b * sk, *k.shape[2:]), v.reshape(b * sk, *v.shape[2:]),
            steps * sq, steps * sk, sq, sk)


def _unit_last(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _forward_packed(kernel):
    """Adapt a packed kernel (q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap) -> (out, lse [hq,
    total_q]) to the op's signature (either layout)."""
    def run(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
        qp, kp, vp, cq, ck, mq, mk = _packed(q, k, v, cu_q, cu_k, max_q, max_k)
        out, lse = kernel(_unit_last(qp), _unit_last(kp), _unit_last(vp), cq, ck, mq, mk, scale, left, right,
                          softcap)
        if cu_q is not None:
            return out, lse
        b, sq, hq = q.shape[0], q.shape[1], q.shape[2]
        return out.view(q.shape), lse.view(hq, b, sq).transpose(0, 1).contiguous()
    return run


def _backward_packed(kernel):
    def run(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
        qp, kp, vp, cq, ck, mq, mk = _packed(q, k, v, cu_q, cu_k, max_q, max_k)
        if cu_q is None:
            lse = lse.transpose(0, 1).reshape(q.shape[2], -1)
            dout, out = dout.reshape(qp.shape), out.reshape(qp.shape)
        dq, dk, dv = kernel(_unit_last(dout), _unit_last(qp), _unit_last(kp), _unit_last(vp), _unit_last(out),
                            lse.contiguous(), cq, ck, mq, mk, scale, left, right, softcap)
        return dq.view(q.shape), dk.view(k.shape), dv.view(v.shape)
    return run


def _reference_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    out, lse = ref.attention(q, k, v, softmax_scale=scale, window_size=(left, right), softcap=softcap,
                             cu_seqlens_q=cu_q, cu_seqlens_k=cu_k)
    return out.contiguous(), lse.contiguous()  # the fake impl promises contiguous outputs


def _reference_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    # from out and lse, as the kernels: the backward of a block of a larger softmax (ring attention) is its share
    grads = ref.attention_backward(dout, q, k, v, softmax_scale=scale, window_size=(left, right), softcap=softcap,
                                   cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, out=out, lse=lse)
    return tuple(g.contiguous() for g in grads)


def _lse_dtype(q):
    return torch.float64 if q.dtype == torch.float64 else torch.float32


def _fake_forward(q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    lse_shape = (q.shape[1], q.shape[0]) if cu_q is not None else (q.shape[0], q.shape[2], q.shape[1])
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(lse_shape, dtype=_lse_dtype(q))


def _fake_backward(dout, q, k, v, out, lse, cu_q, cu_k, max_q, max_k, scale, left, right, softcap):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (q, k, v))


_fwd = define_op(
    "attention",
    "(Tensor q, Tensor k, Tensor v, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k, int max_seqlen_q, int max_seqlen_k,"
    " float softmax_scale, int window_left, int window_right, float softcap, str backend) -> (Tensor, Tensor)",
    impls={b: _forward_packed(k) for b, k in kernel_table("attention", "forward", _reference_forward).items()},
    fake=_fake_forward, family="attention",
)

_bwd = define_op(
    "attention_backward",
    "(Tensor dout, Tensor q, Tensor k, Tensor v, Tensor out, Tensor lse, Tensor? cu_seqlens_q, Tensor? cu_seqlens_k,"
    " int max_seqlen_q, int max_seqlen_k, float softmax_scale, int window_left, int window_right, float softcap,"
    " str backend) -> (Tensor, Tensor, Tensor)",
    impls={b: _backward_packed(k) for b, k in kernel_table("attention", "backward", _reference_backward).items()},
    fake=_fake_backward, family="attention",
)


def _setup_context(ctx, inputs, output):
    q, k, v, cu_q, cu_k, max_q, max_k, scale, left, right, softcap, backend = inputs
    out, lse = output
    ctx.save_for_backward(q, k, v, out, lse, cu_q, cu_k)
    ctx.params = (max_q, max_k, scale, left, right, softcap, backend)
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, dout, _dlse):
    q, k, v, out, lse, cu_q, cu_k = ctx.saved_tensors
    if dout is None:  # only lse was used: it carries no gradient
        return (torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)) + (None,) * 9
    dq, dk, dv = _bwd(dout, q, k, v, out, lse, cu_q, cu_k, *ctx.params)
    return (dq, dk, dv) + (None,) * 9


_fwd.register_autograd(_backward, setup_context=_setup_context)
