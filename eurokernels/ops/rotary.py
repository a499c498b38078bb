"""Rotary position embeddings (RoPE): rotate q and k by position-dependent angles, both in one launch.

Registered ops (schema below):
  eurokernels::rotary   (q, k, cos, sin, ...) -> (q_out, k_out)      out of place; its own backward (conjugated)
  eurokernels::rotary_  (q!, k!, cos, sin, ...) -> ()                 in place (mutates q and k)
The backward of a rotation is the rotation by the opposite angle, so both directions are the SAME kernel with a
``conjugate`` flag (Triton constexpr CONJUGATE, a runtime bool in the C++ kernels), never a second kernel.
Backends: reference (eurokernels/reference.py), cpu (csrc/rotary/rotary_cpu.cpp),
triton (eurokernels/triton/rotary.py), cuda (csrc/rotary/rotary.cu).

Value checks (positions inside the cos/sin table, cu_seqlens consistent with the total length) need the values on
the host. They run for CPU tensors, inside the op (so they also run under torch.compile). For CUDA tensors they are
skipped, because they would synchronize the stream; instead, every GPU kernel (and the reference) gives NaN in the
rotated features of a token whose position is outside the table or who lies outside every packed sequence, and
never reads outside the table. A ``cu_seqlens[-1]`` larger than the total length cannot be detected on the GPU.
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op, kernel_table

ROPE_TYPES = ("default", "linear", "dynamic", "yarn", "llama3")
INDEX_DTYPES = (torch.int32, torch.int64)


def apply_rotary(q, k, cos, sin, *, position_ids=None, cu_seqlens=None, interleaved=False, inplace=False,
                 backend=None):
    """Apply rotary position embeddings to q and k (FlashAttention layout); returns ``(q_out, k_out)``.

    Args:
        q: ``[batch, seqlen, n_q_heads, head_dim]``, or ``[total_tokens, n_q_heads, head_dim]`` with cu_seqlens.
            float32 / bfloat16 / float16. Any strides (e.g. views split from a fused QKV projection); a unit
            stride along head_dim avoids a copy.
        k: the same with ``n_kv_heads`` heads (may differ from q's: GQA / MQA), same dtype and token layout.
        cos, sin: ``[max_positions, rotary_dim // 2]`` tables (see rotary_cos_sin), float32 or q's dtype.
            ``rotary_dim <= head_dim``; features past rotary_dim pass through unchanged (partial rotary).
            The tables are constants: no gradient flows to them (an error if they require grad).
        position_ids: ``[batch, seqlen]`` (``[total_tokens]`` when packed) int32/int64 positions; used when given.
        cu_seqlens: int32 ``[n_seqs + 1]`` offsets of packed sequences; positions restart at 0 in each.
        interleaved: False: NeoX / Llama pairs (i, i + rotary_dim/2); True: GPT-J pairs (2i, 2i + 1).
        inplace: write into q and k and return them. Autograd stays correct (q and k must not be leaves that
            require grad, as for any in-place op).
        backend: "reference" | "cpu" | "triton" | "cuda" | None (see eurokernels.use_backend).

    Returns ``(q_out, k_out)`` with q's and k's shapes and dtype (q and k themselves when ``inplace``).
    Positions out of the table, or a cu_seqlens that does not match the total length, raise a ValueError for CPU
    tensors; on CUDA they are not checked (no host sync): see the module docstring.
    """
    _checks.check_tensor("q", q, dtypes=None)
    backend = _backend.resolve(backend, q)
    position_ids, cu_seqlens = _check(q, k, cos, sin, position_ids, cu_seqlens, interleaved, inplace,
                                      _checks.float_dtypes(backend))
    cos, sin = cos.contiguous(), sin.contiguous()
    cos, sin, position_ids, cu_seqlens = _checks.replicated_like(q, cos, sin, position_ids, cu_seqlens)
    if not inplace:
        return torch.ops.eurokernels.rotary(q, k, cos, sin, position_ids, cu_seqlens, interleaved, False, backend)
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        for name, t in (("q", q), ("k", k)):  # checked before anything is written (autograd would say it after)
            if t.requires_grad and t.is_leaf:
                raise RuntimeError(f"{name}: a leaf tensor that requires grad cannot be rotated in place; "
                                   f"use inplace=False or rotate a non-leaf (e.g. the output of the QKV projection)")
        q = _RotaryInplaceQ.apply(q, k, cos, sin, position_ids, cu_seqlens, interleaved, backend)
        k = _RotaryInplaceK.apply(k, cos, sin, position_ids, cu_seqlens, interleaved, backend)
        return q, k
    torch.ops.eurokernels.rotary_(q, k, cos, sin, position_ids, cu_seqlens, interleaved, False, backend)
    return q, k


def _check(q, k, cos, sin, position_ids, cu_seqlens, interleaved, inplace, dtypes):
    """Metadata checks (no values: they run under torch.compile without a graph break). Returns the canonical
    position_ids (int64) and cu_seqlens (int32, contiguous)."""
    packed = cu_seqlens is not None
    layout = "[total_tokens, heads, head_dim] (packed, cu_seqlens given)" if packed else \
        "[batch, seqlen, heads, head_dim]"
    _checks.check_tensor("q", q, dtypes=dtypes)
    _checks.check_tensor("k", k, dtypes=dtypes)
    for name, t in (("q", q), ("k", k)):
        if t.dim() != (3 if packed else 4):
            raise ValueError(f"{name}: expected {layout}, got shape {tuple(t.shape)}")
    _checks.check_same_device("k", k, "q", q)
    if k.dtype != q.dtype:
        raise TypeError(f"k: expected dtype {q.dtype} (that of q), got {k.dtype}")
    if k.shape[:-2] != q.shape[:-2] or k.shape[-1] != q.shape[-1]:
        raise ValueError(f"k: expected the tokens and head_dim of q {tuple(q.shape)} with any number of heads, "
                         f"got shape {tuple(k.shape)}")
    head_dim = q.shape[-1]
    if head_dim % 2:
        raise ValueError(f"q: head_dim must be even, got {head_dim}")
    for name, t in (("cos", cos), ("sin", sin)):
        _checks.check_tensor(name, t, dtypes=None, dim=2)
        _checks.check_same_device(name, t, "q", q)
        if t.dtype not in (torch.float32, q.dtype):
            raise TypeError(f"{name}: expected dtype torch.float32 or {q.dtype} (that of q), got {t.dtype}")
        if t.requires_grad and torch.is_grad_enabled():
            raise ValueError(f"{name}: the cos/sin table gets no gradient; pass it detached (requires_grad=False)")
    if sin.shape != cos.shape or sin.dtype != cos.dtype:
        raise ValueError(f"sin: expected the shape {tuple(cos.shape)} and dtype {cos.dtype} of cos, "
                         f"got {tuple(sin.shape)} and {sin.dtype}")
    if cos.shape[0] < 1 or cos.shape[1] < 1 or 2 * cos.shape[1] > head_dim:
        raise ValueError(f"cos: expected [max_positions >= 1, rotary_dim // 2] with 1 <= rotary_dim // 2 <= "
                         f"head_dim // 2 = {head_dim // 2}, got shape {tuple(cos.shape)}")
    if not isinstance(interleaved, bool):
        raise TypeError(f"interleaved: expected a bool, got {type(interleaved).__name__}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace: expected a bool, got {type(inplace).__name__}")
    if cu_seqlens is not None:
        _checks.check_tensor("cu_seqlens", cu_seqlens, dtypes=INDEX_DTYPES, dim=1)
        _checks.check_same_device("cu_seqlens", cu_seqlens, "q", q)
        if cu_seqlens.shape[0] < 2:
            raise ValueError(f"cu_seqlens: expected [n_seqs + 1] offsets with n_seqs >= 1, got shape "
                             f"{tuple(cu_seqlens.shape)}")
        cu_seqlens = cu_seqlens.to(torch.int32).contiguous()
    if position_ids is not None:
        _checks.check_tensor("position_ids", position_ids, dtypes=INDEX_DTYPES)
        _checks.check_same_device("position_ids", position_ids, "q", q)
        if position_ids.shape != q.shape[:-2]:
            raise ValueError(f"position_ids: expected shape {tuple(q.shape[:-2])} (the tokens of q), "
                             f"got {tuple(position_ids.shape)}")
        position_ids = position_ids.to(torch.int64)
    elif cu_seqlens is None and q.shape[1] > cos.shape[0]:
        raise ValueError(f"q: seqlen {q.shape[1]} exceeds the {cos.shape[0]} positions of the cos/sin table")
    return position_ids, cu_seqlens


def _check_values(q, cos, position_ids, cu_seqlens):
    """Value checks for CPU tensors (each reads a few small tensors); skipped on CUDA to avoid a host sync."""
    if q.device.type != "cpu":
        return
    n_pos = cos.shape[0]
    if cu_seqlens is not None:
        total = q.shape[0]
        cu = cu_seqlens.to(torch.int64)
        lengths = cu[1:] - cu[:-1]
        if cu[0].item() != 0 or bool((lengths < 0).any()) or cu[-1].item() != total:
            raise ValueError(f"cu_seqlens: expected non-decreasing offsets from 0 to the total length {total} of q, "
                             f"got {cu.tolist() if cu.numel() <= 8 else cu[:4].tolist() + ['...', cu[-1].item()]}")
        if position_ids is None and lengths.numel() and lengths.max().item() > n_pos:
            raise ValueError(f"cu_seqlens: a sequence of {lengths.max().item()} tokens exceeds the {n_pos} "
                             f"positions of the cos/sin table")
    if position_ids is not None and position_ids.numel():
        lo, hi = position_ids.min().item(), position_ids.max().item()
        if lo < 0 or hi >= n_pos:
            raise ValueError(f"position_ids: expected values in [0, {n_pos}) (the rows of the cos/sin table), "
                             f"got values in [{lo}, {hi}]")


# --- backends -----------------------------------------------------------------------------------------------------
# Each kernel takes 4-D [batch, seqlen, heads, head_dim] views with a unit stride along head_dim (any other
# strides), the outputs (views of the same shapes; the inputs themselves when in place; None: the kernel allocates
# fresh contiguous ones), the tables, position_ids as int64 [batch * seqlen] or None, cu_seqlens as int32 or None,
# interleaved, conjugate; it returns (q_out, k_out).


def _as_4d(t):
    return t if t.dim() == 4 else t.unsqueeze(0)


def _unit_last(t):
    return t if t.shape[-1] <= 1 or t.stride(-1) == 1 else t.contiguous()


def _flat_positions(position_ids):
    return None if position_ids is None else position_ids.reshape(-1).contiguous()


def _kernel_impl(kernel):
    def out_of_place(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
        _check_values(q, cos, position_ids, cu_seqlens)
        q_out, k_out = kernel(_unit_last(_as_4d(q)), _unit_last(_as_4d(k)), None, None, cos.contiguous(),
                              sin.contiguous(), _flat_positions(position_ids), cu_seqlens, interleaved, conjugate)
        return q_out.view(q.shape), k_out.view(k.shape)

    def in_place(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
        if (q.shape[-1] > 1 and q.stride(-1) != 1) or (k.shape[-1] > 1 and k.stride(-1) != 1):
            # The kernels vectorize along head_dim: rotate a unit-stride copy and write it back.
            q_out, k_out = out_of_place(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate)
            q.copy_(q_out)
            k.copy_(k_out)
            return
        _check_values(q, cos, position_ids, cu_seqlens)
        q4, k4 = _as_4d(q), _as_4d(k)
        kernel(q4, k4, q4, k4, cos.contiguous(), sin.contiguous(), _flat_positions(position_ids), cu_seqlens,
               interleaved, conjugate)

    return out_of_place, in_place


def _reference_kernel(q4, k4, q_out, k_out, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
    """eurokernels/reference.py with the compiled kernels' arguments: 4-D q/k (packed tokens as one row), flat
    position_ids, optional outputs (q_out is q4 itself in place)."""
    packed = cu_seqlens is not None
    q, k = (q4[0], k4[0]) if packed else (q4, k4)
    q_rot, k_rot = ref.apply_rotary(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate)
    if packed:
        q_rot, k_rot = q_rot[None], k_rot[None]
    if q_out is None:
        return q_rot, k_rot
    q_out.copy_(q_rot)
    k_out.copy_(k_rot)
    return q_out, k_out


_IMPLS = {b: _kernel_impl(k) for b, k in kernel_table("rotary", "rotate", _reference_kernel).items()}


def _fake_forward(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
    return (torch.empty_like(q, memory_format=torch.contiguous_format),
            torch.empty_like(k, memory_format=torch.contiguous_format))


def _fake_inplace(q, k, cos, sin, position_ids, cu_seqlens, interleaved, conjugate):
    return None


_ARGS = ("Tensor cos, Tensor sin, Tensor? position_ids, Tensor? cu_seqlens, bool interleaved, bool conjugate, "
         "str backend")

_fwd = define_op(
    "rotary", f"(Tensor q, Tensor k, {_ARGS}) -> (Tensor, Tensor)",
    impls={b: out_of_place for b, (out_of_place, _) in _IMPLS.items()},
    fake=_fake_forward, family="rotary",
)

_inplace = define_op(
    "rotary_", f"(Tensor(a!) q, Tensor(b!) k, {_ARGS}) -> ()",
    impls={b: in_place for b, (_, in_place) in _IMPLS.items()},
    fake=_fake_inplace, family="rotary", mutates_args=("q", "k"),
)


def _setup_context(ctx, inputs, output):
    _, _, cos, sin, position_ids, cu_seqlens, interleaved, conjugate, backend = inputs
    ctx.save_for_backward(cos, sin, position_ids, cu_seqlens)
    ctx.interleaved, ctx.conjugate, ctx.backend = interleaved, conjugate, backend


def _backward(ctx, dq_out, dk_out):
    cos, sin, position_ids, cu_seqlens = ctx.saved_tensors
    # The transpose of a rotation is the rotation by the opposite angle: the same op, conjugated.
    dq, dk = _fwd(dq_out, dk_out, cos, sin, position_ids, cu_seqlens, ctx.interleaved, not ctx.conjugate,
                  ctx.backend)
    return dq, dk, None, None, None, None, None, None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)


def _no_heads(t):
    """A [..., 0, head_dim] tensor: the op's other operand when only one of q / k needs rotating."""
    return t.new_empty((*t.shape[:-2], 0, t.shape[-1]))


class _RotaryInplaceQ(torch.autograd.Function):
    """Autograd for the in-place op. torch.library cannot attach a formula to a mutating op, and the autograd engine
    forbids one Function from returning two in-place-modified views (q and k usually are views of one QKV buffer).
    So this Function rotates q AND k in one launch of eurokernels::rotary_ but claims only q as its output;
    _RotaryInplaceK then claims k (already rotated; its forward does no work). The version counters of q and k are
    bumped by the real write, so a stale saved q or k is still caught. Each backward is the out-of-place op,
    conjugated, on its own gradient."""

    @staticmethod
    def forward(ctx, q, k, cos, sin, position_ids, cu_seqlens, interleaved, backend):
        torch.ops.eurokernels.rotary_(q, k, cos, sin, position_ids, cu_seqlens, interleaved, False, backend)
        ctx.mark_dirty(q)
        ctx.save_for_backward(cos, sin, position_ids, cu_seqlens)
        ctx.interleaved, ctx.backend = interleaved, backend
        return q

    @staticmethod
    def backward(ctx, dq_out):
        cos, sin, position_ids, cu_seqlens = ctx.saved_tensors
        dq, _ = _fwd(dq_out, _no_heads(dq_out), cos, sin, position_ids, cu_seqlens, ctx.interleaved, True,
                     ctx.backend)
        return dq, None, None, None, None, None, None, None


class _RotaryInplaceK(torch.autograd.Function):
    """The k half of _RotaryInplaceQ: k was rotated there; this marks it modified and carries its backward."""

    @staticmethod
    def forward(ctx, k, cos, sin, position_ids, cu_seqlens, interleaved, backend):
        ctx.mark_dirty(k)
        ctx.save_for_backward(cos, sin, position_ids, cu_seqlens)
        ctx.interleaved, ctx.backend = interleaved, backend
        return k

    @staticmethod
    def backward(ctx, dk_out):
        cos, sin, position_ids, cu_seqlens = ctx.saved_tensors
        _, dk = _fwd(_no_heads(dk_out), dk_out, cos, sin, position_ids, cu_seqlens, ctx.interleaved, True,
                     ctx.backend)
        return dk, None, None, None, None, None, None


# --- cos/sin tables -------------------------------------------------------------------------------------------------

_REQUIRED = {
    "default": (),
    "linear": ("factor",),
    "dynamic": ("factor", "original_max_position_embeddings"),
    "yarn": ("factor", "original_max_position_embeddings"),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
}


def rotary_cos_sin(max_positions, rotary_dim, *, base=10000.0, scaling=None, dtype=torch.float32, device=None):
    """The cos/sin tables ``[max_positions, rotary_dim // 2]`` for apply_rotary.

    ``scaling``: None, or a dict in Hugging Face's ``rope_scaling`` form with ``"rope_type"`` (or the legacy
    ``"type"``) one of "linear", "dynamic", "yarn", "llama3" (or "default") and that type's parameters:
      linear:  factor
      dynamic: factor, original_max_position_embeddings (the trained context); the table is the one HF's
               dynamic-NTK formula gives for a sequence of max_positions tokens
      yarn:    factor, original_max_position_embeddings; optional attention_factor, mscale, mscale_all_dim,
               beta_fast (32), beta_slow (1), truncate (True). The attention factor multiplies cos and sin.
      llama3:  factor, low_freq_factor, high_freq_factor, original_max_position_embeddings
    The numbers are HF's: inv_freq in fp32 with HF's arithmetic, angle = position * inv_freq as one fp32 product,
    cos/sin (times the attention factor) in fp32, then cast to ``dtype``. (Checked bitwise equal to the tables of
    transformers 5.23.0's LlamaRotaryEmbedding for all five types; for yarn, HF 5 takes ``factor`` from the dict
    as we do, and for dynamic its ``max_position_embeddings`` is our ``original_max_position_embeddings``.)
    """
    _checks.check_number("max_positions", max_positions, min_value=1)
    _checks.check_number("rotary_dim", rotary_dim, min_value=2)
    if int(max_positions) != max_positions:
        raise TypeError(f"max_positions: expected an integer, got {max_positions}")
    if int(rotary_dim) != rotary_dim or rotary_dim % 2:
        raise ValueError(f"rotary_dim: expected an even integer, got {rotary_dim}")
    _checks.check_number("base", base, min_value=1e-30)
    if dtype not in _checks.REFERENCE_DTYPES:
        raise TypeError(f"dtype: expected one of float32, bfloat16, float16, float64, got {dtype}")
    if scaling is not None:
        if not isinstance(scaling, dict):
            raise TypeError(f"scaling: expected None or a dict (Hugging Face rope_scaling), got "
                            f"{type(scaling).__name__}")
        rope_type = scaling.get("rope_type", scaling.get("type"))
        _checks.check_choice("scaling['rope_type']", rope_type, ROPE_TYPES)
        for key in _REQUIRED[rope_type]:
            if key not in scaling:
                raise ValueError(f"scaling: rope_type {rope_type!r} needs {key!r}")
            _checks.check_number(f"scaling[{key!r}]", scaling[key], min_value=0)
        if rope_type in ("linear", "dynamic", "yarn", "llama3") and scaling["factor"] <= 0:
            raise ValueError(f"scaling['factor']: expected a positive number, got {scaling['factor']}")
        if rope_type == "llama3" and scaling["high_freq_factor"] <= scaling["low_freq_factor"]:
            raise ValueError("scaling['high_freq_factor']: expected a number > low_freq_factor")
        if rope_type == "dynamic" and rotary_dim <= 2:
            raise ValueError("rotary_dim: dynamic NTK scaling needs rotary_dim > 2")
    return ref.rotary_cos_sin(int(max_positions), int(rotary_dim), float(base), scaling, dtype, device)
