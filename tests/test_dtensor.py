"""DTensor inputs on a 2-rank gloo mesh (eurokernels/dtensor.py): every sharding rule runs locally and equals the
op on the full tensors, forward and gradients; cross_entropy on vocabulary-sharded logits (and linear_cross_entropy
with a vocabulary-sharded LM head) runs the vocab-parallel algorithm; placements that cannot run locally are refused
with an error naming the placements that would. One spawned run holds every case (process start-up dominates)."""
import pytest
import torch

import eurokernels as ek
from multirank import run_ranks

TOL = dict(atol=2e-5, rtol=2e-5)


def _compare(fn, inputs, placements, mesh, grad_of=None):
    """fn on full tensors vs fn on DTensors distributed with ``placements`` (None: a plain non-differentiable
    argument, the same on every rank): outputs and the gradients of every floating input."""
    from torch.distributed.tensor import distribute_tensor
    full = [t.clone().requires_grad_() if t.is_floating_point() and p is not None else t
            for t, p in zip(inputs, placements)]
    dist = [distribute_tensor(t.detach(), mesh, [p]).requires_grad_(t.requires_grad) if p is not None else t
            for t, p in zip(full, placements)]
    want, got = fn(*full), fn(*dist)
    want, got = (want, got) if isinstance(want, tuple) else ((want,), (got,))
    torch.manual_seed(1)
    seeds = [torch.randn(w.shape) for w in want]
    sum((w * s).sum() for w, s in zip(want, seeds) if w.requires_grad).backward()
    sum((g * s.to(g.dtype) if not hasattr(g, "placements") else
         g * distribute_tensor(s, mesh, g.placements)).sum() for g, s in zip(got, seeds) if g.requires_grad).backward()
    for w, g in zip(want, got):
        torch.testing.assert_close(g.full_tensor() if hasattr(g, "full_tensor") else g, w.detach(), **TOL)
    for f, d in zip(full, dist):
        if isinstance(f, torch.Tensor) and f.requires_grad:
            gd = d.grad.full_tensor() if hasattr(d.grad, "full_tensor") else d.grad
            torch.testing.assert_close(gd, f.grad, **TOL)
    return got


def _refused(match, fn, *args):
    # raised by the rule as a ValueError, re-raised by DTensor's sharding propagation as a RuntimeError
    with pytest.raises((ValueError, RuntimeError), match=match):
        fn(*args)


def _check(rank, world, backend):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard, distribute_tensor
    mesh = init_device_mesh("cpu", (world,))
    R = Replicate()
    torch.manual_seed(0)
    # rms_norm: sequence / batch parallel, weight replicated, with and without a residual
    x, w, res = torch.randn(2, 8, 16), torch.randn(16), torch.randn(2, 8, 16)
    for p in (Shard(1), Shard(0)):
        _compare(lambda x, w: ek.rms_norm(x, w, backend=backend), [x, w], [p, R], mesh)
        _compare(lambda x, w, r: ek.rms_norm(x, w, residual=r, backend=backend), [x, w, res], [p, R, p], mesh)
    _refused(r"redistribute the inputs to one of: x=Replicate\(\), weight=Replicate\(\); x=Shard\(dim=0\)",
             lambda: ek.rms_norm(distribute_tensor(x, mesh, [Shard(2)]), distribute_tensor(w, mesh, [R]),
                                 backend=backend))
    # apply_rotary: heads (tensor parallel), sequence with sharded positions (sequence parallel), packed tokens
    cos, sin = ek.rotary_cos_sin(32, 16)
    q, k = torch.randn(2, 8, 4, 16), torch.randn(2, 8, 2, 16)
    pos = torch.randint(0, 32, (2, 8))
    rot = lambda q, k, p=None: ek.apply_rotary(q, k, cos, sin, position_ids=p, backend=backend)  # noqa: E731
    _compare(rot, [q, k], [Shard(2), Shard(2)], mesh)
    _compare(lambda q, k, p: rot(q, k, p), [q, k, pos], [Shard(1), Shard(1), Shard(1)], mesh)
    cu = torch.tensor([0, 5, 16], dtype=torch.int32)  # packed: two documents of the flattened batch
    _compare(lambda q, k: ek.apply_rotary(q, k, cos, sin, cu_seqlens=cu, backend=backend),
             [q.flatten(0, 1), k.flatten(0, 1)], [Shard(1), Shard(1)], mesh)
    _refused("need position_ids sharded the same way", lambda: rot(distribute_tensor(q, mesh, [Shard(1)]),
                                                                   distribute_tensor(k, mesh, [Shard(1)])))
    # attention: heads (GQA groups kept whole), batch, packed heads
    v = torch.randn(2, 8, 2, 16)
    att = lambda q, k, v: ek.attention(q, k, v, causal=True, return_lse=True, backend=backend)  # noqa: E731
    out, lse = _compare(att, [q, k, v], [Shard(2)] * 3, mesh)
    assert out.placements == (Shard(2),) and lse.placements == (Shard(1),)  # computed locally, nothing gathered
    _compare(att, [q, k, v], [Shard(0)] * 3, mesh)
    packed = lambda q, k, v: ek.attention(q, k, v, cu_seqlens_q=cu, cu_seqlens_k=cu, window_size=(3, 1),  # noqa
                                          return_lse=True, backend=backend)
    _compare(packed, [q.flatten(0, 1), k.flatten(0, 1), v.flatten(0, 1)], [Shard(1)] * 3, mesh)
    _refused("GQA groups would be split", lambda: att(*(distribute_tensor(t, mesh, [Shard(2)]) for t in
                                                          (q, k[:, :, :1], v[:, :, :1]))))
    _refused("context_parallel_attention", lambda: att(*(distribute_tensor(t, mesh, [Shard(1)]) for t in (q, k, v))))
    # cross_entropy: rows sharded (local), vocabulary sharded (vocab-parallel); linear with a column-wise LM head
    logits, labels = torch.randn(2, 6, 32) * 3, torch.randint(0, 32, (2, 6))
    labels[0, 1] = -100
    ce = lambda x, y: ek.cross_entropy(x, y, label_smoothing=0.1, z_loss=1e-3, return_lse=True,  # noqa: E731
                                       backend=backend)
    _compare(ce, [logits, labels], [Shard(1), Shard(1)], mesh)
    loss, lse = _compare(ce, [logits, labels], [Shard(2), R], mesh)
    assert loss.placements == (R,)
    _compare(lambda x, y: ek.cross_entropy(x, y, reduction="none", backend=backend), [logits, labels],
             [Shard(2), None], mesh)  # plain labels next to vocabulary-sharded logits
    h, wt = torch.randn(2, 6, 16), torch.randn(32, 16) * 0.3
    _compare(lambda h, w, y: ek.linear_cross_entropy(h, w, y, backend=backend), [h, wt, labels], [None, Shard(0), None],
             mesh)
    # softmax, swiglu along rows
    _compare(lambda x: ek.softmax(x, backend=backend), [logits], [Shard(1)], mesh)
    _compare(lambda g, u: ek.swiglu(g, u, backend=backend), [x, res], [Shard(1), Shard(1)], mesh)
    _refused("do not run locally", lambda: ek.softmax(distribute_tensor(logits, mesh, [Shard(2)]), backend=backend))


def test_dtensor_rules_on_two_ranks():
    run_ranks(_check, 2, "cpu")


LAZY = """
import sys, tempfile
import torch
import eurokernels as ek
assert "torch.distributed.tensor" not in sys.modules, "import eurokernels imported DTensor"
import torch.distributed as dist
from torch.distributed.tensor import Shard, distribute_tensor
from torch.distributed.device_mesh import init_device_mesh
dist.init_process_group("gloo", init_method=f"file://{tempfile.mkdtemp()}/init", rank=0, world_size=1)
assert "eurokernels.dtensor" not in sys.modules
x = distribute_tensor(torch.randn(4, 8), init_device_mesh("cpu", (1,)), [Shard(0)])
y = ek.rms_norm(x, backend="reference")  # the first DTensor an op sees registers the rules
assert "eurokernels.dtensor" in sys.modules and y.placements == (Shard(0),)
print("ok")
"""


def test_import_stays_cheap_and_rules_register_on_first_dtensor():
    import os
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p))
    out = subprocess.run([sys.executable, "-c", LAZY], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stdout + out.stderr
