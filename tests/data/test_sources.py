"""Reading data files: every bad input stops with one line naming the file and line."""

from __future__ import annotations

import gzip
import json

import pytest

from tether.data.sources import in_holdout, iter_rows, load_preferences, load_prompts, load_sft, load_texts, select
from tether.errors import DataError
from tether.types import PreferenceExample, SFTExample

GOOD_SFT = {"prompt": "Say hi.", "response": "Hi!"}
GOOD_PREF = {"prompt": "Say hi.", "chosen": "Hi!", "rejected": "Go away."}


# --------------------------------------------------------------------------- good files


def test_jsonl_rows_keep_their_source(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, "", {"prompt": "p2", "response": "r2"}])
    examples = load_sft(str(path))
    assert [e.prompt for e in examples] == ["Say hi.", "p2"]
    assert examples[0].source == f"{path}:1"
    assert examples[1].source == f"{path}:3"  # blank lines are skipped but still counted


def test_gzip_jsonl(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl.gz", [GOOD_PREF, {"prompt": "q", "chosen": "yes", "rejected": "no", "margin": 2}], gz=True)
    prefs = load_preferences(str(path))
    assert prefs[0] == PreferenceExample("Say hi.", "Hi!", "Go away.", None, f"{path}:1")
    assert prefs[1].margin == 2


def test_several_files_are_concatenated(tmp_path, jsonl):
    a = jsonl(tmp_path / "a.jsonl", [GOOD_SFT])
    b = jsonl(tmp_path / "b.jsonl.gz", [{"prompt": "p", "response": "r"}], gz=True)
    assert [e.prompt for e in load_sft([str(a), str(b)])] == ["Say hi.", "p"]


def test_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text(json.dumps([GOOD_SFT, GOOD_SFT]))
    examples = load_sft(str(path))
    assert len(examples) == 2 and examples[1].source == f"{path}[1]"


def test_messages_conversation_becomes_prompt_and_last_reply(tmp_path, jsonl):
    row = {"messages": [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello."},
        {"role": "user", "content": "Name a colour"},
        {"role": "assistant", "content": " Blue. "},
    ]}
    (ex,) = load_sft(str(jsonl(tmp_path / "m.jsonl", [row])))
    assert ex.response == "Blue."
    assert ex.prompt == "\n\nSystem: Be brief.\n\nHuman: Hi\n\nAssistant: Hello.\n\nHuman: Name a colour\n\nAssistant:"


@pytest.mark.parametrize(
    "messages, expected",
    [
        ([{"role": "user", "content": "Hi"}], "last message must be the assistant"),
        ([], "non-empty list"),
        ([{"role": "robot", "content": "x"}, {"role": "assistant", "content": "y"}], "role"),
        ([{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "  "}], "reply is empty"),
    ],
)
def test_bad_messages_name_the_line(tmp_path, jsonl, messages, expected):
    path = jsonl(tmp_path / "m.jsonl", [GOOD_SFT, {"messages": messages}])
    with pytest.raises(DataError, match=expected) as info:
        load_sft(str(path))
    assert f"{path}:2" in str(info.value)


def test_preference_rows_as_sft_use_the_chosen_reply(tmp_path, jsonl):
    (ex,) = load_sft(str(jsonl(tmp_path / "p.jsonl", [GOOD_PREF])))
    assert ex == SFTExample("Say hi.", "Hi!", f"{tmp_path / 'p.jsonl'}:1")


def test_prompts_ignore_other_fields(tmp_path, jsonl):
    path = jsonl(tmp_path / "p.jsonl", [GOOD_PREF, {"prompt": "Only a prompt", "id": 3}])
    assert [p.prompt for p in load_prompts(str(path))] == ["Say hi.", "Only a prompt"]


def test_load_texts_joins_prompts_with_replies(tmp_path, jsonl):
    path = jsonl(tmp_path / "t.jsonl", [{"text": "plain"}, GOOD_SFT, {"prompt": "alone"}])
    texts = load_texts(str(path), ["text", "prompt", "response"])
    assert texts == ["plain", "\n\nHuman: Say hi.\n\nAssistant: Hi!", "alone"]


# --------------------------------------------------------------------------- bad input


def _error(fn, *args, **kwargs) -> str:
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, "an error must be one line"
    return msg


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope.jsonl"
    msg = _error(load_sft, str(path))
    assert str(path) in msg and "not found" in msg


def test_directory_instead_of_file(tmp_path):
    assert str(tmp_path) in _error(load_sft, str(tmp_path))


def test_malformed_json_line(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, GOOD_SFT, '{"prompt": "x", "response": '])
    msg = _error(load_sft, str(path))
    assert f"{path}:3" in msg and "not valid JSON" in msg


def test_line_that_is_not_an_object(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, "[1, 2]"])
    msg = _error(load_sft, str(path))
    assert f"{path}:2" in msg and "JSON object" in msg


def test_missing_field_names_field_and_line(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, {"prompt": "only a prompt"}])
    msg = _error(load_sft, str(path))
    assert f"{path}:2" in msg and "missing field 'response'" in msg


def test_missing_field_in_preferences(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_PREF, {"prompt": "p", "chosen": "c"}])
    msg = _error(load_preferences, str(path))
    assert f"{path}:2" in msg and "'rejected'" in msg


def test_wrong_type(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [{"prompt": "p", "response": 42}])
    msg = _error(load_sft, str(path))
    assert f"{path}:1" in msg and "'response' must be a string" in msg and "int" in msg


def test_margin_must_be_a_number(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [{**GOOD_PREF, "margin": "big"}])
    msg = _error(load_preferences, str(path))
    assert f"{path}:1" in msg and "margin" in msg


@pytest.mark.parametrize("field", ["prompt", "response"])
def test_empty_text_is_an_error(tmp_path, jsonl, field):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, {**GOOD_SFT, field: "   "}])
    msg = _error(load_sft, str(path))
    assert f"{path}:2" in msg and f"'{field}' is empty" in msg


def test_empty_text_is_skipped_with_on_invalid_skip(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, {**GOOD_SFT, "response": ""}, {"prompt": "", "response": "r"}, GOOD_SFT])
    assert len(load_sft(str(path), on_invalid="skip")) == 2
    prefs = jsonl(tmp_path / "b.jsonl", [GOOD_PREF, {**GOOD_PREF, "chosen": ""}])
    assert len(load_preferences(str(prefs), on_invalid="skip")) == 1


def test_skip_does_not_hide_other_errors(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_SFT, {"prompt": "p"}])
    assert f"{path}:2" in _error(load_sft, str(path), on_invalid="skip")


def test_all_rows_skipped_is_an_error(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [{**GOOD_SFT, "response": ""}])
    assert "no usable" in _error(load_sft, str(path), on_invalid="skip")


def test_chosen_identical_to_rejected(tmp_path, jsonl):
    path = jsonl(tmp_path / "a.jsonl", [GOOD_PREF, {"prompt": "p", "chosen": "Same.", "rejected": " Same. "}])
    msg = _error(load_preferences, str(path))
    assert f"{path}:2" in msg and "identical" in msg


def test_not_utf8(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(json.dumps(GOOD_SFT).encode() + b"\n" + '{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1"))
    msg = _error(load_sft, str(path))
    assert str(path) in msg and "UTF-8" in msg


def test_not_utf8_names_the_bad_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    good = json.dumps(GOOD_SFT).encode() + b"\n"
    path.write_bytes(good * 3 + '{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1") + good)
    assert f"{path}:4:" in _error(load_sft, str(path))


def test_not_utf8_in_gzip(tmp_path):
    path = tmp_path / "latin1.jsonl.gz"
    with gzip.open(path, "wb") as fh:
        fh.write('{"prompt": "caf\u00e9", "response": "x"}\n'.encode("latin-1"))
    msg = _error(load_sft, str(path))
    assert str(path) in msg and "UTF-8" in msg


def test_corrupt_gzip(tmp_path):
    path = tmp_path / "bad.jsonl.gz"
    path.write_bytes(b"this is not gzip data")
    assert str(path) in _error(lambda: list(iter_rows(path)))


def test_bad_json_array_file(tmp_path):
    path = tmp_path / "a.json"
    path.write_text('{"prompt": "x"}')
    assert str(path) in _error(load_sft, str(path))


# --------------------------------------------------------------------------- splits


def _examples(n: int) -> list[SFTExample]:
    return [SFTExample(f"prompt number {i}", f"reply {i}") for i in range(n)]


def test_holdout_split_is_deterministic_and_disjoint():
    examples = _examples(400)
    train = select(examples, "train", 0.2, None)
    hold = select(examples, "holdout", 0.2, None)
    assert select(examples, "train", 0.2, None) == train
    assert select(examples, "holdout", 0.2, None) == hold
    assert {e.prompt for e in train}.isdisjoint({e.prompt for e in hold})
    assert len(train) + len(hold) == len(examples)
    assert {e.prompt for e in train} | {e.prompt for e in hold} == {e.prompt for e in examples}
    assert 40 <= len(hold) <= 120  # roughly 20%
    assert select(examples, "all", 0.2, None) == examples


def test_holdout_depends_only_on_the_prompt():
    assert in_holdout("a prompt", 0.3) == in_holdout("a prompt", 0.3)
    assert not in_holdout("a prompt", 0.0)
    # the same prompt lands on the same side whatever else is in the file (every stage agrees)
    few = select(_examples(50), "holdout", 0.2, None)
    many = select(_examples(400), "holdout", 0.2, None)
    assert set(e.prompt for e in few) <= set(e.prompt for e in many)


def test_max_samples_and_empty_split():
    assert len(select(_examples(30), "train", 0.0, 5)) == 5
    with pytest.raises(DataError, match="holdout"):
        select(_examples(30), "holdout", 0.0, None)


def test_skip_samples_cuts_disjoint_slices_of_the_split():
    examples = _examples(60)
    train = select(examples, "train", 0.2, None)
    first = select(examples, "train", 0.2, 10)
    second = select(examples, "train", 0.2, 10, skip_samples=10)
    assert first == train[:10] and second == train[10:20]
    assert not {e.prompt for e in first} & {e.prompt for e in second}
    with pytest.raises(DataError, match=f"after skipping 1000 of its {len(train)} rows"):
        select(examples, "train", 0.2, None, skip_samples=1000)
