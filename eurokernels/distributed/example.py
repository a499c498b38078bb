"""A tiny decoder trained with FSDP2 and context parallelism on the same ranks, on eurokernels ops (CPU, gloo):

    torchrun --standalone --nproc_per_node 2 -m eurokernels.distributed.example [--steps 5] [--seqlen 64]

Every rank holds a load-balanced shard of each sequence (``context_parallel_shard``: chunks r and 2W-1-r of 2W) and
a shard of every parameter (``fully_shard``). The attention is ``context_parallel_attention`` (K/V blocks passed around
the group's ring), the norms ``rms_norm``, the MLP ``swiglu``, the LM head + loss ``linear_cross_entropy``. Before
training, the context-parallel attention is checked against ``eurokernels.attention`` on the whole sequence.
Runs with NCCL on GPUs unchanged but for the backend and device.
"""
import argparse
import os

import torch
import torch.distributed as dist

import eurokernels as ek


class Block(torch.nn.Module):
    def __init__(self, hidden, heads, kv_heads, group):
        super().__init__()
        self.heads, self.kv_heads, self.head_dim, self.group = heads, kv_heads, hidden // heads, group
        self.norm1, self.norm2 = ek.nn.RMSNorm(hidden), ek.nn.RMSNorm(hidden)
        self.qkv = torch.nn.Linear(hidden, (heads + 2 * kv_heads) * self.head_dim, bias=False)
        self.out = torch.nn.Linear(hidden, hidden, bias=False)
        self.up = torch.nn.Linear(hidden, 4 * hidden, bias=False)  # gate and up, fused
        self.down = torch.nn.Linear(2 * hidden, hidden, bias=False)

    def forward(self, x, cos, sin, positions):
        b, s, _ = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, s, -1, self.head_dim).split(
            [self.heads, self.kv_heads, self.kv_heads], dim=2)
        q, k = ek.apply_rotary(q, k, cos, sin, position_ids=positions)  # the shard's global positions
        a = ek.context_parallel_attention(q, k, v, group=self.group, causal=True)
        x = x + self.out(a.reshape(b, s, -1))
        return x + self.down(ek.swiglu(self.up(self.norm2(x))))


class TinyLM(torch.nn.Module):
    def __init__(self, vocab, hidden, layers, heads, kv_heads, group):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, hidden)
        self.blocks = torch.nn.ModuleList(Block(hidden, heads, kv_heads, group) for _ in range(layers))
        self.norm = ek.nn.RMSNorm(hidden)
        self.head = torch.nn.Linear(hidden, vocab, bias=False)
        self.register_buffer("cos", ek.rotary_cos_sin(4096, hidden // heads)[0], persistent=False)
        self.register_buffer("sin", ek.rotary_cos_sin(4096, hidden // heads)[1], persistent=False)

    def forward(self, ids, positions, labels, n_labels):
        x = self.embed(ids)
        for block in self.blocks:
            x = block(x, self.cos, self.sin, positions)
        # this rank's share of the mean over the whole batch: the shares sum to it over the group
        loss = ek.linear_cross_entropy(self.norm(x), self.head.weight, labels, reduction="sum")
        return loss / n_labels


def check_attention(group):
    """Context-parallel attention equals single-rank attention on the whole sequence (forward)."""
    torch.manual_seed(0)  # the same full tensors on every rank
    q, k, v = torch.randn(1, 64, 4, 16), torch.randn(1, 64, 2, 16), torch.randn(1, 64, 2, 16)
    full = ek.attention(q, k, v, causal=True)
    shard = lambda t: ek.context_parallel_shard(t, group=group)  # noqa: E731
    local = ek.context_parallel_attention(shard(q), shard(k), shard(v), group=group, causal=True)
    err = (local - shard(full)).abs().max().item()
    assert err < 1e-5, f"context-parallel attention differs from attention by {err}"
    return err


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--seqlen", type=int, default=64)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    rank, world = dist.get_rank(), dist.get_world_size()
    mesh = init_device_mesh("cpu", (world,))
    group = mesh.get_group()
    err = check_attention(group)

    torch.manual_seed(0)
    model = TinyLM(vocab=256, hidden=64, layers=2, heads=4, kv_heads=2, group=group)
    for block in model.blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(model, mesh=mesh)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(1)  # the same batches on every rank; each keeps its sequence shard
    shard = lambda t: ek.context_parallel_shard(t, group=group)  # noqa: E731
    positions = torch.arange(args.seqlen).expand(2, -1)
    losses = []
    for step in range(args.steps):
        start = torch.randint(0, 256, (2, 1), generator=g)
        ids = (start + torch.arange(args.seqlen + 1)) % 256  # learnable: counting
        inputs, labels = ids[:, :-1], ids[:, 1:]
        loss = model(shard(inputs), shard(positions), shard(labels), labels.numel())
        (loss * world).backward()  # FSDP averages the gradients over the ranks; the shares must be summed
        opt.step()
        opt.zero_grad()
        total = loss.detach().clone()
        dist.all_reduce(total)
        losses.append(total.item())
        if rank == 0:
            print(f"step {step}: loss {total.item():.4f}", flush=True)
    if rank == 0:
        print(f"context-parallel attention vs attention: max error {err:.2e}; {world} ranks, FSDP2 + context "
              f"parallel, loss {losses[0]:.4f} -> {losses[-1]:.4f}", flush=True)
    dist.barrier()
    # Leave without tearing gloo down (its teardown has aborted a rank after all work was done; tests/multirank.py)
    os._exit(0 if losses[-1] < losses[0] else 1)


if __name__ == "__main__":
    main()
