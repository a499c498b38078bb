"""eurokernels: fused training kernels for Europe's open multilingual LLMs.

Ops (torch.library, namespace ``eurokernels``) and their backends, from eurokernels/manifest.py:
{ops}
Choose a backend per call (``backend=``) or per block (``with eurokernels.use_backend("triton"): ...``);
CPU tensors default to ``cpu``, CUDA tensors to ``triton``. With ``EUROKERNELS_CUDA_SIM=1``, ``cuda`` also takes CPU
tensors: the CUDA C++ kernels run under a SIMT simulation (``eurokernels.cuda_sim``).
"""
from . import manifest
from ._backend import BACKENDS, default_backend, use_backend
from .ops.rms_norm import rms_norm
from .ops.rotary import apply_rotary, rotary_cos_sin
from .ops.attention import attention
from .ops.cross_entropy import cross_entropy
from .ops.linear_cross_entropy import linear_cross_entropy
from .ops.softmax import log_softmax, softmax
from .ops.vocab_parallel import vocab_parallel_cross_entropy, vocab_parallel_linear_cross_entropy
from .ops.swiglu import geglu, swiglu
from .ops.merge_attention_states import merge_attention_states
from .ops.context_parallel import context_parallel_attention, context_parallel_shard, context_parallel_unshard
from . import cuda_sim, nn, reference

if "torch.distributed.tensor" in __import__("sys").modules:  # else on the first DTensor an op sees (_checks)
    from . import dtensor  # noqa: F401 -- the ops' sharding rules

__all__ = ["BACKENDS", "default_backend", "use_backend", "manifest", "nn", "reference", "cuda_sim"] + [
    f for o in manifest.OPS for f in o.functions if "." not in f]  # tests/test_manifest.py: each is imported above
__version__ = "0.1.0"
__doc__ = __doc__.format(ops="\n".join(f"  {', '.join(o.functions)}: {', '.join(o.backends)}" for o in manifest.OPS))
