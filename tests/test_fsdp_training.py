"""Training a tiny Llama-shaped Hugging Face model patched with eurokernels.integrations.transformers.apply on 2 gloo
ranks, 10 AdamW steps, three ways: (a) FSDP2 (fully_shard per decoder layer; also under torch.compile), (b) tensor
parallel (parallelize_module: attention heads and MLP column/row-wise, the LM head column-wise over the vocabulary, so
the loss runs vocab-parallel), (c) context parallel (each rank holds a load-balanced shard of every sequence; the
attention is eurokernels.context_parallel_attention). Each run's per-step losses and final parameters equal a
single-process run of the same global batch (computed on every rank), within fp32 tolerance."""
import pytest
import torch

from multirank import run_ranks

transformers = pytest.importorskip("transformers", reason="transformers not installed (pip install eurokernels[hf])")

CONFIG = dict(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=16, max_position_embeddings=64, use_cache=False, initializer_range=0.1,
              attention_dropout=0.0, tie_word_embeddings=False)
STEPS, BATCH, SEQ, LR = 10, 2, 16, 1e-3
# fp32 tolerances: the distributed runs sum the same terms in other orders (sharded matmuls, all-reduces)
LOSS_TOL = dict(atol=1e-5, rtol=1e-5)
PARAM_TOL = dict(atol=2e-5, rtol=1e-4)


def _model():
    from eurokernels.integrations import transformers as ek_hf
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**CONFIG))
    return ek_hf.apply(model)


def _batches():
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, CONFIG["vocab_size"], (BATCH, SEQ), generator=g) for _ in range(STEPS)]


def _train(model, step):
    """STEPS AdamW steps; step(model, ids) -> this step's global loss (after the backward)."""
    opt = torch.optim.AdamW(model.parameters(), lr=LR, foreach=False)  # DTensor and plain parameters side by side
    losses = []
    for ids in _batches():
        losses.append(float(step(model, ids)))
        opt.step()
        opt.zero_grad()
    return losses


def _single_step(model, ids):
    loss = model(input_ids=ids, labels=ids).loss
    loss.backward()
    return loss.detach()


def _full(p):
    return p.full_tensor() if hasattr(p, "full_tensor") else p


def _check_same(name, losses, model, ref_losses, ref_model):
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(ref_losses), **LOSS_TOL,
                               msg=lambda m: f"{name} losses {losses} vs {ref_losses}: {m}")
    for (n, p), (_, q) in zip(model.named_parameters(), ref_model.named_parameters()):
        torch.testing.assert_close(_full(p.detach()), q.detach(), **PARAM_TOL, msg=lambda m: f"{name} {n}: {m}")


def _fsdp(mesh, compile_):
    from torch.distributed.fsdp import fully_shard
    model = _model()
    for layer in model.model.layers:
        fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    run = torch.compile(model) if compile_ else model
    rank, world = mesh.get_local_rank(), mesh.size()

    def step(_, ids):  # data parallel: each rank its rows; FSDP averages the gradients over the ranks
        rows = ids.chunk(world)[rank]
        loss = run(input_ids=rows, labels=rows).loss
        loss.backward()
        loss = loss.detach().clone()
        torch.distributed.all_reduce(loss)
        return loss / world
    return model, step


def _tensor_parallel(mesh):
    from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel, parallelize_module
    model = _model()
    plan = {"lm_head": ColwiseParallel()}  # its weight is only read by the vocab-parallel loss
    for i in range(CONFIG["num_hidden_layers"]):
        for name in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            plan[f"model.layers.{i}.{name}"] = ColwiseParallel()
        for name in ("self_attn.o_proj", "mlp.down_proj"):
            plan[f"model.layers.{i}.{name}"] = RowwiseParallel()
    parallelize_module(model, mesh, plan)
    assert type(model.lm_head.weight).__name__ == "DTensor"
    return model, _single_step


def _context_parallel(mesh):
    import eurokernels as ek
    from eurokernels.integrations import transformers as ek_hf
    group = mesh.get_group()
    model = _model()
    ek_hf.revert(model)
    ek_hf.apply(model, context_parallel_group=group)
    positions = torch.arange(SEQ).expand(BATCH, SEQ)

    def step(model, ids):
        shifted = torch.nn.functional.pad(ids[:, 1:], (0, 1), value=-100)  # shift on the whole sequence
        shard = lambda t: ek.context_parallel_shard(t, group=group)  # noqa: E731
        loss = model(input_ids=shard(ids), position_ids=shard(positions), labels=shard(ids),
                     shift_labels=shard(shifted), num_items_in_batch=int((shifted != -100).sum())).loss
        loss.backward()
        for p in model.parameters():  # each rank's gradient is its tokens' share
            torch.distributed.all_reduce(p.grad, group=group)
        loss = loss.detach().clone()
        torch.distributed.all_reduce(loss, group=group)
        return loss
    return model, step


def _check(rank, world, modes):
    from torch.distributed.device_mesh import init_device_mesh
    mesh = init_device_mesh("cpu", (world,))
    reference = _model()
    ref_losses = _train(reference, _single_step)
    assert ref_losses[-1] < ref_losses[0]  # it learns: the comparison is not between two idle runs
    for mode in modes:
        if mode == "fsdp":
            model, step = _fsdp(mesh, compile_=False)
        elif mode == "fsdp_compile":
            model, step = _fsdp(mesh, compile_=True)
        elif mode == "tp":
            model, step = _tensor_parallel(mesh)
        else:
            model, step = _context_parallel(mesh)
        _check_same(mode, _train(model, step), model, ref_losses, reference)
        if mode == "fsdp_compile":  # it did compile (not all graph breaks and eager fallbacks)
            from torch._dynamo.utils import counters
            assert counters["stats"]["unique_graphs"] > 0, dict(counters["stats"])


@pytest.mark.parametrize("modes", [("fsdp", "tp", "cp"), ("fsdp_compile",)], ids=["eager", "compile"])
def test_training_matches_single_process(modes):
    run_ranks(_check, 2, modes)
