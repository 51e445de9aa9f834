"""Masked reductions and log-probability helpers shared by the losses and the RL math.

Torch only. Masks are boolean tensors of the same shape as the values they select; a True entry is a
real token, a False entry is padding and never contributes to a statistic.
"""

from __future__ import annotations

import torch

__all__ = [
    "masked_sum",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "upcast",
    "gather_logprobs",
    "entropy_from_logits",
    "first_true_indices",
    "response_mask_from_eos",
]


def masked_sum(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of the entries of `values` where `mask` is True.

    Args:
        values: any shape, e.g. (B, T_r).
        mask: bool, same shape as `values`.
        dim: dimension to reduce; None reduces the whole tensor to a scalar.

    Returns:
        The masked sum: a scalar when `dim` is None, else `values` with `dim` removed.
    """
    zeros = torch.zeros_like(values)
    selected = torch.where(mask.bool(), values, zeros)  # masked-out NaNs do not leak into the sum
    if dim is None:
        return selected.sum()
    return selected.sum(dim=dim)


def masked_mean(values: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of the entries of `values` where `mask` is True.

    A slice with no True entry has mean 0 (not NaN), so an empty minibatch row cannot poison a loss.

    Args:
        values: any shape, e.g. (B, T_r).
        mask: bool, same shape as `values`.
        dim: dimension to reduce; None reduces the whole tensor to a scalar.

    Returns:
        The masked mean: a scalar when `dim` is None, else `values` with `dim` removed.
    """
    count = mask.bool().sum() if dim is None else mask.bool().sum(dim=dim)
    total = masked_sum(values, mask, dim)
    return total / count.clamp(min=1).to(total.dtype)


def masked_var(values: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of the entries of `values` where `mask` is True, over the whole tensor.

    Args:
        values: any shape, e.g. (B, T_r).
        mask: bool, same shape as `values`.
        unbiased: apply Bessel's correction n / (n - 1).

    Returns:
        Scalar variance.

    Raises:
        ValueError: if `unbiased` and fewer than two entries are selected (the variance is undefined).
    """
    mean = masked_mean(values, mask)
    variance = masked_mean((values - mean) ** 2, mask)
    if unbiased:
        count = int(mask.bool().sum())
        if count < 2:
            raise ValueError(f"unbiased masked_var needs at least 2 selected entries, got {count}")
        variance = variance * count / (count - 1)
    return variance


def masked_whiten(
    values: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Normalise `values` to zero mean and unit variance using the masked entries only.

    Args:
        values: any shape, e.g. (B, T_r).
        mask: bool, same shape as `values`.
        shift_mean: subtract the mean; when False only divide by the standard deviation and add the
            mean back, so the sign of every entry is kept relative to the mean.
        eps: added to the variance before the square root.

    Returns:
        Whitened values, same shape as `values`; entries where `mask` is False are 0.

    Raises:
        ValueError: if fewer than two entries are selected.
    """
    mean = masked_mean(values, mask)
    variance = masked_var(values, mask, unbiased=True)
    whitened = (values - mean) * torch.rsqrt(variance + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask.bool(), whitened, torch.zeros_like(whitened))


def upcast(values: torch.Tensor) -> torch.Tensor:
    """`values` in float32, or unchanged when already float64: losses are computed in float32 or wider."""
    return values if values.dtype == torch.float64 else values.float()


def gather_logprobs(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Log-probability of each label under the softmax of `logits`.

    Computes `logits[label] - logsumexp(logits)` in float32 (float64 for float64 logits), which is what
    `log_softmax(...).gather(...)` gives without materialising a second (B, T, V) tensor of log-probabilities.

    Args:
        logits: (B, T, V), any floating dtype; `logits[:, t]` predicts `labels[:, t]`.
        labels: (B, T) long token ids in [0, V).

    Returns:
        (B, T) float32 log-probabilities (float64 for float64 logits).
    """
    label_logits = upcast(logits.gather(-1, labels.long().unsqueeze(-1)).squeeze(-1))  # (B, T)
    if logits.dtype in (torch.float32, torch.float64):
        normalisers = upcast(torch.logsumexp(logits, dim=-1))  # (B, T)
    else:
        # one row at a time keeps the float32 copy of half-precision logits to (T, V)
        normalisers = torch.stack([torch.logsumexp(row.float(), dim=-1) for row in logits])  # (B, T)
    return label_logits - normalisers


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution given by `logits`, per position.

    H = logsumexp(z) - sum_v softmax(z)_v * z_v, computed in float32.

    Args:
        logits: (B, T, V).

    Returns:
        (B, T) float32 entropies in nats (float64 for float64 logits).
    """
    logits = upcast(logits)
    probs = torch.softmax(logits, dim=-1)  # (B, T, V)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)


def first_true_indices(bools: torch.Tensor) -> torch.Tensor:
    """Index of the first True entry of each row.

    Args:
        bools: (B, T) bool.

    Returns:
        (B,) long; T for a row with no True entry.
    """
    length = bools.shape[-1]
    positions = torch.arange(length, device=bools.device).expand_as(bools)  # (B, T)
    sentinel = torch.full_like(positions, length)
    return torch.where(bools.bool(), positions, sentinel).min(dim=-1).values


def response_mask_from_eos(
    responses: torch.Tensor, eos_token_id: int, pad_token_id: int
) -> torch.Tensor:
    """Mask of the real tokens of generated responses: everything up to and including the first EOS.

    Generation pads a row only after it has emitted EOS, so a row without EOS ran to the length limit
    and all of its positions are real. The mask depends on the first EOS only: `pad_token_id` is
    accepted so callers state both ids, and the result stays right even if pad equals EOS.

    Args:
        responses: (B, T_r) long token ids.
        eos_token_id: id that ends a response.
        pad_token_id: id used after EOS.

    Returns:
        (B, T_r) bool, True for real response tokens (the first EOS included).
    """
    del pad_token_id  # positions after the first EOS are padding whatever their id
    first_eos = first_true_indices(responses == eos_token_id)  # (B,)
    positions = torch.arange(responses.shape[-1], device=responses.device)  # (T_r,)
    return positions.unsqueeze(0) <= first_eos.unsqueeze(1)  # (B, T_r)
