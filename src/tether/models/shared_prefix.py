"""One forward pass over the prompt shared by several replies (key/value cache reuse), for RM and DPO training.

The two sequences of a preference pair (and the K completions of a ranking) start with the same prompt.
In a causal decoder the hidden states of a position depend only on the positions before it, so the
prompt's keys and values are the same in every sequence that starts with it. They are computed once:

1. the shared prefixes go through the model with `use_cache=True` (left-padded, so every prefix ends in
   the last column), which returns their per-layer keys and values (a transformers `DynamicCache`);
2. the cache rows are repeated for the continuations of each prefix (`DynamicCache.batch_select_indices`,
   an index on the batch dimension of every layer's key and value tensors);
3. the continuations (right-padded) go through the model with `past_key_values` set to that cache and an
   attention mask over [prefix, continuation]; attention reads the cached keys and values exactly as it
   would read the prefix positions of the full sequence.

This is the key/value cache semantics of Hugging Face causal LMs (`past_key_values`: "pre-computed hidden
states (key and values in the self-attention blocks) that can be used to speed up sequential decoding"),
used here for training: the cached tensors are part of the autograd graph, so gradients of the
continuations flow back through them into the prefix pass. Results equal those of the full sequences up to
floating-point rounding (different matrix shapes), and so do gradients.

What is shared is decided on token ids, not text: the longest common prefix of the rows of a group (a pair,
or the completions of one ranking), so it is exact whatever the tokenizer does at the prompt/reply boundary.
It is cut so that every continuation keeps at least one token (the reward head reads the last token; the
first scored token of a policy is predicted by the prefix's last position). A batch in which sharing would
not save at least `MIN_SAVING` of the padded token positions runs as full sequences.

Only causal decoders can share (`can_share`); encoders (BERT-style) attend in both directions and always
run full sequences.

With several processes (DDP, FSDP, DeepSpeed) every process must call the model the same number of times
(the wrappers run collectives inside forward), so the trainers pass an `agree` function: the batch shares
only when it pays on every process (`Distributed.any` over the refusals).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from tether.errors import ModelError
from tether.models.logprobs import accepts_logits_to_keep, position_ids_from_mask, response_logprobs, sequence_logprobs
from tether.ops import gather_logprobs, upcast

MIN_SAVING = 0.05  # share only when the padded token positions shrink by at least this fraction (docs/dpo.md)


# --------------------------------------------------------------------------- which models


def inner_model(model: nn.Module) -> nn.Module:
    """The Hugging Face model inside DDP / FSDP / DeepSpeed (`.module`) and peft (`get_base_model`) wrappers."""
    while True:
        if hasattr(model, "get_base_model") and hasattr(model, "peft_config"):
            model = model.get_base_model()
        elif not hasattr(model, "config") and isinstance(getattr(model, "module", None), nn.Module):
            model = model.module
        else:
            return model


_CAUSAL: dict[str, bool] = {}


def is_causal_decoder(model: nn.Module) -> bool:
    """Whether `model` (possibly wrapped) is a decoder-only causal transformer with a standard key/value cache.

    The test: its `config.model_type` has a causal-LM class in transformers' auto mapping and no masked-LM
    class (BERT, RoBERTa ... have both: a `*LMHeadModel` exists for them, but they are encoders), it is not
    an encoder-decoder, and it can use a `DynamicCache` (`_supports_default_dynamic_cache`, False for
    recurrent or custom-cache models).
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES, MODEL_FOR_MASKED_LM_MAPPING_NAMES

    base = inner_model(model)
    config = getattr(base, "config", None)
    if config is None or getattr(config, "is_encoder_decoder", False):
        return False
    kind = getattr(config, "model_type", None)
    if kind not in _CAUSAL:
        _CAUSAL[kind] = kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
    supports_cache = getattr(type(base), "_supports_default_dynamic_cache", None)
    return _CAUSAL[kind] and (supports_cache is None or bool(supports_cache()))


def can_share(model: nn.Module) -> bool:
    """Whether a shared-prefix forward is possible: a causal decoder without activation checkpointing (which
    turns the cache off while training)."""
    base = inner_model(model)
    name = "is_activation_checkpointing" if hasattr(type(base), "is_activation_checkpointing") else "is_gradient_checkpointing"
    checkpointing = bool(getattr(base, name, False))
    return is_causal_decoder(model) and not (checkpointing and base.training)


# --------------------------------------------------------------------------- splitting a batch


@dataclass
class SharedPrefixBatch:
    """A batch cut into shared prefixes (left-padded) and their continuations (right-padded).

    Continuation row i continues prefix row `group[i]`; `columns` maps its positions back to the columns of
    the original (N, T) batch, so any per-token tensor can be cut the same way (`cut`).
    """

    prefix_ids: torch.Tensor  # (G, P) long, left-padded
    prefix_mask: torch.Tensor  # (G, P) long
    suffix_ids: torch.Tensor  # (N, S) long, right-padded
    suffix_mask: torch.Tensor  # (N, S) long
    group: torch.Tensor  # (N,) long, the prefix row of each continuation
    columns: torch.Tensor  # (N, S) long, the original column of each continuation position (0 on pads)

    def cut(self, values: torch.Tensor) -> torch.Tensor:
        """The continuation part of a per-token (N, T) tensor of the original batch: (N, S), zero on pads."""
        out = values.gather(1, self.columns.to(values.device))
        return out * self.suffix_mask.to(out.device, out.dtype) if out.dtype != torch.bool else out & self.suffix_mask.bool()

    def to(self, device) -> "SharedPrefixBatch":
        return SharedPrefixBatch(*(t.to(device) for t in (self.prefix_ids, self.prefix_mask, self.suffix_ids,
                                                           self.suffix_mask, self.group, self.columns)))


def common_prefix_length(rows: list[list[int]]) -> int:
    """Length of the longest common prefix of token-id lists (the whole row for a single row)."""
    first = rows[0]
    n = min(len(r) for r in rows)
    for i in range(n):
        t = first[i]
        if any(r[i] != t for r in rows[1:]):
            return i
    return n


def pair_groups(pairs: list[tuple[int, int]], n: int) -> list[list[int]]:
    """Rows 0..n-1 grouped by the pairs that link them (connected components; a ranking's completions end
    up in one group). Rows in no pair are groups of their own. Groups are ordered by their first row."""
    parent = list(range(n))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b in pairs:
        ra, rb = root(a), root(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    groups: dict[int, list[int]] = {}
    for i in range(n):
        groups.setdefault(root(i), []).append(i)
    return list(groups.values())


def split_shared_prefix(input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: list[list[int]], pad_id: int,
                        limits: list[int] | None = None, min_saving: float = MIN_SAVING) -> SharedPrefixBatch | None:
    """Cut a padded batch into the shared prefix of each group and the rows' continuations.

    A group's prefix is the longest common prefix of its rows' real tokens, at most `limits[i]` for each of
    its rows and at most its shortest row's length - 1 (every continuation keeps a token). A group whose
    prefix would be empty is split into single rows; a single row's prefix is its own first tokens, as
    long as the longest shared prefix (so it pads nothing). The cut is token-exact.

    Args:
        input_ids, attention_mask: (N, T) rows, padded on the right or the left.
        groups: a partition of range(N): rows that may share a prefix (e.g. `pair_groups`).
        pad_id: the id written into padding positions.
        limits: (N,) the most tokens of each row that may be in its prefix (DPO: its first scored column).
        min_saving: share only when the padded positions G*P + N*S are at most (1 - min_saving) * N*T.

    Returns:
        The split batch (on the device of `input_ids`), or None when sharing does not pay or a row cannot
        be split (fewer than 2 tokens, or a limit below 1).
    """
    real = attention_mask.bool().cpu()
    where = [row.nonzero().squeeze(-1) for row in real]  # the columns of each row's real tokens
    ids = input_ids.cpu()
    rows = [ids[i, w].tolist() for i, w in enumerate(where)]
    lengths = [len(r) for r in rows]
    cap = [min(n - 1, limits[i] if limits is not None else n) for i, n in enumerate(lengths)]
    if min(cap, default=0) < 1:
        return None
    shared: list[tuple[list[int], int]] = []  # (rows, prefix length)
    singles: list[int] = []
    for g in groups:
        p = min(common_prefix_length([rows[i] for i in g]), *(cap[i] for i in g)) if len(g) > 1 else 0
        if p >= 1:
            shared.append((g, p))
        else:
            singles.extend(g)
    longest = max((p for _, p in shared), default=1)
    shared += [([i], min(cap[i], longest)) for i in singles]
    N, T = input_ids.shape
    G, P = len(shared), max(p for _, p in shared)
    S = max(lengths[i] - p for g, p in shared for i in g)
    if G * P + N * S > (1.0 - min_saving) * N * T:
        return None
    prefix_ids = torch.full((G, P), pad_id, dtype=torch.long)
    prefix_mask = torch.zeros(G, P, dtype=torch.long)
    suffix_ids = torch.full((N, S), pad_id, dtype=torch.long)
    suffix_mask = torch.zeros(N, S, dtype=torch.long)
    columns = torch.zeros(N, S, dtype=torch.long)
    group = torch.zeros(N, dtype=torch.long)
    for k, (g, p) in enumerate(shared):
        prefix_ids[k, P - p :] = torch.tensor(rows[g[0]][:p])
        prefix_mask[k, P - p :] = 1
        for i in g:
            s = lengths[i] - p
            suffix_ids[i, :s] = torch.tensor(rows[i][p:])
            suffix_mask[i, :s] = 1
            columns[i, :s] = where[i][p:]
            group[i] = k
    return SharedPrefixBatch(prefix_ids, prefix_mask, suffix_ids, suffix_mask, group, columns).to(input_ids.device)


# --------------------------------------------------------------------------- forward passes


def shared_forward(model: nn.Module, batch: SharedPrefixBatch, prefix_kwargs: dict | None = None, suffix_kwargs: dict | None = None):
    """The prefix pass (with cache) and the continuation pass reading it.

    Both go through `model`'s own forward (so DDP, peft and autocast wrappers apply); extra keyword arguments
    (e.g. `logits_to_keep`) can be given to each.

    Returns:
        (prefix output, continuation output): the model outputs of the (G, P) and the (N, S) pass.

    Raises:
        ModelError: the model returned no `DynamicCache` from the prefix pass.
    """
    from transformers import DynamicCache

    prefix = model(input_ids=batch.prefix_ids, attention_mask=batch.prefix_mask,
                   position_ids=position_ids_from_mask(batch.prefix_mask), use_cache=True, **(prefix_kwargs or {}))
    cache = prefix.past_key_values
    if not isinstance(cache, DynamicCache):
        raise ModelError(
            f"{type(inner_model(model)).__name__} returned no key/value cache ({type(cache).__name__}); "
            "set train.share_prompt: false for this model"
        )
    cache.batch_select_indices(batch.group)  # (G, ...) -> (N, ...): each continuation's prefix
    mask = torch.cat([batch.prefix_mask[batch.group], batch.suffix_mask], dim=1)  # (N, P + S)
    position_ids = position_ids_from_mask(mask)[:, batch.prefix_ids.shape[1] :]  # (N, S)
    suffix = model(input_ids=batch.suffix_ids, attention_mask=mask, position_ids=position_ids, past_key_values=cache,
                   use_cache=True, **(suffix_kwargs or {}))
    return prefix, suffix


def shared_sequence_logits(model: nn.Module, batch: SharedPrefixBatch) -> torch.Tensor:
    """Pooled logits of a sequence classifier (a decoder reward model) on the split rows: (N, num_labels).

    The classifier pools the last token that is not padding in the continuation it is given, which is the
    last real token of the full row.
    """
    return shared_forward(model, batch)[1].logits


def continuation_logprobs(model: nn.Module, batch: SharedPrefixBatch, temperature: float = 1.0) -> torch.Tensor:
    """Log-probability of every continuation token of a causal LM's shared-prefix forward: (N, S) float32.

    The first continuation token is predicted by the prefix's last position (the last column, since
    prefixes are left-padded), the others by the continuation positions before them; logits are divided by
    `temperature` when it is not 1. Values on continuation padding are meaningless (callers mask them).
    """
    S = batch.suffix_ids.shape[1]
    keep = accepts_logits_to_keep(model)
    prefix, suffix = shared_forward(model, batch, {"logits_to_keep": 1} if keep else None, {"logits_to_keep": S} if keep else None)
    first = upcast(prefix.logits[:, -1:])[batch.group]  # (N, 1, V) predicts each continuation's first token
    rest = upcast(suffix.logits[:, -S:-1])  # (N, S-1, V) predict the others (no (N, S, V) copy of both)
    if temperature != 1.0:
        first, rest = first / temperature, rest / temperature
    return torch.cat([gather_logprobs(first, batch.suffix_ids[:, :1]), gather_logprobs(rest, batch.suffix_ids[:, 1:])], dim=1)  # (N, S)


def shared_sequence_logprobs(model: nn.Module, batch: SharedPrefixBatch, loss_mask: torch.Tensor, average: bool = False) -> torch.Tensor:
    """Sum (or mean) of log p(token) over the `loss_mask` tokens, from a shared-prefix forward of a causal LM.

    The first continuation token is predicted by the prefix's last position (the last column, since
    prefixes are left-padded), the others by the continuation positions before them. Equals
    `sequence_logprobs` on the full rows when no scored token lies inside a prefix (`split_shared_prefix`
    with `limits` = first scored column).

    Args:
        loss_mask: (N, T) bool over the original right-padded rows.

    Returns:
        (N,) float32 (float64 for a float64 model).
    """
    logprobs = continuation_logprobs(model, batch)  # (N, S)
    mask = batch.cut(loss_mask).to(logprobs.dtype)  # (N, S)
    total = (logprobs * mask).sum(-1)
    return total / mask.sum(-1).clamp(min=1) if average else total


# --------------------------------------------------------------------------- entry points of the trainers


def pair_split(input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor, pad_id: int) -> SharedPrefixBatch | None:
    """Split a (2B, T) DPO batch (B chosen rows, then the B rejected rows) so that rows i and B + i share their
    common prefix up to the first scored (`loss_mask`) token of either; None when sharing does not pay."""
    B = input_ids.shape[0] // 2
    scored = loss_mask.bool()
    limits = torch.where(scored.any(-1), scored.int().argmax(-1), 0).tolist()  # (2B,) first scored column
    return split_shared_prefix(input_ids, attention_mask, [[i, B + i] for i in range(B)], pad_id, limits)


def split_sequence_logprobs(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, loss_mask: torch.Tensor,
                            split: SharedPrefixBatch | None, average: bool = False) -> torch.Tensor:
    """`sequence_logprobs` of right-padded rows, through the shared-prefix forward when `split` is given and
    the model can share (`can_share`), else on the full rows. Returns (N,) float32."""
    if split is not None and can_share(model):
        return shared_sequence_logprobs(model, split, loss_mask, average)
    return sequence_logprobs(model, input_ids, attention_mask, loss_mask, average)


def agreed(split: SharedPrefixBatch | None, agree: Callable[[bool], bool] | None) -> SharedPrefixBatch | None:
    """`split`, or None unless every process has one: `agree(has_split)` is True when all processes say True."""
    return split if agree is None or agree(split is not None) else None


def grouped_sequence_logits(model: nn.Module, input_ids: torch.Tensor, attention_mask: torch.Tensor, groups: list[list[int]] | None,
                            pad_id: int, agree: Callable[[bool], bool] | None = None) -> torch.Tensor:
    """Logits of a sequence classifier on right-padded rows: (N, T) -> (N, num_labels).

    Rows of one group (e.g. the completions of one prompt) share their common prefix when `groups` is given,
    the model is a causal decoder (`can_share`) and sharing pays; otherwise the full rows run as they are.
    `pad_id` must be the model's `config.pad_token_id` (the classifier pools the last non-pad token).
    `agree`: with several processes, makes them all take the same path (`agreed`).
    """
    split = None
    if groups is not None and can_share(model):
        split = agreed(split_shared_prefix(input_ids, attention_mask, groups, pad_id), agree)
    if split is not None:
        return shared_sequence_logits(model, split)
    return model(input_ids=input_ids, attention_mask=attention_mask).logits


def prompt_groups(prompts: torch.Tensor, prompt_mask: torch.Tensor) -> list[list[int]] | None:
    """Rows of a rollout that answer the same prompt (GRPO's groups), as a partition of range(B) in first-seen
    order; None when every prompt is different (nothing to share).

    Args:
        prompts, prompt_mask: (B, T_p) left-padded prompts and their mask.
    """
    seen: dict[tuple[int, ...], list[int]] = {}
    for i, (row, mask) in enumerate(zip(prompts.tolist(), prompt_mask.tolist())):
        seen.setdefault(tuple(t for t, m in zip(row, mask) if m), []).append(i)
    groups = list(seen.values())
    return groups if len(groups) < prompts.shape[0] else None


def grouped_response_logprobs(model: nn.Module, sequences: torch.Tensor, attention_mask: torch.Tensor, prompt_length: int,
                              groups: list[list[int]] | None, pad_id: int, temperature: float = 1.0,
                              agree: Callable[[bool], bool] | None = None) -> torch.Tensor:
    """`response_logprobs` of a rollout whose rows answer shared prompts, each prompt run once.

    The rows of a group (the completions of one prompt) share their prompt's forward pass (`shared_forward`);
    the prefix is cut at the row's real prompt tokens, so every response token is predicted by the prefix's
    last position (the first) or by the response positions before it (the others), with gradients through
    the shared keys and values. Without groups, for a model that cannot share, or when sharing does not pay,
    the full rows run (`response_logprobs`).

    Args:
        sequences, attention_mask: (B, T) left-padded prompts of width `prompt_length`, then right-padded responses.
        groups: a partition of range(B) into rows with the same prompt (`prompt_groups`), or None.
        pad_id: the tokenizer's pad id. temperature: the sampling temperature (logits are divided by it).
        agree: with several processes, makes them all take the same path (`agreed`).

    Returns:
        (B, T_r) float32 logprobs of the response tokens (0 on response padding when shared; callers mask).
    """
    split = None
    if groups is not None and can_share(model):
        limits = attention_mask[:, :prompt_length].sum(-1).tolist()  # each row's real prompt tokens
        split = split_shared_prefix(sequences, attention_mask, groups, pad_id, limits)
    split = agreed(split, agree)
    if split is None:
        return response_logprobs(model, sequences, attention_mask, prompt_length, temperature)
    logprobs = continuation_logprobs(model, split, temperature)  # (B, S)
    in_response = split.suffix_mask.bool() & (split.columns >= prompt_length)  # (B, S)
    columns = (split.columns - prompt_length).clamp(min=0)  # (B, S) response column of each position
    out = torch.zeros(sequences.shape[0], sequences.shape[1] - prompt_length, dtype=logprobs.dtype, device=logprobs.device)
    return out.scatter_add(1, columns, logprobs * in_response)  # (B, T_r)
