"""Reward-model evaluation on preference pairs: accuracy, margins, length bias, calibration.

`tether rm eval --model DIR --data FILE --json` prints the dict of `evaluate_reward_model`. Beyond
accuracy it asks the questions that catch a reward model that will be hacked: does it just prefer longer
answers (accuracy split by which answer is longer, and the correlation of score difference with length
difference), does it fail on long prompts (accuracy by prompt-length tertile), and are its preference
probabilities sigmoid(r_chosen - r_rejected) calibrated (Bradley & Terry 1952; ECE of Guo et al. 2017).
For an ensemble directory it adds how much the members disagree; for a classifier reward model on
labelled completions (`{"prompt","completion","label"}` or XSTest rows) it reports accuracy, AUROC and the
calibration of P(desirable) instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from tether.data.feedback import load_reward_pairs, load_thumbs
from tether.data.sources import iter_rows
from tether.eval.metrics import auroc, expected_calibration_error, reliability_bins, wilson_interval
from tether.html import figure_data_uri, new_figure, render_report
from tether.models.load import resolve_device
from tether.models.reward import EnsembleReward, RewardModel

HIST_BINS = 20
TERTILE_NAMES = ("short", "medium", "long")


# --------------------------------------------------------------------------- statistics


def _accuracy(correct: np.ndarray) -> float | None:
    return float(correct.mean()) if correct.size else None


def _group(correct: np.ndarray, where: np.ndarray) -> dict:
    return {"n": int(where.sum()), "accuracy": _accuracy(correct[where])}


def _correlation(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson correlation, None when undefined (fewer than 2 points or a constant input)."""
    if x.size < 2 or np.std(x) == 0 or np.std(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])



def length_baselines(chosen_lengths: np.ndarray, rejected_lengths: np.ndarray) -> dict:
    """Accuracy of the rules "the longer answer wins" and "the shorter answer wins" (equal length = wrong).

    A reward model should beat both; one that only matches the longer-wins rule has learnt length.
    """
    length_diff = np.asarray(chosen_lengths) - np.asarray(rejected_lengths)  # (N,)
    return {"longer_wins": float((length_diff > 0).mean()), "shorter_wins": float((length_diff < 0).mean())}


def length_bias(correct: np.ndarray, score_diff: np.ndarray, chosen_lengths: np.ndarray, rejected_lengths: np.ndarray) -> dict:
    """Accuracy when the chosen answer is longer / shorter / equally long, and the length correlation.

    Args:
        correct: (N,) bool, chosen scored strictly higher.
        score_diff: (N,) r_chosen - r_rejected.
        chosen_lengths, rejected_lengths: (N,) response lengths in tokens.

    Returns:
        `{"chosen_longer": {n, accuracy}, "chosen_shorter": ..., "same_length": ...,
        "chosen_longer_fraction", "score_length_correlation"}`; an accuracy is None for an empty group.
    """
    length_diff = chosen_lengths - rejected_lengths  # (N,)
    return {
        "chosen_longer": _group(correct, length_diff > 0),
        "chosen_shorter": _group(correct, length_diff < 0),
        "same_length": _group(correct, length_diff == 0),
        "chosen_longer_fraction": float((length_diff > 0).mean()),
        "score_length_correlation": _correlation(score_diff, length_diff.astype(float)),
    }


def by_prompt_length(correct: np.ndarray, prompt_lengths: np.ndarray) -> list[dict]:
    """Accuracy in three equal-count groups of prompts, shortest first (split by rank, so ties in length
    do not empty a group).

    Returns:
        Up to three `{"name", "n", "min_tokens", "max_tokens", "accuracy"}`; empty groups are left out.
    """
    order = np.argsort(prompt_lengths, kind="stable")
    groups = []
    for name, idx in zip(TERTILE_NAMES, np.array_split(order, 3)):
        if idx.size == 0:
            continue
        groups.append({
            "name": name, "n": int(idx.size),
            "min_tokens": int(prompt_lengths[idx].min()), "max_tokens": int(prompt_lengths[idx].max()),
            "accuracy": _accuracy(correct[idx]),
        })
    return groups


def calibration(logits: np.ndarray, n_bins: int = 10) -> dict:
    """Calibration of p = sigmoid(logit) as the probability that the chosen answer is preferred.

    Each pair is counted in both orders (p with label 1, 1 - p with label 0): with only the chosen-first
    order every label would be 1 and the reliability diagram would say nothing about overconfidence.

    Args:
        logits: (N,) Bradley-Terry logits r_chosen - r_rejected (unnormalised scores).

    Returns:
        `{"ece", "bins": [{"confidence", "accuracy", "count"}, ...]}`.
    """
    p = 1.0 / (1.0 + np.exp(-logits))  # (N,)
    probs = np.concatenate([p, 1.0 - p])  # (2N,)
    labels = np.concatenate([np.ones_like(p), np.zeros_like(p)])  # (2N,)
    bins = reliability_bins(probs, labels, n_bins)
    return {
        "ece": expected_calibration_error(probs, labels, n_bins),
        "bins": [{"confidence": b.confidence, "accuracy": b.accuracy, "count": b.count} for b in bins],
    }


def score_histogram(chosen: np.ndarray, rejected: np.ndarray, n_bins: int = HIST_BINS) -> dict:
    """Shared-edge histograms of chosen and rejected scores: `{"edges", "chosen", "rejected"}`."""
    both = np.concatenate([chosen, rejected])
    low, high = float(both.min()), float(both.max())
    if high - low < 1e-9:
        low, high = low - 0.5, high + 0.5
    edges = np.linspace(low, high, n_bins + 1)
    return {
        "edges": edges.tolist(),
        "chosen": np.histogram(chosen, edges)[0].tolist(),
        "rejected": np.histogram(rejected, edges)[0].tolist(),
    }


def preference_stats(
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    chosen_lengths: Sequence[int],
    rejected_lengths: Sequence[int],
    prompt_lengths: Sequence[int],
    logit_scale: float = 1.0,
    logits: Sequence[float] | None = None,
) -> dict:
    """All reward-model statistics from scores and lengths (no model involved).

    Args:
        chosen_scores, rejected_scores: (N,) scores of the preferred and the other answer.
        chosen_lengths, rejected_lengths: (N,) answer lengths in tokens.
        prompt_lengths: (N,) prompt lengths in tokens.
        logit_scale: turns a score difference into the Bradley-Terry logit (1 / gain of normalised scores).
        logits: (N,) Bradley-Terry logits given directly (an ensemble's mean raw difference); overrides
            `logit_scale`.

    Returns:
        The JSON-ready dict described in `evaluate_reward_model` (without `model` and `data`).

    Raises:
        ValueError: on empty input or mismatched lengths.
    """
    chosen, rejected = np.asarray(chosen_scores, float), np.asarray(rejected_scores, float)
    if chosen.size == 0 or chosen.shape != rejected.shape:
        raise ValueError(f"need equal, non-zero numbers of chosen and rejected scores, got {chosen.size} and {rejected.size}")
    diff = chosen - rejected  # (N,)
    correct = diff > 0  # ties count as wrong
    n = int(chosen.size)
    low, high = wilson_interval(float(correct.sum()), n)
    cal = calibration(diff * logit_scale if logits is None else np.asarray(logits, float))
    return {
        "n": n,
        "accuracy": float(correct.mean()),
        "accuracy_ci": [low, high],
        "ties": int((diff == 0).sum()),
        "mean_margin": float(diff.mean()),
        "chosen_score_mean": float(chosen.mean()),
        "chosen_score_std": float(chosen.std()),
        "rejected_score_mean": float(rejected.mean()),
        "rejected_score_std": float(rejected.std()),
        "length": length_bias(correct, diff, np.asarray(chosen_lengths), np.asarray(rejected_lengths)),
        "length_baselines": length_baselines(np.asarray(chosen_lengths), np.asarray(rejected_lengths)),
        "by_prompt_length": by_prompt_length(correct, np.asarray(prompt_lengths)),
        "ece": cal["ece"],
        "reliability_bins": cal["bins"],
        "histogram": score_histogram(chosen, rejected),
    }


# --------------------------------------------------------------------------- model


def token_lengths(tokenizer, texts: list[str]) -> list[int]:
    """Number of tokens of each text under `tokenizer`, special tokens excluded."""
    return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]


def ensemble_disagreement(chosen: np.ndarray, rejected: np.ndarray, gains: Sequence[float]) -> dict:
    """How much ensemble members disagree on preference pairs.

    Args:
        chosen, rejected: (M, N) normalised scores of each member.
        gains: (M,) each member's normalisation gain (to turn score differences back into logits).

    Returns:
        `{"members", "member_accuracy": [M], "score_std_mean"` (mean over replies of the std across members),
        `"pair_disagreement"` (fraction of pairs where the members do not all prefer the same reply),
        `"diff_std_mean"` (mean over pairs of the std of r_chosen - r_rejected across members),
        `"accuracy_when_agree"`, `"accuracy_when_disagree"` (of the mean score, with counts)}.
    """
    diff = chosen - rejected  # (M, N)
    votes = diff > 0  # (M, N)
    agree = votes.all(0) | (~votes).all(0)  # (N,)
    correct = diff.mean(0) > 0  # (N,)
    return {
        "members": int(chosen.shape[0]),
        "member_accuracy": [float(v.mean()) for v in votes],
        "member_gain": [float(g) for g in gains],
        "score_std_mean": float(np.concatenate([chosen.std(0), rejected.std(0)]).mean()),
        "pair_disagreement": float((~agree).mean()),
        "diff_std_mean": float(diff.std(0).mean()),
        "accuracy_when_agree": _group(correct, agree),
        "accuracy_when_disagree": _group(correct, ~agree),
    }


def _is_labelled(data: str) -> bool:
    """Whether a data file holds labelled completions (thumbs or XSTest rows) rather than pairs."""
    for row in iter_rows(data):
        return "completion" in row.data and "chosen" not in row.data
    return False


def evaluate_reward_model(
    model_dir: str, data: str, batch_size: int = 32, max_length: int | None = None, device: str = "auto",
    on_invalid: str = "skip",
) -> dict:
    """Score every pair of a preference file and measure how well and how fairly the model ranks them.

    Args:
        model_dir: a reward-model directory (from `tether rm`), an ensemble directory, or any HF
            sequence-classification model.
        data: a `{"prompt","chosen","rejected"}` or rankings file; or labelled completions
            (`{"prompt","completion","label"}`, XSTest rows), which gives `evaluate_classifier`'s result.
        batch_size: texts per forward pass.
        max_length: reward-model input tokens (default: the length the model was trained with).
        device: 'auto', 'cpu' or 'cuda'.
        on_invalid: 'skip' (default) leaves out rows with an empty text, with a warning; 'error' stops.

    Returns:
        A JSON-ready dict: `model`, `data`, `model_kind` (scalar, classifier or ensemble), `n`, `accuracy`
        (strictly higher chosen score; ties are wrong), `accuracy_ci` (95% Wilson), `ties`, `mean_margin`,
        `chosen_score_mean/std`, `rejected_score_mean/std`, `length` (accuracy when the chosen answer is
        longer / shorter / the same length, with counts, and `score_length_correlation`),
        `length_baselines` (accuracy of "longer wins" and "shorter wins"), `by_prompt_length` (tertiles),
        `ece` and `reliability_bins` of sigmoid(r_chosen - r_rejected), `histogram` of the scores, and
        for an ensemble `ensemble` (`ensemble_disagreement`, plus `combine` and `k`).

    Raises:
        DataError: unreadable data file or rows.
        ModelError: the model cannot be loaded.
    """
    if _is_labelled(data):
        return evaluate_classifier(model_dir, data, batch_size, max_length, device, on_invalid)
    examples = load_reward_pairs(data, on_invalid)
    rm = RewardModel.load(model_dir, resolve_device(device))
    prompts = [e.prompt for e in examples]
    chosen_texts, rejected_texts = [e.chosen for e in examples], [e.rejected for e in examples]
    extra: dict = {}
    logits = None
    if isinstance(rm, EnsembleReward):
        member_chosen = rm.member_scores(prompts, chosen_texts, batch_size, max_length).numpy()  # (M, N)
        member_rejected = rm.member_scores(prompts, rejected_texts, batch_size, max_length).numpy()  # (M, N)
        chosen = rm.combine_scores(torch.from_numpy(member_chosen), rm.combine, rm.k)
        rejected = rm.combine_scores(torch.from_numpy(member_rejected), rm.combine, rm.k)
        gains = np.array([m.meta.gain or 1.0 for m in rm.members])
        logits = ((member_chosen - member_rejected) / gains[:, None]).mean(0)  # (N,) mean raw BT logit
        extra["ensemble"] = {"combine": rm.combine, "k": rm.k, **ensemble_disagreement(member_chosen, member_rejected, gains)}
        kind = "ensemble"
    else:
        chosen = rm.score(prompts, chosen_texts, batch_size, max_length)
        rejected = rm.score(prompts, rejected_texts, batch_size, max_length)
        kind = rm.meta.kind
    stats = preference_stats(
        chosen.tolist(), rejected.tolist(),
        token_lengths(rm.tokenizer, chosen_texts),
        token_lengths(rm.tokenizer, rejected_texts),
        token_lengths(rm.tokenizer, prompts),
        logit_scale=1.0 / rm.meta.gain if rm.meta.gain else 1.0,
        logits=logits,
    )
    return {"model": model_dir, "data": data, "model_kind": kind, **stats, **extra}


def classifier_stats(probs: Sequence[float], labels: Sequence[bool], scores: Sequence[float] | None = None) -> dict:
    """Statistics of a classifier reward model on labelled completions.

    Args:
        probs: (N,) predicted P(desirable).
        labels: (N,) True where the completion is desirable.
        scores: (N,) reward scores, for the histograms (default: `probs`).

    Returns:
        `{"n", "accuracy" (p > 0.5 equals the label), "accuracy_ci", "auroc", "positive_fraction", "ece",
        "reliability_bins", "histogram"` (scores of desirable as `chosen`, undesirable as `rejected`)}.

    Raises:
        ValueError: on empty input or mismatched lengths.
    """
    p, y = np.asarray(probs, float), np.asarray(labels).astype(bool)
    if p.size == 0 or p.shape != y.shape:
        raise ValueError(f"need equal, non-zero numbers of probabilities and labels, got {p.size} and {y.size}")
    s = p if scores is None else np.asarray(scores, float)
    correct = (p > 0.5) == y
    low, high = wilson_interval(float(correct.sum()), int(p.size))
    bins = reliability_bins(p, y, 10)
    pos, neg = s[y], s[~y]
    return {
        "n": int(p.size),
        "accuracy": float(correct.mean()),
        "accuracy_ci": [low, high],
        "auroc": auroc(p, y),
        "positive_fraction": float(y.mean()),
        "ece": expected_calibration_error(p, y, 10),
        "reliability_bins": [{"confidence": b.confidence, "accuracy": b.accuracy, "count": b.count} for b in bins],
        "histogram": score_histogram(pos if pos.size else s, neg if neg.size else s),
    }


def evaluate_classifier(
    model_dir: str, data: str, batch_size: int = 32, max_length: int | None = None, device: str = "auto", on_invalid: str = "skip"
) -> dict:
    """Accuracy, AUROC and calibration of a classifier reward model on labelled completions.

    Args:
        model_dir: a classifier reward-model directory (`kind: classifier`).
        data: `{"prompt","completion","label"}` rows or XSTest labelled completions.

    Returns:
        `{"model", "data", "model_kind": "classifier", "task": "labels", "by_prompt_length"}` plus
        `classifier_stats`.

    Raises:
        DataError: unreadable data file or rows.
        ModelError: the model cannot be loaded or is not a classifier.
    """
    from tether.errors import ModelError

    examples = load_thumbs(data, on_invalid)
    rm = RewardModel.load(model_dir, resolve_device(device))
    if isinstance(rm, EnsembleReward) or rm.meta.kind != "classifier":
        raise ModelError(f"{model_dir}: labelled completions need a classifier reward model; use a preference file for this one")
    prompts, completions = [e.prompt for e in examples], [e.completion for e in examples]
    labels = np.array([e.label for e in examples])
    probs = rm.class_probs(prompts, completions, batch_size, max_length).numpy()
    scores = rm.score(prompts, completions, batch_size, max_length).numpy()
    stats = classifier_stats(probs, labels, scores)
    correct = (probs > 0.5) == labels
    return {
        "model": model_dir, "data": data, "model_kind": "classifier", "task": "labels", **stats,
        "by_prompt_length": by_prompt_length(correct, np.asarray(token_lengths(rm.tokenizer, prompts))),
    }


# --------------------------------------------------------------------------- report


def reward_verdict(result: dict) -> str:
    """Plain-language summary of a reward-model evaluation, in numbers."""
    length = result["length"]

    def pct(group: dict) -> str:
        return "n/a" if group["accuracy"] is None else f"{group['accuracy']:.0%}"

    corr = length["score_length_correlation"]
    corr_text = "undefined" if corr is None else f"{corr:.2f}"
    low, high = result["accuracy_ci"]
    return (
        f"The reward model ranks the chosen answer higher on {result['accuracy']:.1%} of {result['n']} pairs "
        f"(95% CI {low:.1%}-{high:.1%}; {result['ties']} ties counted as wrong), mean margin "
        f"{result['mean_margin']:.3g}, ECE {result['ece']:.3f}. Accuracy is {pct(length['chosen_longer'])} "
        f"where the chosen answer is longer (n={length['chosen_longer']['n']}) and "
        f"{pct(length['chosen_shorter'])} where it is shorter (n={length['chosen_shorter']['n']}); "
        f"correlation of score difference with length difference {corr_text}."
    )


def _reliability_figure(bins: list[dict]) -> str:
    """The reliability diagram (observed frequency against predicted probability) as a PNG data URI."""
    fig = new_figure(4.0, 4.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.plot([0, 1], [0, 1], linestyle="--", color="#999", label="perfect calibration")
    used = [b for b in bins if b["count"] > 0]
    ax.plot([b["confidence"] for b in used], [b["accuracy"] for b in used], marker="o", color="#3b6ea8", label="model")
    ax.set_xlabel("predicted P(preferred)")
    ax.set_ylabel("observed frequency")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend()
    return figure_data_uri(fig)


def _histogram_figure(hist: dict) -> str:
    """Chosen (blue) and rejected (grey) score histograms on shared edges as a PNG data URI."""
    fig = new_figure(5.0, 3.0)
    ax = fig.add_subplot(1, 1, 1)
    ax.stairs(hist["rejected"], hist["edges"], fill=True, alpha=0.6, color="#7f8c8d", label="rejected")
    ax.stairs(hist["chosen"], hist["edges"], fill=True, alpha=0.6, color="#3b6ea8", label="chosen")
    ax.set_xlabel("score")
    ax.legend()
    return figure_data_uri(fig)


def _ensemble_rows(ens: dict) -> list[list]:
    rows = [[f"member {i}", acc] for i, acc in enumerate(ens["member_accuracy"])]
    rows += [
        ["combined score", f"{ens['combine']} (k = {ens['k']:g})"],
        ["pairs where members disagree", ens["pair_disagreement"]],
        ["mean std of a reply's score across members", ens["score_std_mean"]],
        ["accuracy where members agree", f"{ens['accuracy_when_agree']['accuracy']} (n={ens['accuracy_when_agree']['n']})"],
        ["accuracy where members disagree", f"{ens['accuracy_when_disagree']['accuracy']} (n={ens['accuracy_when_disagree']['n']})"],
    ]
    return rows


def write_reward_report(path: str | Path, result: dict) -> Path:
    """Write a self-contained HTML report of `evaluate_reward_model`'s result.

    Preference pairs get `reward_eval.html` (summary, length bias, accuracy by prompt length, calibration,
    score distributions, ensemble disagreement); labelled completions (`task: labels`, from
    `evaluate_classifier`) get `reward_classifier.html` (summary, calibration of P(desirable), score
    distributions by label).

    Args:
        path: the HTML file to write (its folder is created).
        result: the dict returned by `evaluate_reward_model`.

    Returns:
        The path written.

    Raises:
        KeyError: `result` lacks a statistic the report shows.
        OSError: the file cannot be written.
    """
    figures = {
        "reliability": _reliability_figure(result["reliability_bins"]),
        "histogram": _histogram_figure(result["histogram"]),
    }
    if result.get("task") == "labels":
        return render_report("reward_classifier.html", path, title="Classifier reward model evaluation", result=result, **figures)
    length = result["length"]
    return render_report(
        "reward_eval.html", path, title="Reward model evaluation", result=result, verdict=reward_verdict(result),
        length_rows=[[name.replace("_", " "), length[name]["n"], length[name]["accuracy"]]
                     for name in ("chosen_longer", "chosen_shorter", "same_length")],
        prompt_rows=[[g["name"], f"{g['min_tokens']}-{g['max_tokens']}", g["n"], g["accuracy"]] for g in result["by_prompt_length"]],
        ensemble_rows=_ensemble_rows(result["ensemble"]) if "ensemble" in result else [],
        **figures,
    )
