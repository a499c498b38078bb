"""torch.nn modules over the eurokernels ops (drop-in for the Hugging Face / PyTorch layers they replace)."""
import torch

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
