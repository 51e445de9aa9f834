"""The job kinds `tether label worker` runs; each loads models (torch), imported only inside the job.

- `sample`: K completions per pasted prompt with a model, then the campaign is created from them (the admin
  page's "new campaign from prompts").
- `respond`: a red-team campaign's model answers a labeler's prompt (the label page waits for it).
- `generate`: the playground: one prompt answered by every configured model (SFT, checkpoints, aligned
  policy), each answer scored by the reward model and the judge when configured.

Both report progress as they go; `generate` also stores the answers so far, so the page shows them as they come.
"""

from __future__ import annotations

from typing import Any

from tether.errors import TetherError
from tether.feedback.campaign_file import parse_campaign_text
from tether.feedback.service import sample_items
from tether.feedback.tasks import expand_items, item_problem
from tether.feedback.jobs import Handler, JobContext
from tether.storage import TaskKind

SAMPLE_CHUNK = 16  # prompts per sampling call: progress is reported after each


def sample_campaign(ctx: JobContext) -> dict[str, Any]:
    """Samples `k` completions for each of `prompts` with `model_path`, then creates the campaign.

    Params: name, kind, labelers_per_item, guidelines, model_path, prompts (list), k; and optionally gold_text
    (a gold file, checked by the form), gold_rate and members (labeler names).

    Returns:
        {"campaign_id", "campaign", "n_items"}.

    Raises:
        TetherError: sampling failed, or an item does not fit the task kind.
        Conflict: the campaign name was taken meanwhile.
    """
    p = ctx.params
    kind, prompts, model_path = TaskKind(p["kind"]), list(p["prompts"]), p["model_path"]
    items = []
    for start in range(0, len(prompts), SAMPLE_CHUNK):
        ctx.progress(start / max(1, len(prompts)), f"sampling {p['k']} completions for prompts {start + 1}-"
                     f"{min(len(prompts), start + SAMPLE_CHUNK)} of {len(prompts)} with {model_path}")
        items.extend(sample_items(model_path, prompts[start : start + SAMPLE_CHUNK], int(p["k"])))
    for number, item in enumerate(items, start=1):
        problem = item_problem(kind, item)
        if problem:
            raise TetherError(f"prompt {number}: {problem}")
    if p.get("gold_text"):
        items += parse_campaign_text(p["gold_text"], kind, source="gold file", gold=True)
    ctx.progress(1.0, "creating the campaign")
    campaign = ctx.store.create_campaign(p["name"], kind, expand_items(kind, items), p.get("guidelines", ""), int(p.get("labelers_per_item", 1)),
                                         model_path, gold_rate=float(p.get("gold_rate", 0.1)), members=list(p.get("members", [])))
    return {"campaign_id": campaign.id, "campaign": campaign.name, "n_items": campaign.n_items}


def generate_answers(ctx: JobContext) -> dict[str, Any]:
    """The playground: every model's answer to one prompt, with reward-model (and judge) scores.

    Params: prompt, models ([{"name", "path", "kl"}]), reward_model (path or None), judge (path or None),
    generation (GenerationConfig keys), seed, and optionally prompt_template and max_prompt_length (a personal run's:
    the format its adapters were trained with). Every model samples with the same seed, so answers differ by the
    weights alone.

    Returns:
        {"prompt", "answers": [{"name", "kl", "text", "reward", "judge"}]} in the order of `models` (the paths stay
        in the parameters, on the server).
    """
    import torch

    from tether.config import GenerationConfig
    from tether.models.load import release_memory, resolve_device
    from tether.models.reward import load_reward
    from tether.rollout.sample import sample_completions

    p = ctx.params
    prompt, models = p["prompt"], p["models"]
    gen = GenerationConfig(**(p.get("generation") or {}))
    scorers = [(key, p[key]) for key in ("reward_model", "judge") if p.get(key)]
    steps = len(models) + len(scorers)
    prompting = {k: p[k] for k in ("prompt_template", "max_prompt_length") if p.get(k) is not None}
    answers = [{"name": m["name"], "kl": m.get("kl"), "text": None, "reward": None, "judge": None} for m in models]
    result = {"prompt": prompt, "answers": answers}
    for i, m in enumerate(models):
        ctx.progress(i / steps, f"{m['name']}: generating", result)
        answers[i]["text"] = sample_completions(m["path"], [prompt], 1, gen, seed=int(p.get("seed", 0)), **prompting)[0][0]
    device = resolve_device("auto")
    texts = [a["text"] for a in answers]
    for j, (key, path) in enumerate(scorers):
        ctx.progress((len(models) + j) / steps, f"scoring with the {'reward model' if key == 'reward_model' else 'judge'}", result)
        scorer = load_reward(path, None, device)
        with torch.no_grad():
            scores = scorer.score([prompt] * len(texts), texts).tolist()
        for a, score in zip(answers, scores):
            a["reward" if key == "reward_model" else "judge"] = float(score)
        del scorer
        release_memory(device)
    return result


def respond(ctx: JobContext) -> dict[str, str]:
    """A red-team campaign's model answers a labeler's prompt. Params: model_path, prompt. Returns {"response"}."""
    ctx.progress(0.0, f"{ctx.params['model_path']}: answering")
    return {"response": sample_items(ctx.params["model_path"], [ctx.params["prompt"]], 1)[0].completions[0]}


HANDLERS: dict[str, Handler] = {"sample": sample_campaign, "generate": generate_answers, "respond": respond}
