"""torch.nn modules over the eurokernels ops (drop-in for the Hugging Face / PyTorch layers they replace)."""
import torch

from .ops.cross_entropy import cross_entropy
from .ops.linear_cross_entropy import linear_cross_entropy
from .ops.rms_norm import CASTINGS, rms_norm
from .ops.rotary import apply_rotary, rotary_cos_sin


class RMSNorm(torch.nn.Module):
    """RMSNorm with a learned scale ``offset + weight``.

    ``offset=0.0``, weight initialised to 1: Llama / Mistral / Qwen. ``offset=1.0``, weight initialised to 0 and
    ``casting="gemma"``: Gemma. ``forward(x, residual=None)`` returns ``y`` or ``(y, x + residual)``.
    """

    def __init__(self, hidden_size, eps=1e-6, offset=0.0, casting="llama", *, backend=None, device=None,
                 dtype=None):
        super().__init__()
        if casting not in CASTINGS:
            raise ValueError(f"casting: expected one of {', '.join(map(repr, CASTINGS))}, got {casting!r}")
        self.hidden_size, self.eps, self.offset, self.casting, self.backend = hidden_size, eps, offset, casting, backend
        self.weight = torch.nn.Parameter(torch.empty(hidden_size, device=device, dtype=dtype))
        self.reset_parameters()

    def reset_parameters(self):
        torch.nn.init.constant_(self.weight, 1.0 - self.offset)

    def forward(self, x, residual=None):
        return rms_norm(x, self.weight, self.eps, offset=self.offset, residual=residual, casting=self.casting,
                        backend=self.backend)

    def extra_repr(self):
        return f"{self.hidden_size}, eps={self.eps}, offset={self.offset}, casting={self.casting!r}"


class RotaryEmbedding(torch.nn.Module):
    """Rotary position embeddings with the cos/sin tables kept as (non-persistent) buffers.

    ``forward(q, k, position_ids=None, cu_seqlens=None, inplace=False)`` returns ``(q_out, k_out)``; see
    eurokernels.apply_rotary for the layouts. ``scaling`` is a Hugging Face ``rope_scaling`` dict (see
    eurokernels.rotary_cos_sin); ``rotary_dim`` (default head_dim) < head_dim rotates only the first features.
    The tables are fp32 by default (``table_dtype``); the math is fp32 either way.
    """

    def __init__(self, head_dim, max_positions, base=10000.0, scaling=None, rotary_dim=None, interleaved=False, *,
                 backend=None, device=None, table_dtype=torch.float32):
        super().__init__()
        rotary_dim = head_dim if rotary_dim is None else rotary_dim
        if rotary_dim > head_dim:
            raise ValueError(f"rotary_dim: expected at most head_dim = {head_dim}, got {rotary_dim}")
        self.head_dim, self.max_positions, self.base, self.scaling = head_dim, max_positions, base, scaling
        self.rotary_dim, self.interleaved, self.backend = rotary_dim, interleaved, backend
        cos, sin = rotary_cos_sin(max_positions, rotary_dim, base=base, scaling=scaling, dtype=table_dtype,
                                  device=device)
        self.register_buffer("cos", cos, persistent=False)
        self.register_buffer("sin", sin, persistent=False)

    def forward(self, q, k, position_ids=None, cu_seqlens=None, inplace=False):
        if q.shape[-1] != self.head_dim:
            raise ValueError(f"q: expected head_dim {self.head_dim} (this module's), got shape {tuple(q.shape)}")
        return apply_rotary(q, k, self.cos, self.sin, position_ids=position_ids, cu_seqlens=cu_seqlens,
                            interleaved=self.interleaved, inplace=inplace, backend=self.backend)

    def extra_repr(self):
        return (f"head_dim={self.head_dim}, max_positions={self.max_positions}, base={self.base}, "
                f"rotary_dim={self.rotary_dim}, interleaved={self.interleaved}, scaling={self.scaling}")


class CrossEntropyLoss(torch.nn.Module):
    """Drop-in for ``torch.nn.CrossEntropyLoss`` with class-index targets, plus z-loss, soft cap and an optional
    in-place backward (eurokernels.cross_entropy). ``forward(logits [..., V], labels [...])``."""

    def __init__(self, ignore_index=-100, reduction="mean", label_smoothing=0.0, *, z_loss=0.0, softcap=None,
                 inplace_backward=False, backend=None):
        super().__init__()
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.inplace_backward, self.backend = z_loss, softcap, inplace_backward, backend

    def forward(self, logits, labels):
        return cross_entropy(logits, labels, ignore_index=self.ignore_index, label_smoothing=self.label_smoothing,
                             z_loss=self.z_loss, softcap=self.softcap, reduction=self.reduction,
                             inplace_backward=self.inplace_backward, backend=self.backend)

    def extra_repr(self):
        return (f"ignore_index={self.ignore_index}, reduction={self.reduction!r}, "
                f"label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, softcap={self.softcap}")


class LinearCrossEntropyLoss(torch.nn.Module):
    """The LM head and its loss in one: ``cross_entropy(hidden @ weight.T + bias, labels)`` without the [N, V]
    logits (eurokernels.linear_cross_entropy). Owns the head's ``weight`` ([vocab_size, hidden_size]) and optional
    ``bias``; ``forward(hidden [..., H], labels [...])``. To tie it to an existing ``nn.Linear`` head or embedding,
    assign that parameter to ``self.weight``."""

    def __init__(self, hidden_size, vocab_size, bias=False, *, ignore_index=-100, reduction="mean",
                 label_smoothing=0.0, z_loss=0.0, softcap=None, chunk_size=None, grad_in_forward=None,
                 backend=None, device=None, dtype=None):
        super().__init__()
        self.hidden_size, self.vocab_size = hidden_size, vocab_size
        self.ignore_index, self.reduction, self.label_smoothing = ignore_index, reduction, label_smoothing
        self.z_loss, self.softcap, self.chunk_size, self.backend = z_loss, softcap, chunk_size, backend
        self.grad_in_forward = grad_in_forward
        self.weight = torch.nn.Parameter(torch.empty(vocab_size, hidden_size, device=device, dtype=dtype))
        self.bias = torch.nn.Parameter(torch.empty(vocab_size, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self):  # as torch.nn.Linear
        torch.nn.init.kaiming_uniform_(self.weight, a=5 ** 0.5)
        if self.bias is not None:
            bound = 1 / self.hidden_size ** 0.5
            torch.nn.init.uniform_(self.bias, -bound, bound)

    def forward(self, hidden, labels):
        return linear_cross_entropy(hidden, self.weight, labels, bias=self.bias, ignore_index=self.ignore_index,
                                    label_smoothing=self.label_smoothing, z_loss=self.z_loss, softcap=self.softcap,
                                    reduction=self.reduction, chunk_size=self.chunk_size,
                                    grad_in_forward=self.grad_in_forward, backend=self.backend)

    def extra_repr(self):
        return (f"{self.hidden_size}, {self.vocab_size}, bias={self.bias is not None}, "
                f"reduction={self.reduction!r}, label_smoothing={self.label_smoothing}, z_loss={self.z_loss}, "
                f"softcap={self.softcap}")
