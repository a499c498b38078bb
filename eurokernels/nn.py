"""torch.nn modules over the eurokernels ops (drop-in for the Hugging Face / PyTorch layers they replace)."""
import torch

from .ops.rms_norm import CASTINGS, rms_norm


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
