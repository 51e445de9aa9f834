"""The catalogue of bad inputs: each stops the command before training, with exit status 1 and one line on
stderr naming the file and line (or the config key), and no traceback.

Every case runs the real command line in-process (`tether.cli.main`) and also checks that no training
started: the run directory holds no metrics.
"""

import gzip
import json
from pathlib import Path

import pytest
import yaml

from tether.cli import main


def _jsonl(path: Path, rows) -> str:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return str(path)


GOOD_SFT = [{"prompt": "say hi", "response": "hi there"}, {"prompt": "say bye", "response": "bye now"}]
GOOD_PAIRS = [{"prompt": "q", "chosen": "good answer", "rejected": "bad answer"}, {"prompt": "r", "chosen": "yes", "rejected": "no"}]


def _sft_config(tmp_path, data: str, **extra) -> str:
    cfg = {"model": {"name_or_path": "tiny-llama"}, "data": {"train": data, "max_length": 64},
           "train": {"max_steps": 1, "batch_size": 2}, "output_dir": str(tmp_path / "out")}
    for key, value in extra.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path = tmp_path / "sft.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _rm_config(tmp_path, data: str) -> str:
    path = tmp_path / "rm.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": "tiny-bert"}, "data": {"train": data, "max_length": 64},
                                    "train": {"max_steps": 1}, "output_dir": str(tmp_path / "out")}))
    return str(path)


def _model_without_weights(tmp_path) -> str:
    d = tmp_path / "empty_model"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"model_type": "llama"}))
    return str(d)


def _different_run(tmp_path) -> list[str]:
    out = tmp_path / "out"
    out.mkdir()
    (out / "config.yaml").write_text("model: {name_or_path: some-other-model}\n")
    return ["sft", "--config", _sft_config(tmp_path, _jsonl(tmp_path / "d.jsonl", GOOD_SFT))]


def _corrupt_gzip(tmp_path) -> str:
    path = tmp_path / "d.jsonl.gz"
    path.write_bytes(gzip.compress(b'{"prompt": "a", "response": "b"}\n' * 50)[:-20])
    return str(path)


def _not_utf8(tmp_path) -> str:
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"prompt": "a", "response": "b"}\n{"prompt": "\xff\xfe", "response": "b"}\n')
    return str(path)


# (name, function of tmp_path returning argv, fragment that the one-line message must contain)
CASES = [
    ("malformed JSON line", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [GOOD_SFT[0], '{"prompt": "x", "response": ']))], "d.jsonl:2: not valid JSON"),
    ("missing field", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"prompt": "x"}]))], "d.jsonl:1: missing field 'response'"),
    ("misspelled field", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"prompt": "x", "respone": "y"}]))], "fields present: prompt, respone"),
    ("wrong type", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"prompt": "x", "response": 5}]))], "d.jsonl:1: field 'response' must be a string"),
    ("empty text", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [GOOD_SFT[0], {"prompt": " ", "response": "y"}]))], "d.jsonl:2: field 'prompt' is empty"),
    ("a line that is not an object", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", ["[1, 2]"]))], "d.jsonl:1: expected a JSON object"),
    ("duplicate pair", lambda t: ["rm", "--config", _rm_config(t, _jsonl(t / "p.jsonl", GOOD_PAIRS + [GOOD_PAIRS[0]]))], "p.jsonl:3: duplicate of the pair at"),
    ("chosen identical to rejected", lambda t: ["rm", "--config", _rm_config(t, _jsonl(t / "p.jsonl", [{"prompt": "q", "chosen": "same", "rejected": "same "}]))], "p.jsonl:1: 'chosen' and 'rejected' are identical"),
    ("margin not a number", lambda t: ["rm", "--config", _rm_config(t, _jsonl(t / "p.jsonl", [{**GOOD_PAIRS[0], "margin": "big"}]))], "p.jsonl:1: field 'margin' must be a number"),
    ("prompt longer than the context", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"prompt": "x" * 200, "response": "y"}]), **{"data.truncation": "error"})], "d.jsonl:1:"),
    ("response longer than max_length", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"prompt": "x", "response": "y" * 300}]))], "the response alone does not fit"),
    ("wrong encoding", lambda t: ["sft", "--config", _sft_config(t, _not_utf8(t))], "d.jsonl:2: not UTF-8"),
    ("corrupt gzip", lambda t: ["sft", "--config", _sft_config(t, _corrupt_gzip(t))], "d.jsonl.gz: cannot read"),
    ("missing data file", lambda t: ["sft", "--config", _sft_config(t, str(t / "nope.jsonl"))], "data file not found"),
    ("data path is a directory", lambda t: ["sft", "--config", _sft_config(t, str(t))], "is a directory"),
    ("empty data file", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", []))], "no usable SFT rows"),
    ("bad conversation", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", [{"messages": [{"role": "user", "content": "hi"}]}]))], "d.jsonl:1: the last message must be the assistant's reply"),
    ("model path without weights", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT), **{"model.name_or_path": _model_without_weights(t)})], "no weights"),
    ("model path that does not exist", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT), **{"model.name_or_path": str(t / "missing_model")})], "model not found"),
    ("max_length beyond the model's context", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT), **{"data.max_length": 4096})], "data.max_length=4096 is longer than the model's context"),
    ("unknown config key", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT), **{"train.learning_rat": 1e-3})], "unknown config key 'train.learning_rat'"),
    ("unknown override key", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT)), "ppo.kl_coef=0.1"], "unknown config key 'ppo'"),
    ("negative learning rate", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT)), "train.learning_rate=-1e-4"], "train.learning_rate"),
    ("wrong type in config", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT)), "train.batch_size=many"], "train.batch_size"),
    ("missing required key", lambda t: ["sft", f"model.name_or_path=tiny-llama", f"output_dir={t / 'out'}"], "missing required config key 'data'"),
    ("override without a value", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT)), "train.batch_size"], "must look like key.path=value"),
    ("invalid YAML", lambda t: ["sft", "--config", str(_write(t / "bad.yaml", "model:\n  name_or_path: [unclosed\n"))], "bad.yaml:"),
    ("config file missing", lambda t: ["sft", "--config", str(t / "nope.yaml")], "config file not found"),
    ("incompatible options", lambda t: ["ppo", "model.name_or_path=tiny-llama", "reward_model.path=tiny-bert", "reward_model.function=tether.rl.rule_rewards:brevity", f"data.train={_jsonl(t / 'p.jsonl', GOOD_SFT)}", f"output_dir={t / 'out'}"], "set exactly one of reward_model.path"),
    ("reward function that cannot be imported", lambda t: ["ppo", "model.name_or_path=tiny-llama", "reward_model.function=tether.nowhere:score", f"data.train={_jsonl(t / 'p.jsonl', GOOD_SFT)}", f"output_dir={t / 'out'}"], "reward_model.function 'tether.nowhere:score': cannot import"),
    ("run directory holding a different run", _different_run, "already holds a different run"),
    ("empty held-out split", lambda t: ["sft", "--config", _sft_config(t, _jsonl(t / "d.jsonl", GOOD_SFT), **{"data.split": "holdout", "data.holdout_fraction": 0.0})], "split (holdout_fraction=0.0) is empty"),
    ("pipeline with an unknown stage command", lambda t: ["run", str(_write(t / "p.yaml", "stages:\n  - {name: a, command: trian}\n"))], "unknown command 'trian'"),
]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_the_catalogue_has_at_least_25_kinds():
    assert len({name for name, _, _ in CASES}) >= 25


@pytest.mark.parametrize("name, argv, fragment", CASES, ids=[c[0] for c in CASES])
def test_bad_input_fails_fast_with_one_clear_line(name, argv, fragment, tmp_path, capsys):
    code = main(argv(tmp_path))
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    lines = [line for line in err.splitlines() if line.startswith("tether: error:")]
    assert len(lines) == 1, err
    assert fragment in lines[0]
    assert "Traceback" not in err
    assert not (tmp_path / "out" / "metrics.jsonl").exists() or (tmp_path / "out" / "metrics.jsonl").read_text() == "", "training started"
