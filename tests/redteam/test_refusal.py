"""The refusal string matcher on hand-made answers; XSTest loading and the by-prompt split."""

import pytest

from tether.errors import DataError
from tether.redteam.refusal import (
    StringMatchDetector, accuracy, is_refusal_text, load_xstest_completions, split_by_prompt,
)

REFUSALS = [
    "I'm sorry, but I can't help with that.",
    "I cannot provide instructions for making weapons.",
    "As an AI, I must decline this request.",
    "I apologise, this is not something I will do.",
    "I won't write that.",
    "It is not appropriate for me to answer that.",
    "I'm not able to assist with hacking.",
    "",  # an empty answer gives the user nothing
]
ANSWERS = [
    "To kill a Python process, run `kill -9 <pid>`.",
    "Sure! Here are three ways to bake bread.",
    "The capital of France is Paris.",
    "Killing time at the airport: read a book or walk around.",
    "Step 1: open the terminal.",
]


@pytest.mark.parametrize("text", REFUSALS)
def test_refusals_detected(text):
    assert is_refusal_text(text)


@pytest.mark.parametrize("text", ANSWERS)
def test_answers_not_flagged(text):
    assert not is_refusal_text(text)


def test_detector_probs_and_accuracy():
    probs = StringMatchDetector().refusal_probs(["p"] * 3, ["I can't do that.", "Here you go.", ""])
    assert probs.tolist() == [1.0, 0.0, 1.0]
    assert accuracy(probs, [True, False, False]) == pytest.approx(2 / 3)


def test_xstest_rows_and_prompt_split(tmp_path, jsonl):
    rows = [{"prompt": f"q{i % 10}", "completion": f"answer {i}", "label": lab}
            for i, lab in enumerate(["1_full_compliance", "2_full_refusal", "3_partial_refusal"] * 10)]
    rows.append({"prompt": "q0", "completion": "  ", "label": "2_full_refusal"})  # empty: left out
    data = load_xstest_completions(jsonl(tmp_path / "x.jsonl", rows))
    assert len(data) == 30 and sum(r.refusal for r in data) == 20  # full and partial refusals
    train, held = split_by_prompt(data, 0.3)
    assert not {r.prompt for r in train} & {r.prompt for r in held}
    bad = jsonl(tmp_path / "bad.jsonl", [{"prompt": "a", "completion": "b", "label": "maybe"}])
    with pytest.raises(DataError, match="bad.jsonl:1.*label"):
        load_xstest_completions(bad)


def test_lexical_classifier_learns_refusals(tmp_path, jsonl):
    import json

    from tether.redteam.refusal import META_FILE, ClassifierDetector, train_refusal_classifier

    rows = []
    for i in range(40):
        rows.append({"prompt": f"question {i}", "completion": f"Here is how: step {i}, then step {i + 1}.", "label": "1_full_compliance"})
        rows.append({"prompt": f"question {i}", "completion": "I must decline; this is something I will not do.", "label": "2_full_refusal"})
    meta = train_refusal_classifier(str(jsonl(tmp_path / "x.jsonl", rows)), str(tmp_path / "lex"), base_model="lexical", device="cpu")
    assert meta["heldout_accuracy"] == 1.0 and meta["n_train"] + meta["n_heldout"] == 80
    assert json.loads((tmp_path / "lex" / META_FILE).read_text())["base_model"] == "lexical"
    probs = ClassifierDetector(tmp_path / "lex", device=None).refusal_probs(["q", "q", "q"], ["Here is how: step 1.", "I must decline.", ""])
    assert probs[0] < 0.5 < probs[1] and probs[2] == 1.0
