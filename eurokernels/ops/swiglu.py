"""Gated MLP activations: SwiGLU ``silu(gate) * up`` and GeGLU ``gelu(gate) * up``, forward and backward fused.

Registered ops (schema below):
  eurokernels::swiglu           (gate, up?, activation) -> y
  eurokernels::swiglu_backward  (dy, gate, up?, activation) -> (d_gate, d_up)
One op for the three activations ("silu", "gelu_tanh", "gelu"): every backend compiles it into one kernel with a
compile-time activation flag. With ``up=None`` the gate is a fused ``[..., 2 * intermediate]`` projection (gate
half, then up half) read in place, and d_gate is the one ``[..., 2 * intermediate]`` gradient (d_up is empty).
The backward recomputes the activation from gate and up: the forward saves only its inputs.
Backends: reference (eurokernels/reference.py), cpu (csrc/swiglu/swiglu_cpu.cpp),
triton (eurokernels/triton/swiglu.py), cuda (csrc/swiglu/swiglu.cu).
"""
import torch

from .. import _backend, _checks
from .. import reference as ref
from .._registry import define_op, kernel_table

# Values match enum Activation in csrc/swiglu/swiglu_common.h and ACTIVATION in eurokernels/triton/swiglu.py.
ACTIVATIONS = {"silu": 0, "gelu_tanh": 1, "gelu": 2}
APPROXIMATIONS = {"tanh": "gelu_tanh", "none": "gelu"}  # geglu's approximate= (torch's names) -> activation


def swiglu(gate, up=None, *, backend=None):
    """SwiGLU: ``silu(gate) * up`` (the MLP of Llama, Mistral, Qwen, EuroLLM, Salamandra, Teuken).

    Args:
        gate: ``[..., intermediate]`` output of the gate projection, float32 / bfloat16 / float16; any strides (a
            unit stride along the last dimension avoids a copy). With ``up=None``: ``[..., 2 * intermediate]``,
            a fused gate+up projection's output, gate half first; both halves are read in place.
        up: ``[..., intermediate]`` output of the up projection, gate's shape, dtype and device; or None.
        backend: "reference" | "cpu" | "triton" | "cuda" | None (see eurokernels.use_backend).

    Returns ``[..., intermediate]`` in gate's dtype, computed in fp32 and rounded once. Gradients flow to gate and
    up (with ``up=None``: one gradient for the fused tensor).
    """
    return _swiglu(gate, up, "silu", backend)


def geglu(gate, up=None, *, approximate="tanh", backend=None):
    """GeGLU: ``gelu(gate, approximate) * up`` (Gemma's MLP uses ``approximate="tanh"``).

    Args as :func:`swiglu`, plus ``approximate``: "tanh" (the tanh approximation, torch's and Gemma's
    ``gelu_pytorch_tanh``) or "none" (the exact, erf-based GELU).
    """
    _checks.check_choice("approximate", approximate, tuple(APPROXIMATIONS))
    return _swiglu(gate, up, APPROXIMATIONS[approximate], backend)


def _swiglu(gate, up, activation, backend):
    _checks.check_tensor("gate", gate, dtypes=None, min_dim=1)
    backend = _backend.resolve(backend, gate)
    _check(gate, up, _checks.float_dtypes(backend))
    return torch.ops.eurokernels.swiglu(gate, up, activation, backend)


def _check(gate, up, dtypes):
    _checks.check_tensor("gate", gate, dtypes=dtypes)
    if up is None:
        if gate.shape[-1] % 2:
            raise ValueError(f"gate: with up=None, expected a fused [..., 2 * intermediate] projection (an even last "
                             f"dimension), got shape {tuple(gate.shape)}")
        return
    _checks.check_tensor("up", up, dtypes=dtypes)
    _checks.check_same_device("up", up, "gate", gate)
    if up.shape != gate.shape:
        raise ValueError(f"up: expected shape {tuple(gate.shape)} (that of gate), got {tuple(up.shape)}")
    if up.dtype != gate.dtype:
        raise ValueError(f"up: expected dtype {gate.dtype} (that of gate), got {up.dtype}")


# --- backends: each takes N-D tensors and returns N-D outputs; C++/Triton kernels see 2-D row views ------------

def _rows(gate, up):
    """gate and up as 2-D [rows, intermediate] views with unit column stride; up=None: the two halves of the fused
    rows, views into the same memory (row stride 2 * intermediate)."""
    if up is not None:
        return _checks.rows_view(gate), _checks.rows_view(up)
    fused = _checks.rows_view(gate)
    n = fused.shape[1] // 2
    return fused[:, :n], fused[:, n:]


def _forward_2d(kernel):
    """Adapt a 2-D kernel (gate2, up2, activation_code) -> y2 to the op's N-D signature."""
    def run(gate, up, activation):
        g, u = _rows(gate, up)
        return kernel(g, u, ACTIVATIONS[activation]).view(*gate.shape[:-1], g.shape[1])
    return run


def _backward_2d(kernel):
    """Adapt a 2-D kernel (dy2, gate2, up2, activation_code, fused) -> (d_gate2, d_up2); with ``fused`` it returns
    d_gate2 as [rows, 2 * intermediate] (both halves) and an empty d_up2."""
    def run(dy, gate, up, activation):
        g, u = _rows(gate, up)
        dg, du = kernel(_checks.rows_view(dy), g, u, ACTIVATIONS[activation], up is None)
        return dg.view(gate.shape), (du if up is None else du.view(up.shape))
    return run


def _activation_name(code):
    return next(name for name, c in ACTIVATIONS.items() if c == code)


def _reference_forward(g2, u2, code):
    """eurokernels/reference.py with the compiled kernels' arguments."""
    return ref.swiglu(g2, u2, _activation_name(code)).contiguous()  # the layout the fake promises


def _reference_backward(dy2, g2, u2, code, fused):
    dg, du = ref.swiglu_backward(dy2, g2, u2, _activation_name(code))
    if fused:  # one [rows, 2 * intermediate] gradient, as the kernels write it
        return torch.cat([dg, du], -1), g2.new_empty(0)
    return dg.contiguous(), du.contiguous()


def _fake_forward(gate, up, activation):
    n = gate.shape[-1] // 2 if up is None else gate.shape[-1]
    return gate.new_empty(*gate.shape[:-1], n)


def _fake_backward(dy, gate, up, activation):
    return (torch.empty_like(gate, memory_format=torch.contiguous_format),
            gate.new_empty(0) if up is None else torch.empty_like(up, memory_format=torch.contiguous_format))


_fwd = define_op(
    "swiglu",
    "(Tensor gate, Tensor? up, str activation, str backend) -> Tensor",
    impls={b: _forward_2d(k) for b, k in kernel_table("swiglu", "forward", _reference_forward).items()},
    fake=_fake_forward, family="swiglu",
)

_bwd = define_op(
    "swiglu_backward",
    "(Tensor dy, Tensor gate, Tensor? up, str activation, str backend) -> (Tensor, Tensor)",
    impls={b: _backward_2d(k) for b, k in kernel_table("swiglu", "backward", _reference_backward).items()},
    fake=_fake_backward, family="swiglu",
)


def _setup_context(ctx, inputs, output):
    gate, up, activation, backend = inputs
    ctx.save_for_backward(gate, up)  # the inputs only: the backward recomputes the activation
    ctx.activation, ctx.backend = activation, backend


def _backward(ctx, dy):
    gate, up = ctx.saved_tensors
    dgate, dup = _bwd(dy, gate, up, ctx.activation, ctx.backend)
    return dgate, (dup if up is not None else None), None, None


_fwd.register_autograd(_backward, setup_context=_setup_context)
