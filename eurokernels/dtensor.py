"""DTensor sharding rules for the eurokernels ops (torch.distributed.tensor.experimental.register_sharding).

What runs locally on each rank's shard, per mesh dimension (every other placement is refused with an error that
lists the placements that would run -- raised here as a ValueError, re-raised by DTensor's dispatch as a
RuntimeError with the op's input specs appended; nothing is redistributed behind the caller's back):

rms_norm         x (and residual) sharded along any non-hidden dim (sequence parallelism, data parallelism), weight
                 Replicate; the backward's weight gradient is Partial (summed when it is redistributed / reduced).
apply_rotary     q/k sharded along heads (tables, position_ids, cu_seqlens Replicate), along batch, or (dense
                 layout) along the sequence *with* position_ids sharded the same way (a shard's local index is not
                 its position). Plain tables / positions / cu_seqlens next to DTensor q are taken as Replicate.
attention        q/k/v sharded along heads (tensor parallelism) when every shard holds whole GQA groups (the K/V
                 head count divisible by the number of shards), or along batch. A sequence sharded across ranks
                 needs every rank's keys: that is ``eurokernels.context_parallel_attention``, not a sharding rule.
cross_entropy    logits and labels sharded along rows. Logits sharded along the vocabulary run the vocab-parallel
                 algorithm: ``eurokernels.cross_entropy`` / ``linear_cross_entropy`` hand DTensor logits (or an LM
                 head weight) sharded that way to ``vocab_parallel_cross_entropy`` / ``_linear_`` on the local shards
                 (``vocab_parallel``, below), the loss coming back as a Replicate DTensor (a plain tensor for the
                 linear variant when hidden is plain).
softmax, swiglu  sharded along any dim but the reduced / split last one.
Every op also runs with all inputs Replicate. The backward ops have the same local modes; the gradients autograd
hands them are redistributed by DTensor to the cheapest one where needed (they are not the caller's placements).

Registered when this module is first imported: by ``import eurokernels`` when torch.distributed.tensor is already
loaded, else on the first DTensor an op sees (``_checks.check_tensor``), so that importing eurokernels does not pay
for importing DTensor (about a second).
"""
import torch
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor._dtensor_spec import DTensorSpec
from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
from torch.distributed.tensor.experimental import register_sharding

R = Replicate()


def _check_local(op, args, modes):
    """Refuse (ValueError) unless on every mesh dim the inputs' placements are those of one of ``modes``."""
    names = [a.name for a in op._schema.arguments]
    specs = [(i, a) for i, a in enumerate(args) if isinstance(a, DTensorSpec)]
    mesh = specs[0][1].mesh
    for m in range(mesh.ndim):
        actual = {i: s.placements[m] for i, s in specs}
        if any(all(mode[1][i] == p for i, p in actual.items()) for mode in modes):
            continue
        have = ", ".join(f"{names[i]}={p!r}" for i, p in actual.items())
        runs = "; ".join(", ".join(f"{names[i]}={mode[1][i]!r}" for i in actual) for mode in modes)
        raise ValueError(f"{op}: the placements on mesh dim {m} ({have}) do not run locally, and eurokernels does not "
                         f"redistribute silently: redistribute the inputs to one of: {runs}"
                         + _HINTS.get(op.name(), ""))
    return modes


def _rule(op, refuse=True):
    """Register ``modes(*args) -> [(output placements, input placements)]`` as op's sharding, with the refusal of
    other placements (forward ops: their inputs are the caller's). A backward op (refuse=False) takes whatever
    gradients autograd hands it: DTensor redistributes those to the cheapest mode (e.g. a Partial gradient of a
    sharded loss's mean, reduce-scattered to the rows' shards: a [tokens] vector)."""
    def register(modes):
        register_sharding(op)(lambda *args: _check_local(op, args, modes(*args)) if refuse else modes(*args))
        return modes
    return register


def _opt(spec, placement):
    return None if spec is None else placement


_HINTS = {
    "eurokernels::attention": " (a sequence split across ranks: eurokernels.context_parallel_attention)",
    "eurokernels::cross_entropy": " (logits sharded along the vocabulary: call eurokernels.cross_entropy, which runs "
                                  "the vocab-parallel algorithm on them)",
    "eurokernels::rotary": " (q/k sharded along the sequence need position_ids sharded the same way)",
}

ops = torch.ops.eurokernels


# --- rms_norm ------------------------------------------------------------------------------------------------------

@_rule(ops.rms_norm.default)
def _rms_norm(x, weight, residual, *_):
    w = _opt(weight, R)
    modes = [([R, R, R], [R, w, _opt(residual, R), None, None, None, None])]
    for d in range(x.ndim - 1):
        res_out = Shard(d) if residual is not None else R  # without a residual the op returns an empty tensor
        modes.append(([Shard(d), res_out, Shard(d)], [Shard(d), w, _opt(residual, Shard(d)), None, None, None, None]))
    return modes


@_rule(ops.rms_norm_backward.default, refuse=False)
def _rms_norm_backward(dy, h, weight, rstd, dresidual_out, *_):
    w = _opt(weight, R)
    modes = [([R, R], [R, R, w, R, _opt(dresidual_out, R), None, None])]
    for d in range(h.ndim - 1):
        dw = Partial() if weight is not None else R  # each shard's rows give part of the weight's gradient
        modes.append(([Shard(d), dw], [Shard(d), Shard(d), w, Shard(d), _opt(dresidual_out, Shard(d)), None, None]))
    return modes


# --- rotary --------------------------------------------------------------------------------------------------------

def _rotary_modes(q, position_ids, cu_seqlens, outputs):
    """outputs: the number of outputs (2 out of place, 0 in place)."""
    packed = q.ndim == 3
    heads = 1 if packed else 2
    rest = [None, None, None]

    def mode(p, pos, cu):
        return [p] * outputs, [p, p, R, R, _opt(position_ids, pos), _opt(cu_seqlens, cu)] + rest

    modes = [mode(R, R, R), mode(Shard(heads), R, R)]
    if not packed:
        modes.append(mode(Shard(0), Shard(0), R))
    if position_ids is not None and not packed:
        modes.append(mode(Shard(1), Shard(1), R))
    return modes


@_rule(ops.rotary.default)
def _rotary(q, k, cos, sin, position_ids, cu_seqlens, *_):
    return _rotary_modes(q, position_ids, cu_seqlens, 2)


@_rule(ops.rotary_.default)
def _rotary_inplace(q, k, cos, sin, position_ids, cu_seqlens, *_):
    return _rotary_modes(q, position_ids, cu_seqlens, 0)


# --- attention -----------------------------------------------------------------------------------------------------

def _check_gqa(q, k):
    """Shards along heads must hold whole GQA groups: every shard needs as many K/V heads as it has groups."""
    heads = q.ndim - 2
    shards = 1
    for m, p in enumerate(k.placements):
        if p == Shard(heads):
            shards *= k.mesh.size(m)
    hq, hk = q.shape[heads], k.shape[heads]
    if shards > 1 and (hk % shards or hq % shards):
        raise ValueError(f"eurokernels::attention: q has {hq} heads and k/v {hk}, not both divisible by the {shards} "
                         f"shards of the heads dim, so GQA groups would be split across ranks: shard along heads "
                         f"only over a mesh that divides the K/V head count, or Replicate() q, k and v")


@_rule(ops.attention.default)
def _attention(q, k, v, cu_q, cu_k, *_):
    _check_gqa(q, k)
    modes = []
    for out, lse, cu in _placements(q):
        modes.append(([out, lse], [out, out, out, _opt(cu_q, cu), _opt(cu_k, cu)] + [None] * 7))
    return modes


@_rule(ops.attention_backward.default, refuse=False)
def _attention_backward(dout, q, k, v, out, lse, cu_q, cu_k, *_):
    _check_gqa(q, k)
    modes = []
    for p, p_lse, cu in _placements(q):
        modes.append(([p, p, p], [p, p, p, p, p, p_lse, _opt(cu_q, cu), _opt(cu_k, cu)] + [None] * 7))
    return modes


def _placements(q):
    """(q-like, lse, cu_seqlens) placements that run locally: replicated, heads-sharded, batch-sharded (dense)."""
    if q.ndim == 3:  # packed [tokens, heads, d], lse [heads, tokens]
        return [(R, R, R), (Shard(1), Shard(0), R)]
    return [(R, R, R), (Shard(2), Shard(1), R), (Shard(0), Shard(0), R)]


# --- cross_entropy -------------------------------------------------------------------------------------------------

def _rows(logits):
    return [R] + [Shard(d) for d in range(logits.ndim - 1)]


@_rule(ops.cross_entropy.default)
def _cross_entropy(logits, labels, *_):
    return [([p, p], [p, p] + [None] * 6) for p in _rows(logits)]


def _ce_backward(outputs):
    def modes(dloss, dlse, logits, *_):
        return [([p] * outputs, [p, _opt(dlse, p), p, p, p] + [None] * 7) for p in _rows(logits)]
    return modes


_rule(ops.cross_entropy_backward.default, refuse=False)(_ce_backward(1))
_rule(ops.cross_entropy_backward_.default, refuse=False)(_ce_backward(0))


# --- softmax, swiglu: elementwise along rows ------------------------------------------------------------------------

@_rule(ops.softmax.default)
def _softmax(x, *_):
    return [([p, p], [p, None, None]) for p in _rows(x)]


@_rule(ops.softmax_backward.default, refuse=False)
def _softmax_backward(dy, x, lse, *_):
    return [([p], [p, p, p, None, None]) for p in _rows(x)]


@_rule(ops.swiglu.default)
def _swiglu(gate, up, *_):
    return [([p], [p, _opt(up, p), None, None]) for p in _rows(gate)]


@_rule(ops.swiglu_backward.default, refuse=False)
def _swiglu_backward(dy, gate, up, *_):
    return [([p, _opt(up, p) or R], [p, p, _opt(up, p), None, None]) for p in _rows(gate)]


def replicated_like(ref, tensors):
    mesh = ref.device_mesh
    return tuple(DTensor.from_local(t, mesh, [R] * mesh.ndim, run_check=False)
                 if isinstance(t, torch.Tensor) and not isinstance(t, DTensor) else t for t in tensors)


# --- vocab-parallel cross-entropy on DTensors -----------------------------------------------------------------------

def vocab_sharded(t, dim=-1):
    """The mesh dim along which DTensor ``t`` is sharded on ``dim`` (the vocabulary), or None."""
    if not isinstance(t, DTensor):
        return None
    dim = dim % t.ndim
    found = [m for m, p in enumerate(t.placements) if p.is_shard(dim)]
    return found[0] if found else None


def _vocab_group(t, dim, what):
    """(local tensor, process group, vocab_start, vocab_total) of a DTensor sharded along the vocabulary ``dim``."""
    m = vocab_sharded(t, dim)
    others = [p for i, p in enumerate(t.placements) if i != m]
    if any(p != R for p in others):
        raise ValueError(f"{what}: sharded along the vocabulary on mesh dim {m}, the other mesh dims must be "
                         f"Replicate() (got placements {t.placements}); redistribute them to Replicate()")
    _, offset = compute_local_shape_and_global_offset(t.shape, t.device_mesh, t.placements)
    return t.to_local(), t.device_mesh.get_group(m), offset[dim % t.ndim], t.shape[dim]


def _plain(t, what):
    if isinstance(t, DTensor):
        if any(p != R for p in t.placements):
            raise ValueError(f"{what}: expected a plain tensor or a Replicate() DTensor (every rank holds all of it) "
                             f"next to vocabulary-sharded logits, got placements {t.placements}")
        return t.to_local()
    return t


def cross_entropy(logits, labels, kwargs):
    """eurokernels.cross_entropy on DTensor logits sharded along the vocabulary: the vocab-parallel algorithm on the
    local shards; the loss (and lse) come back as Replicate DTensors on the logits' mesh."""
    from .ops.vocab_parallel import vocab_parallel_cross_entropy
    local, group, start, total = _vocab_group(logits, -1, "logits")
    kwargs = dict(kwargs)
    kwargs["token_weights"] = _plain(kwargs.get("token_weights"), "token_weights")
    out = vocab_parallel_cross_entropy(local, _plain(labels, "labels"), group=group, vocab_start=start,
                                       vocab_total=total, **kwargs)
    mesh, placements = logits.device_mesh, [R] * logits.device_mesh.ndim
    wrap = lambda t: DTensor.from_local(t, mesh, placements, run_check=False)  # noqa: E731
    return tuple(wrap(t) for t in out) if isinstance(out, tuple) else wrap(out)


def linear_cross_entropy(hidden, weight, labels, kwargs):
    """eurokernels.linear_cross_entropy with an LM-head weight DTensor sharded along the vocabulary (dim 0, a
    column-wise parallel LM head): the vocab-parallel linear loss on the local shard; hidden is replicated (plain or
    Replicate DTensor) and gets the full gradient on every rank. The loss comes back in hidden's kind."""
    from .ops.vocab_parallel import vocab_parallel_linear_cross_entropy
    local, group, start, total = _vocab_group(weight, 0, "weight")
    kwargs = dict(kwargs)
    bias = kwargs.pop("bias", None)
    if bias is not None:
        bias = bias.to_local() if isinstance(bias, DTensor) else bias
    kwargs["token_weights"] = _plain(kwargs.get("token_weights"), "token_weights")
    out = vocab_parallel_linear_cross_entropy(_plain(hidden, "hidden"), local, _plain(labels, "labels"),
                                              bias_shard=bias, group=group, vocab_start=start, vocab_total=total,
                                              **kwargs)
    if not isinstance(hidden, DTensor):
        return out
    wrap = lambda t: DTensor.from_local(t, hidden.device_mesh, hidden.placements, run_check=False)  # noqa: E731
    return tuple(wrap(t) for t in out) if isinstance(out, tuple) else wrap(out)
