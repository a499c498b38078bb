"""Argument checks for the public functions: every message names the argument and what was expected."""
import torch

FLOAT_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
# The reference backend also takes fp64 (for gradcheck); the kernels are fp32 / bf16 / fp16.
REFERENCE_DTYPES = FLOAT_DTYPES + (torch.float64,)


def float_dtypes(backend):
    return REFERENCE_DTYPES if backend == "reference" else FLOAT_DTYPES


def check_tensor(name, t, *, dtypes=FLOAT_DTYPES, min_dim=None, dim=None):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(t).__name__}")
    if type(t) is not torch.Tensor and type(t).__name__ == "DTensor":
        from . import dtensor  # noqa: F401 -- registers the ops' sharding rules, once (eurokernels/dtensor.py)
    if dtypes is not None and t.dtype not in dtypes:
        raise TypeError(f"{name}: expected dtype in ({', '.join(str(d) for d in dtypes)}), got {t.dtype}")
    if min_dim is not None and t.dim() < min_dim:
        raise ValueError(f"{name}: expected at least {min_dim} dimension(s), got shape {tuple(t.shape)}")
    if dim is not None and t.dim() != dim:
        raise ValueError(f"{name}: expected {dim} dimension(s), got shape {tuple(t.shape)}")


def replicated_like(ref, *tensors):
    """``tensors`` as Replicate DTensors on ``ref``'s mesh when ``ref`` is a DTensor and they are plain tensors (tables,
    positions, cu_seqlens: the same on every rank by the caller's contract; DTensor refuses to mix the two kinds);
    unchanged otherwise. None stays None."""
    if type(ref) is torch.Tensor or type(ref).__name__ != "DTensor":
        return tensors
    from .dtensor import replicated_like as wrap
    return wrap(ref, tensors)


def check_same_device(name, t, ref_name, ref):
    if t.device != ref.device:
        raise ValueError(f"{name}: expected a tensor on {ref.device} (the device of {ref_name}), got {t.device}")


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")


def check_number(name, value, *, min_value=None):
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name}: expected a Python number, got {type(value).__name__}")
    if value != value or value in (float("inf"), float("-inf")):
        raise ValueError(f"{name}: expected a finite number, got {value}")
    if min_value is not None and value < min_value:
        raise ValueError(f"{name}: expected a number >= {min_value}, got {value}")


def rows_view(t):
    """``t`` as a 2-D [rows, last] tensor with a unit stride along the last dimension and any row stride.

    A view whenever the leading dimensions collapse (the common case, including slices of a wider buffer);
    otherwise (e.g. a transposed input) one copy, because the kernels vectorize along the last dimension.
    """
    t2 = t.reshape(t.shape[:-1].numel(), t.shape[-1])  # not -1: ambiguous when the last dimension is 0
    if t2.shape[1] > 1 and t2.stride(1) != 1:
        # An empty tensor counts as contiguous whatever its strides, so .contiguous() would keep them.
        t2 = t2.contiguous() if t2.numel() else t2.new_empty(t2.shape)
    return t2
