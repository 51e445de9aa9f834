"""Fuzzing the JSON API from its OpenAPI schema (schemathesis, in-process ASGI, no network).

Every operation gets requests generated from the schema, valid ones and invalid ones, signed in with
the token it needs (the admin's for admin operations, a labeler's for labeler ones); no answer may be
a 5xx (schemathesis' `not_a_server_error`). On half of the calls the path ids are folded into the
small range the seeded database holds, so requests reach the handlers' logic rather than a 404.

The run is derandomized (the same requests every time); `TETHER_FUZZ_EXAMPLES=400` explores more.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis.errors import Unsatisfiable  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402
from schemathesis.checks import not_a_server_error  # noqa: E402

from conftest import ADMIN_TOKEN, bearer  # noqa: E402
from db_backends import db_url  # noqa: E402, F401
from tether.feedback.app import create_app  # noqa: E402
from tether.storage import FeedbackStore, NewItem, TaskKind  # noqa: E402

EXAMPLES = int(os.environ.get("TETHER_FUZZ_EXAMPLES", "25"))  # per operation and generation mode
FOLD_IDS = 6  # ids 1..5 exist in the seeded database


@pytest.fixture
def seeded(db_url) -> Iterator[tuple[FeedbackStore, int]]:
    """A database with a campaign of each kind and a labeler with an open task in each; the labeler's id."""
    store = FeedbackStore(db_url)
    store.set_admin_token(ADMIN_TOKEN)
    labeler = store.add_labeler("fuzzer")
    for kind in TaskKind:
        n_completions = {TaskKind.THUMBS: 1, TaskKind.PAIR: 2}.get(kind, 3)
        items = [NewItem(prompt=f"p{i}", completions=[f"c{j}" for j in range(n_completions)]) for i in range(4)]
        campaign = store.create_campaign(f"fuzz-{kind.value}", kind, items)
        store.next_task(campaign.id, labeler.labeler.id)
    yield store, labeler.labeler.id
    store.close()


def _fuzz(operation, mode: GenerationMode, token: str, statuses: Counter) -> None:
    """Send generated requests to one operation; raises on the first 5xx (shrunk to a minimal one)."""

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True, suppress_health_check=list(HealthCheck))
    def run(case) -> None:
        ids = [v for v in (case.path_parameters or {}).values() if isinstance(v, int)]
        if ids and sum(ids) % 2 == 0:
            case.path_parameters = {k: (v % FOLD_IDS if isinstance(v, int) else v) for k, v in case.path_parameters.items()}
        response = case.call_and_validate(headers=bearer(token), checks=[not_a_server_error])
        statuses[response.status_code // 100 * 100] += 1

    run()


def test_no_server_errors_on_any_operation(seeded):
    store, labeler_id = seeded
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(store))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 20
    failures, reached = [], set()
    for operation in operations:
        token = ADMIN_TOKEN
        if "labeler" in (operation.tags or []):
            # the admin operations fuzzed before may have disabled the labeler or given it a new token
            store.set_labeler_active(labeler_id, True)
            token = store.rotate_token(labeler_id)
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            statuses: Counter = Counter()
            try:
                _fuzz(operation, mode, token, statuses)
            except Unsatisfiable:  # nothing to make invalid: an operation without parameters or body
                assert mode == GenerationMode.NEGATIVE, operation.label
            except Exception as exc:  # every operation's failure, reported together
                failures.append(f"{operation.label} ({mode.value}): {exc}")
            if statuses[200]:
                reached.add(operation.label)
    assert not failures, "\n\n".join(failures)
    # the tokens work and the requests get through: most operations answered 2xx at least once
    assert len(reached) >= len(operations) * 3 // 4, sorted({op.label for op in operations} - reached)
