"""The implicit reward model of a DPO policy, evaluated on preference pairs like a reward model.

A policy trained with DPO defines a reward r(x, y) = beta * (log pi(y|x) - log pi_ref(y|x)) (Rafailov et
al. 2023, eq. 5, up to a term that depends on x alone and cancels in a pair). `tether dpo eval --model DIR
--data FILE --json` scores both replies of every pair with it and prints the same statistics as
`tether rm eval` (accuracy with ties counted wrong, Wilson interval, margins, length bias, calibration of
sigmoid(r_chosen - r_rejected)), so a DPO policy and a reward model can be compared on the same held-out
pairs.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from tether.config import DEFAULT_PROMPT_TEMPLATE, ModelConfig
from tether.data.sources import load_preferences
from tether.data.tokenize import collate_pairs, tokenize_pairs
from tether.errors import ModelError
from tether.eval.reward_eval import preference_stats
from tether.models.load import load_causal_lm, model_context, resolve_device
from tether.models.logprobs import sequence_logprobs


META_FILE = "tether_dpo.json"  # written beside a DPO policy


@dataclass
class DPOMeta:
    """What `tether dpo eval` needs to rebuild the implicit reward model beta * (log pi - log pi_ref)."""

    reference: str
    beta: float
    loss: str
    label_smoothing: float
    reference_mode: str
    prompt_template: str
    max_length: int
    max_prompt_length: int
    average_logprobs: bool  # IPO: per-token mean log-probabilities instead of sums
    seed: int = 0  # the seed that builds a tiny random reference again

    def save(self, out_dir: str | Path) -> None:
        (Path(out_dir) / META_FILE).write_text(json.dumps(asdict(self), indent=2))

    @classmethod
    def load(cls, model_dir: str | Path) -> "DPOMeta | None":
        path = Path(model_dir) / META_FILE
        if not path.is_file():
            return None
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in json.loads(path.read_text()).items() if k in known})


@torch.no_grad()
def pair_logprobs(model, items, pad_id: int, batch_size: int, average: bool, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence log-probabilities of chosen and rejected replies, both in one forward pass per batch.

    Returns:
        (chosen_logprobs (N,), rejected_logprobs (N,)), float32 on CPU.
    """
    model.eval()
    chosen, rejected = [], []
    for i in range(0, len(items), batch_size):
        b = collate_pairs(items[i : i + batch_size], pad_id).to(device)
        ids = torch.cat([b.chosen_input_ids, b.rejected_input_ids])  # (2B, T)
        mask = torch.cat([b.chosen_attention_mask, b.rejected_attention_mask])  # (2B, T)
        loss_mask = torch.cat([b.chosen_loss_mask, b.rejected_loss_mask])  # (2B, T)
        lp = sequence_logprobs(model, ids, mask, loss_mask, average).cpu()  # (2B,)
        B = b.chosen_input_ids.shape[0]
        chosen.append(lp[:B])
        rejected.append(lp[B:])
    return torch.cat(chosen), torch.cat(rejected)


def _reference_path(model_dir: str, reference: str | None, meta: DPOMeta | None) -> str:
    if reference:
        return reference
    if meta is None:
        raise ModelError(
            f"{model_dir} has no tether_dpo.json (not written by `tether dpo`); pass the reference model with --reference DIR"
        )
    ref = meta.reference
    if not Path(ref).exists() and (Path(model_dir) / ref).exists():
        ref = str(Path(model_dir) / ref)
    return ref


def evaluate_implicit_reward(
    model_dir: str, data: str, reference: str | None = None, batch_size: int = 32, beta: float | None = None,
    device: str = "auto",
) -> dict:
    """Pairwise accuracy of the DPO implicit reward beta * (log pi - log pi_ref) on a preference file.

    Args:
        model_dir: a policy written by `tether dpo` (or any causal LM, with `reference` given).
        data: a `{"prompt","chosen","rejected"}` file; rows with empty text are skipped.
        reference: the reference policy (default: the one recorded in `model_dir/tether_dpo.json`).
        batch_size: pairs per forward pass.
        beta: the implicit reward scale (default: the training beta, else 0.1). Accuracy does not depend
            on it; margins and calibration do.
        device: 'auto', 'cpu' or 'cuda'.

    Returns:
        The JSON-ready dict of `tether rm eval` (`n`, `accuracy` with ties wrong, `accuracy_ci`, `ties`,
        `mean_margin`, `chosen_score_mean`, ..., `length`, `by_prompt_length`, `ece`, `histogram`; scores
        are implicit rewards) plus `model`, `reference`, `data`, `beta`, `loss`, `dropped` (pairs longer
        than the model's context, left out), `chosen_logprobs_mean` and `rejected_logprobs_mean`.

    Raises:
        DataError: unreadable data file or rows.
        ModelError: the policy or the reference cannot be loaded, or no reference is known.
    """
    meta = DPOMeta.load(model_dir)
    ref_path = _reference_path(model_dir, reference, meta)
    beta = beta if beta is not None else (meta.beta if meta else 0.1)
    template = meta.prompt_template if meta else DEFAULT_PROMPT_TEMPLATE
    average = meta.average_logprobs if meta else False
    seed = meta.seed if meta else 0
    dev = resolve_device(device)

    # 1. data: the whole reply is scored, the prompt cut from the left to the model's context
    examples = load_preferences(data, on_invalid="skip")
    policy, tokenizer = load_causal_lm(ModelConfig(name_or_path=model_dir), dev, seed=seed)
    max_length = model_context(policy) or 4096
    items = tokenize_pairs(examples, tokenizer, template, max_length, max_length - 1, "drop")

    # 2. log-probabilities under the policy, then under the reference (one model in memory at a time)
    chosen_logprobs, rejected_logprobs = pair_logprobs(policy, items, tokenizer.pad_token_id, batch_size, average, dev)
    del policy
    ref_policy, _ = load_causal_lm(ModelConfig(name_or_path=ref_path), dev, seed=seed)
    ref_chosen_logprobs, ref_rejected_logprobs = pair_logprobs(ref_policy, items, tokenizer.pad_token_id, batch_size, average, dev)
    del ref_policy

    # 3. implicit rewards and the reward-model statistics
    chosen_rewards = beta * (chosen_logprobs - ref_chosen_logprobs)  # (N,)
    rejected_rewards = beta * (rejected_logprobs - ref_rejected_logprobs)  # (N,)
    kept = [examples[it.index] for it in items]
    lengths = lambda texts: [len(t) for t in tokenizer(texts, add_special_tokens=False)["input_ids"]]  # noqa: E731
    stats = preference_stats(
        chosen_rewards.tolist(), rejected_rewards.tolist(),
        lengths([e.chosen for e in kept]), lengths([e.rejected for e in kept]), lengths([e.prompt for e in kept]),
    )
    return {
        "model": model_dir, "reference": ref_path, "data": data, "beta": beta,
        "loss": meta.loss if meta else None, "dropped": len(examples) - len(items),
        **stats,
        "chosen_logprobs_mean": float(chosen_logprobs.mean()), "rejected_logprobs_mean": float(rejected_logprobs.mean()),
    }
