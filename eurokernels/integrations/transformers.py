"""Hugging Face ``transformers`` causal LMs on eurokernels: ``apply(model)`` and ``revert(model)``.

    model = transformers.AutoModelForCausalLM.from_config(config)      # or from_pretrained(...)
    eurokernels.integrations.transformers.apply(model)                  # RMSNorm, rotary, attention, MLP, loss
    loss = model(input_ids, labels=input_ids).loss                       # logits never materialized

Supported model types: llama, mistral, qwen2, gemma2, gemma3_text (Gemma3ForCausalLM). What ``apply`` changes,
each part switchable:

rms_norm   Every RMSNorm module is replaced by ``eurokernels.nn.RMSNorm`` holding the *same* weight Parameter, so
           optimizer state, weight tying and ``state_dict`` keys are untouched. Llama / Mistral / Qwen2 round like
           HF's LlamaRMSNorm (``casting="llama"``: normalize in fp32, round, multiply by the weight); Gemma-2/3 scale
           by ``1 + w`` in fp32 and round once (``offset=1.0, casting="gemma"``), as their HF modules do. (One
           corner differs: with fp32 weights and bf16 activations HF's Llama norm returns fp32; ours returns the
           activations' dtype.)
rotary     The family's module-level ``apply_rotary_pos_emb`` -- what its attention forward calls -- is replaced by
           a function feeding HF's own per-token cos/sin (``[batch, seqlen, head_dim]``, halves duplicated) to
           ``eurokernels.apply_rotary`` as a ``[batch * seqlen, head_dim / 2]`` table indexed by token. Every rope
           type (default, linear, dynamic, yarn, llama3) therefore gives exactly HF's angles. NOTE: a module
           global is shared by the process: while at least one model of a family is patched, *every* model of that
           family in the process rotates through eurokernels (same math); the last ``revert`` restores HF's.
attention  ``"eurokernels"`` is registered in transformers' ``AttentionInterface`` (and HF's flash-attention
           padding-mask builder under the same name in ``AttentionMaskInterface``), and the model's attention
           implementation is set to it. HF's arguments map to ``eurokernels.attention``: ``is_causal`` ->
           ``causal``; ``scaling`` -> ``softmax_scale``; ``sliding_window=w`` (HF: a key is visible when
           ``q - w < k <= q``) -> ``window_size=(w - 1, 0)`` (``(w - 1, w - 1)`` when not causal); ``softcap``
           (Gemma-2) -> ``softcap``; GQA K/V are passed with their own head count (never expanded).
           Packed sequences: HF's ``cu_seq_lens_q/k`` + ``max_length_q/k`` keyword arguments (what
           ``DataCollatorWithFlattening(return_flash_attn_kwargs=True)`` produces) are used as given, with no host
           sync; otherwise ``position_ids`` restarting inside a row (HF's position_ids-based packing, the way
           ``find_packed_sequence_indices`` reads them: a new document wherever the position does not grow by 1)
           become cu_seqlens for the varlen kernel (read once per forward by the patched ``forward``: two small
           host syncs, and a graph break under torch.compile, only when ``position_ids`` are passed). A 2-D
           padding mask unpads the valid tokens of each row into one document each (left or right padding, so
           that window distances are kept; padded query rows give zeros where HF gives arbitrary values).
           Attention dropout > 0 in training and attention sinks raise NotImplementedError.
mlp        Every MLP (``LlamaMLP``, ``MistralMLP``, ``Qwen2MLP``, ``Gemma2MLP``, ``Gemma3MLP``) computes
           ``down_proj(act(gate_proj(x)) * up_proj(x))`` with the activation and the product fused:
           ``eurokernels.swiglu`` for SiLU (Llama, Mistral, Qwen-2), ``eurokernels.geglu`` for GELU (Gemma-2/3's
           ``gelu_pytorch_tanh``: ``approximate="tanh"``). Its ``forward`` is replaced on the instance; the
           projections are untouched. An MLP with another activation, or inputs in a dtype the ops do not take
           (float64), keeps HF's forward.
loss       The model's ``forward`` is replaced on the instance: with ``labels`` it runs ``model.model``, shifts the
           labels as HF's ForCausalLMLoss does (``ignore_index``, ``shift_labels``, ``num_items_in_batch``: sum
           divided by it) and computes ``eurokernels.linear_cross_entropy(hidden, lm_head.weight, labels)`` with
           ``final_logit_softcapping`` as softcap (Gemma-2) -- the ``[tokens, vocab]`` logits are never
           materialized and the output's ``logits`` is None. Without labels (or with ``logits_to_keep``) the
           original forward runs unchanged (logits, generation). The loss is float32 like HF's, whatever the
           model's dtype.

``revert(model)`` undoes everything ``apply`` did to that model (original RMSNorm modules back with the same
Parameters, previous attention implementation, class forwards of the model and its MLPs, and the rotary global once
no patched model of the family is left).
"""
import sys
import types
import weakref

import torch

from .. import _checks, nn as _nn
from ..ops.attention import attention as _attention
from ..ops.context_parallel import context_parallel_attention as _context_parallel_attention
from ..ops.linear_cross_entropy import linear_cross_entropy as _linear_cross_entropy
from ..ops.rotary import apply_rotary as _apply_rotary
from ..ops.swiglu import geglu as _geglu, swiglu as _swiglu

try:
    from transformers import AttentionInterface as _AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface as _AttentionMaskInterface
    from transformers.masking_utils import flash_attention_mask as _padding_mask
    from transformers.modeling_outputs import CausalLMOutputWithPast as _CausalLMOutput
    from transformers.utils import can_return_tuple as _can_return_tuple
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError("eurokernels.integrations.transformers needs Hugging Face transformers: "
                      "pip install 'eurokernels[hf]'") from e

ATTENTION_NAME = "eurokernels"
_ROTARY_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "gemma2", "gemma3_text")

# RMSNorm class name -> (offset, casting) matching that class's forward (see the module docstring).
_NORMS = {
    "LlamaRMSNorm": (0.0, "llama"),
    "MistralRMSNorm": (0.0, "llama"),
    "Qwen2RMSNorm": (0.0, "llama"),
    "Gemma2RMSNorm": (1.0, "gemma"),
    "Gemma3RMSNorm": (1.0, "gemma"),
}
# The MLP classes whose forward is down_proj(act_fn(gate_proj(x)) * up_proj(x)), and the fused op for each HF
# activation class their act_fn may be (transformers.activations: ACT2CLS).
_MLPS = ("LlamaMLP", "MistralMLP", "Qwen2MLP", "Gemma2MLP", "Gemma3MLP")
_MLP_ACTIVATIONS = {
    "SiLUActivation": _swiglu,                                         # "silu"
    "SiLU": _swiglu,                                                   # "swish" (torch.nn.SiLU)
    "GELUTanh": lambda g, u: _geglu(g, u, approximate="tanh"),         # "gelu_pytorch_tanh" (Gemma)
    "NewGELUActivation": lambda g, u: _geglu(g, u, approximate="tanh"),  # "gelu_new": the same formula
    "GELUActivation": lambda g, u: _geglu(g, u, approximate="none"),   # "gelu" (exact, erf)
}
_LOSS_ONLY_KWARGS = ("num_items_in_batch", "ignore_index", "shift_labels")
_STATE = "_eurokernels_patch"
# Set by the patched top-level forward when it has found that the batch holds no packed documents, so that the
# attention of each layer does not look at position_ids again (a host sync, and a graph break under compile).
_UNPACKED = "eurokernels_unpacked"
# Set by the patched top-level forward of a context-parallel model: the process group the attention runs over.
_CONTEXT_PARALLEL = "eurokernels_context_parallel_group"
# modeling module name -> (HF's apply_rotary_pos_emb, the patched models using ours). A set of models rather than a
# count: reverting a deep copy of a patched model (not in the set) cannot restore HF's function under the original.
_rotary_patches = {}


def apply(model, *, rms_norm=True, rotary=True, attention=True, mlp=True, loss=True, context_parallel_group=None):
    """Make a Hugging Face causal LM (``LlamaForCausalLM``, ``MistralForCausalLM``, ``Qwen2ForCausalLM``,
    ``Gemma2ForCausalLM``, ``Gemma3ForCausalLM``) run on eurokernels; returns the model, patched in place.

    Args:
        model: the ``*ForCausalLM`` instance (any device and dtype the ops support).
        rms_norm, rotary, attention, mlp, loss: which parts to patch (see the module docstring for what each
            does).
        context_parallel_group: a process group (needs ``attention=True``): the model then runs on this rank's
            shard of every sequence (``eurokernels.context_parallel_shard`` of input_ids, dim 1) and its attention
            is ``eurokernels.context_parallel_attention`` over the group. Pass ``position_ids`` (the shard of the
            global positions: rotary needs them) and, for the loss, ``shift_labels`` (the shard of the labels
            shifted on the whole sequence: a shard's last token predicts a token of another rank) with
            ``num_items_in_batch`` (the non-ignored labels of the whole batch): each rank's loss is then its share,
            the sum over the group the whole loss, and parameter gradients are to be summed over the group (as
            data parallelism averages them). Packed documents: ``cu_seq_lens_q`` of the whole packed sequence
            (batch 1). No padding mask.

    Raises ValueError for an unsupported model type or a model that is already patched. ``revert(model)`` undoes
    the patch.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model: expected a causal LM of type {', '.join(SUPPORTED_MODEL_TYPES)}, "
                         f"got {type(model).__name__} (model_type {model_type!r})")
    if hasattr(model, _STATE):
        raise ValueError("model: already patched by eurokernels.integrations.transformers.apply; revert() first")
    if loss and (not isinstance(getattr(model, "model", None), torch.nn.Module) or
                 not isinstance(model.get_output_embeddings(), torch.nn.Linear)):
        raise ValueError(f"model: loss=True needs a decoder at model.model and a Linear LM head "
                         f"({type(model).__name__} has neither)")
    if context_parallel_group is not None and not attention:
        raise ValueError("context_parallel_group: needs attention=True (the context-parallel attention is ours)")
    state = types.SimpleNamespace(norms=[], rotary_modules=[], attn_implementation=None, forward=False,
                                  attention=False, loss=False, mlps=[], context_parallel=context_parallel_group)
    if rms_norm:
        state.norms = _swap_norms(model)
    if mlp:
        state.mlps = _patch_mlps(model)
    if rotary:
        state.rotary_modules = _patch_rotary(model)
    if attention:
        _register_attention()
        state.attn_implementation = config._attn_implementation
        model.set_attn_implementation(ATTENTION_NAME)
    if attention or loss:  # the loss, and the packing detection done once per forward rather than per layer
        state.attention, state.loss, state.forward = attention, loss, True
        model.forward = types.MethodType(_can_return_tuple(_causal_lm_forward), model)
    object.__setattr__(model, _STATE, state)  # a plain attribute: its old modules stay out of model.modules()
    return model


def revert(model):
    """Undo ``apply(model)``; returns the model. Raises ValueError if the model is not patched."""
    state = getattr(model, _STATE, None)
    if state is None:
        raise ValueError("model: not patched by eurokernels.integrations.transformers.apply")
    for parent, name, original in state.norms:
        setattr(parent, name, original)
    for module_name in state.rotary_modules:
        original, users = _rotary_patches.get(module_name, (None, None))
        if users is not None:
            users.discard(model)
            if not users:
                sys.modules[module_name].apply_rotary_pos_emb = original
                del _rotary_patches[module_name]
    for module in state.mlps:
        del module.forward
    if state.attn_implementation is not None:
        model.set_attn_implementation(state.attn_implementation)
    if state.forward:
        del model.forward
    object.__delattr__(model, _STATE)
    return model


def is_patched(model):
    return hasattr(model, _STATE)


# --- RMSNorm ------------------------------------------------------------------------------------------------------

def _swap_norms(model):
    swapped = []
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            spec = _NORMS.get(type(child).__name__)
            if spec is None:
                continue
            offset, casting = spec
            eps = getattr(child, "variance_epsilon", getattr(child, "eps", None))
            weight = child.weight
            new = _nn.RMSNorm(weight.shape[0], eps=eps, offset=offset, casting=casting, device="meta")
            new.weight = weight  # the same Parameter: optimizer state, tying and state_dict keys are kept
            setattr(parent, name, new)
            swapped.append((parent, name, child))
    return swapped


# --- MLP ----------------------------------------------------------------------------------------------------------

def _patch_mlps(model):
    patched = []
    for module in model.modules():
        fused = _MLP_ACTIVATIONS.get(type(getattr(module, "act_fn", None)).__name__)
        if type(module).__name__ in _MLPS and fused is not None:
            module.forward = types.MethodType(_mlp_forward(fused), module)  # on the instance: revert deletes it
            patched.append(module)
    return patched


def _mlp_forward(fused):
    def forward(self, x):
        """HF's ``down_proj(act_fn(gate_proj(x)) * up_proj(x))`` with act_fn and the product in one op."""
        if x.dtype not in _checks.FLOAT_DTYPES:  # e.g. a float64 model (the kernels are fp32 / bf16 / fp16)
            return type(self).forward(self, x)
        return self.down_proj(fused(self.gate_proj(x), self.up_proj(x)))
    return forward


# --- rotary -------------------------------------------------------------------------------------------------------

def _patch_rotary(model):
    names = sorted({type(m).__module__ for m in model.modules()
                    if hasattr(sys.modules.get(type(m).__module__), "apply_rotary_pos_emb")
                    and type(m).__name__.endswith("Attention")})
    for name in names:
        module = sys.modules[name]
        if name not in _rotary_patches:
            original = module.apply_rotary_pos_emb
            _rotary_patches[name] = (original, weakref.WeakSet())
            module.apply_rotary_pos_emb = _rotary_function(original)
        _rotary_patches[name][1].add(model)
    return names


def _rotary_function(original):
    def apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1):
        """HF's signature: q/k ``[b, heads, s, d]`` (unsqueeze_dim=1) or ``[b, s, heads, d]`` (2); cos/sin
        ``[b or 1, s, head_dim]`` with the two halves equal. Anything else (other layouts, float64) goes to HF's
        own function."""
        if unsqueeze_dim not in (1, 2) or q.dim() != 4 or cos.dim() != 3 or q.dtype not in _ROTARY_DTYPES:
            return original(q, k, cos, sin, unsqueeze_dim)  # e.g. an unpatched float64 model of the same family
        qt, kt = (q.transpose(1, 2), k.transpose(1, 2)) if unsqueeze_dim == 1 else (q, k)  # [b, s, heads, d]
        b, s, _, d = qt.shape
        n, rotary_dim = cos.shape[0], cos.shape[-1]
        if cos.shape[1] != s or n not in (1, b) or rotary_dim != d or sin.shape != cos.shape:
            return original(q, k, cos, sin, unsqueeze_dim)
        half = rotary_dim // 2
        # Row t * s + i of the table is token i of cos row t: position_ids then just index tokens.
        table_cos = cos[..., :half].reshape(n * s, half)
        table_sin = sin[..., :half].reshape(n * s, half)
        positions = torch.arange(n * s, device=q.device).view(n, s).expand(b, s)
        q_out, k_out = _apply_rotary(qt, kt, table_cos, table_sin, position_ids=positions)
        return (q_out.transpose(1, 2), k_out.transpose(1, 2)) if unsqueeze_dim == 1 else (q_out, k_out)
    apply_rotary_pos_emb.__wrapped__ = original
    return apply_rotary_pos_emb


# --- attention ----------------------------------------------------------------------------------------------------

def _register_attention():
    _AttentionInterface.register(ATTENTION_NAME, attention_forward)
    # HF builds no mask at all for a name missing here (padding would be silently ignored). The flash-attention
    # builder returns what we need: None, or the 2-D boolean padding mask [batch, kv_length].
    _AttentionMaskInterface.register(ATTENTION_NAME, _padding_mask)


def attention_forward(module, query, key, value, attention_mask, dropout=0.0, scaling=None, sliding_window=None,
                      softcap=None, is_causal=None, **kwargs):
    """transformers attention-function signature -> eurokernels.attention; returns ``(out [b, s, heads, d], None)``.

    query ``[b, heads_q, s_q, d]``, key/value ``[b, heads_kv, s_k, d]`` (HF's layout; viewed, not copied, as
    ``[b, s, heads, d]``)."""
    if dropout and module.training:
        raise NotImplementedError(f"eurokernels attention has no dropout; got attention dropout {dropout} in training "
                                  f"(set config.attention_dropout = 0.0)")
    if kwargs.get("s_aux") is not None:
        raise NotImplementedError("eurokernels attention has no attention sinks (s_aux)")
    if is_causal is None:
        is_causal = getattr(module, "is_causal", True)
    q, k, v = query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2)
    b, s_q, h_q, d = q.shape
    s_k = k.shape[1]
    window = (-1, -1)
    if sliding_window is not None:
        window = (sliding_window - 1, 0 if is_causal else sliding_window - 1)
    options = dict(causal=bool(is_causal), softmax_scale=scaling, window_size=window,
                   softcap=float(softcap) if softcap else 0.0)

    group = kwargs.get(_CONTEXT_PARALLEL)
    if group is not None:
        cu = kwargs.get("cu_seq_lens_q")
        if cu is None:
            return _context_parallel_attention(q, k, v, group=group, **options), None
        out = _context_parallel_attention(q.reshape(b * s_q, h_q, d), k.reshape(b * s_k, *k.shape[2:]),
                                          v.reshape(b * s_k, *v.shape[2:]), group=group,
                                          cu_seqlens=cu.to(torch.int32), **options)
        return out.view(b, s_q, h_q, d), None
    cu_q = kwargs.get("cu_seq_lens_q")
    if cu_q is None and attention_mask is None and not kwargs.get(_UNPACKED):
        documents = _packed_from_position_ids(kwargs.get("position_ids"), b, s_q, s_k)
        if documents is not None:
            cu_q, longest = documents
            kwargs.update(cu_seq_lens_k=cu_q, max_length_q=longest, max_length_k=longest)
    if cu_q is not None:  # packed documents; offsets into the [b * s] flattened tokens (HF's collator: b = 1)
        cu_k = kwargs.get("cu_seq_lens_k")
        cu_k = cu_q if cu_k is None else cu_k
        max_q = kwargs.get("max_length_q")
        max_k = kwargs.get("max_length_k", max_q)
        out = _attention(q.reshape(b * s_q, h_q, d), k.reshape(b * s_k, *k.shape[2:]),
                         v.reshape(b * s_k, *v.shape[2:]), cu_seqlens_q=cu_q.to(torch.int32),
                         cu_seqlens_k=cu_k.to(torch.int32), max_seqlen_q=None if max_q is None else int(max_q),
                         max_seqlen_k=None if max_k is None else int(max_k), **options)
        return out.view(b, s_q, h_q, d), None
    if attention_mask is not None:
        return _unpadded(q, k, v, attention_mask, options), None
    return _attention(q, k, v, **options), None


def _packed_from_position_ids(position_ids, b, s_q, s_k):
    """(cu_seqlens int32, longest document) when position_ids restart inside a row, else None.

    A document starts at every row start and wherever the position does not grow by exactly 1 (HF's
    find_packed_sequence_indices). Reads two values on the host."""
    if position_ids is None or s_q != s_k or s_q < 2:
        return None
    pos = position_ids.reshape(-1, position_ids.shape[-1]).expand(b, s_q)
    start = torch.ones(b, s_q, dtype=torch.bool, device=pos.device)
    start[:, 1:] = (pos[:, 1:] - pos[:, :-1]) != 1
    if int(start.sum()) == b:
        return None
    offsets = start.reshape(-1).nonzero().reshape(-1)
    cu = torch.cat([offsets, offsets.new_full((1,), b * s_q)]).to(torch.int32)
    return cu, int((cu[1:] - cu[:-1]).max())


def _unpadded(q, k, v, mask, options):
    """Attention over the valid tokens of each row (one document per row) of a [b, s_k] boolean padding mask."""
    if mask.dim() != 2:
        raise ValueError(f"attention_mask: eurokernels attention takes a 2-D padding mask [batch, kv_length]; got "
                         f"shape {tuple(mask.shape)} (a prepared 4-D mask cannot be mapped to its kernels)")
    b, s_q, h_q, d = q.shape
    s_k = k.shape[1]
    mask_k = mask[:, -s_k:].to(torch.bool)
    mask_q = mask_k[:, -s_q:]
    idx_q, idx_k = mask_q.reshape(-1).nonzero().reshape(-1), mask_k.reshape(-1).nonzero().reshape(-1)
    len_q, len_k = mask_q.sum(1, dtype=torch.int32), mask_k.sum(1, dtype=torch.int32)
    zero = len_q.new_zeros(1)
    cu_q = torch.cat([zero, len_q.cumsum(0, dtype=torch.int32)])
    cu_k = torch.cat([zero, len_k.cumsum(0, dtype=torch.int32)])
    out = _attention(q.reshape(b * s_q, h_q, d).index_select(0, idx_q),
                     k.reshape(b * s_k, *k.shape[2:]).index_select(0, idx_k),
                     v.reshape(b * s_k, *v.shape[2:]).index_select(0, idx_k),
                     cu_seqlens_q=cu_q, cu_seqlens_k=cu_k, max_seqlen_q=int(len_q.max()),
                     max_seqlen_k=int(len_k.max()), **options)
    return q.new_zeros(b * s_q, h_q, d).index_copy(0, idx_q, out).view(b, s_q, h_q, d)


# --- loss ---------------------------------------------------------------------------------------------------------

def _causal_lm_forward(self, input_ids=None, attention_mask=None, position_ids=None, past_key_values=None,
                       inputs_embeds=None, labels=None, use_cache=None, logits_to_keep=0, **kwargs):
    """``*ForCausalLM.forward`` with the LM head and loss fused (eurokernels.linear_cross_entropy) when labels are
    given, the class's forward otherwise; with the eurokernels attention it also reads the packed documents off
    ``position_ids`` once for all layers."""
    state = getattr(self, _STATE)
    tokens = input_ids if input_ids is not None else inputs_embeds
    if state.context_parallel is not None:
        if attention_mask is not None:
            raise ValueError("attention_mask: context parallelism takes no padding mask (pack the documents and pass "
                             "cu_seq_lens_q of the whole packed sequence)")
        if position_ids is None:
            raise ValueError("position_ids: required with context parallelism (the shard's global positions)")
        kwargs[_CONTEXT_PARALLEL] = state.context_parallel
    elif state.attention and tokens is not None:  # (neither: HF's forward raises its own error)
        _find_documents(kwargs, position_ids, attention_mask, past_key_values, tokens.shape[0], tokens.shape[1])
    keep_all = isinstance(logits_to_keep, int) and logits_to_keep == 0
    if not state.loss or labels is None or not keep_all:
        return type(self).forward(self, input_ids=input_ids, attention_mask=attention_mask,
                                  position_ids=position_ids, past_key_values=past_key_values,
                                  inputs_embeds=inputs_embeds, labels=labels, use_cache=use_cache,
                                  logits_to_keep=logits_to_keep, **kwargs)
    loss_kwargs = {name: kwargs.pop(name) for name in _LOSS_ONLY_KWARGS if name in kwargs}
    outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                         past_key_values=past_key_values, inputs_embeds=inputs_embeds, use_cache=use_cache,
                         **kwargs)
    hidden = outputs.last_hidden_state
    loss = causal_lm_loss(self, hidden, labels, **loss_kwargs)
    return _CausalLMOutput(loss=loss, logits=None, past_key_values=outputs.past_key_values,
                           hidden_states=outputs.hidden_states, attentions=outputs.attentions)


def _find_documents(kwargs, position_ids, attention_mask, past_key_values, batch, seqlen):
    """Add HF's varlen kwargs (cu_seq_lens_q/k, max_length_q/k) for a batch packed through position_ids, or the
    "not packed" flag, to the kwargs the layers receive. Without position_ids (HF then numbers tokens 0..s-1) the
    batch cannot be packed and nothing is read from the device."""
    if "cu_seq_lens_q" in kwargs or attention_mask is not None or past_key_values is not None:
        return  # the attention function handles these per call
    documents = None if position_ids is None else _packed_from_position_ids(position_ids, batch, seqlen, seqlen)
    if documents is None:
        kwargs[_UNPACKED] = True
    else:
        cu, longest = documents
        kwargs.update(cu_seq_lens_q=cu, cu_seq_lens_k=cu, max_length_q=longest, max_length_k=longest)


def causal_lm_loss(model, hidden, labels, *, num_items_in_batch=None, ignore_index=-100, shift_labels=None):
    """HF's ForCausalLMLoss of ``model``'s LM head on ``hidden [b, s, H]`` without the logits: token t predicts
    label t + 1 (or ``shift_labels[t]``); mean over non-ignored tokens, or sum / ``num_items_in_batch``. The loss
    is float32, as HF's (which upcasts the logits before its cross-entropy)."""
    if shift_labels is None:
        shift_labels = torch.nn.functional.pad(labels, (0, 1), value=ignore_index)[..., 1:]
    shift_labels = shift_labels.to(hidden.device).reshape(-1)
    hidden = hidden.reshape(-1, hidden.shape[-1])
    head = model.get_output_embeddings()
    softcap = getattr(model.config, "final_logit_softcapping", None)
    reduction = "mean" if num_items_in_batch is None else "sum"
    loss = _linear_cross_entropy(hidden, head.weight, shift_labels, bias=head.bias, ignore_index=ignore_index,
                                 softcap=softcap, reduction=reduction, loss_dtype=torch.float32)
    if num_items_in_batch is not None:
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = num_items_in_batch.to(loss.device)
        loss = loss / num_items_in_batch
    return loss
