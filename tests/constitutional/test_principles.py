"""Constitution loading and validation: the shipped file, and clear errors on bad files."""

import random

import pytest

from tether.constitutional.principles import load_constitution
from tether.errors import ConfigError

GOOD = """
name: test
principles:
  - {name: a, area: harmlessness, critique_request: "Find harm.", revision_request: "Remove harm."}
  - {name: b, area: honesty, critique_request: "Find lies.", revision_request: "Fix lies.", comparison: "Which is truer?"}
"""


def test_shipped_constitution_covers_three_areas():
    c = load_constitution("configs/constitution.yaml")
    assert {p.area for p in c.principles} == {"helpfulness", "honesty", "harmlessness"}
    assert all(p.critique_request and p.revision_request and p.question for p in c.principles)


def test_filter_and_seeded_sampling(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(GOOD)
    c = load_constitution(path)
    assert [p.name for p in c.filter(["honesty"]).principles] == ["b"]
    assert c.principles[0].question.startswith("Which response better follows")  # default question
    draws = lambda: [c.sample(random.Random(3)).name for _ in range(5)]  # noqa: E731
    assert draws() == draws()
    with pytest.raises(ConfigError, match="no principle in areas"):
        c.filter(["nonsense"])


@pytest.mark.parametrize("text, message", [
    ("principles: []", "principles"),
    ("principles:\n  - {name: a, critique_request: x}", "principles.0.revision_request"),
    ("principles:\n  - {name: a, critique_request: x, revision_request: '  '}", "principles.0.revision_request"),
    ("principles:\n  - {name: a, critique_request: x, revision_request: y, colour: red}", "principles.0.colour"),
    ("principles:\n  - {name: a, critique_request: x, revision_request: y}\n  - {name: a, critique_request: x, revision_request: y}",
     "appears twice"),
    ("principles: [a: b: c", "invalid YAML"),
])
def test_bad_constitution_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message) as err:
        load_constitution(path)
    assert "bad.yaml" in str(err.value)


def test_missing_file():
    with pytest.raises(ConfigError, match="not found"):
        load_constitution("no/such/constitution.yaml")
