"""Password login: failures answer alike, are logged, rate-limited, and lock the account."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine

from tests.api.conftest import PASSWORD, Api, make_api, problem
from tests.integration.test_clip import Native
from vault.crypto import LocalKeyProvider

OP = "operator-tokyo"


@pytest.fixture
def api(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native]
) -> Iterator[Api]:
    yield from make_api(
        engine, tmp_path, keys, natives,
        login_max_failures=3, login_lockout_minutes=10, login_client_max_failures=8,
        login_window_seconds=300,
    )


def _logins(api: Api, after: int) -> list[tuple[str, str, str]]:
    return [(e.actor, e.decision, e.reason) for e in api.events(after) if e.action == "auth.login"]


def test_failures_answer_alike_and_are_logged_with_their_cause(api: Api) -> None:
    mark = api.head()
    wrong = problem(api.login(OP, "wrong password!!"), 401)
    unknown = problem(api.login("nobody-here", PASSWORD), 401)
    # The caller cannot tell an unknown user from a wrong password...
    assert wrong["detail"] == unknown["detail"]
    # ...the ledger can.
    assert _logins(api, mark) == [
        (OP, "refused", "bad-credentials"),
        ("nobody-here", "refused", "bad-credentials"),
    ]


def test_lockout_after_repeated_failures_lifted_by_time_or_admin(api: Api) -> None:
    for _ in range(3):
        problem(api.login(OP, "wrong password!!"), 401)
    mark = api.head()
    # Locked: even the right password is refused now.
    problem(api.login(OP, PASSWORD), 401)
    assert _logins(api, mark) == [(OP, "refused", "locked")]
    # Time lifts it.
    api.clock.advance(timedelta(minutes=10, seconds=1))
    assert api.login(OP, PASSWORD).status_code == 200
    # An administrator lifts it too.
    for _ in range(3):
        problem(api.login(OP, "wrong password!!"), 401)
    problem(api.login(OP, PASSWORD), 401)
    assert api.post(f"/users/{OP}/unlock", "admin-tokyo").status_code == 200
    assert api.login(OP, PASSWORD).status_code == 200


def test_rate_limit_per_user_name_and_per_client(api: Api) -> None:
    # Guessing at a name that does not exist: no lockout to hit, the per-name limit (6) stops it.
    for _ in range(6):
        problem(api.login("ghost", "guess number one"), 401)
    mark = api.head()
    limited = api.login("ghost", "guess number two")
    body = problem(limited, 429)
    assert int(limited.headers["retry-after"]) > 0
    assert "retry in" in body["detail"]
    assert _logins(api, mark) == [
        ("ghost", "refused", "rate-limited: too many failed logins for this user")
    ]
    # Two more failures on other names make eight from this client: the client is limited,
    # whoever it tries next — even a correct login.
    problem(api.login("ghost-2", "guess"), 401)
    problem(api.login("ghost-3", "guess"), 401)
    problem(api.login(OP, PASSWORD), 429)
    # The window passes; the right password works again.
    api.clock.advance(timedelta(seconds=301))
    assert api.login(OP, PASSWORD).status_code == 200


def test_malformed_login_is_a_problem_detail(api: Api) -> None:
    resp = api.client.post("/auth/token", json={"username": OP})
    body = problem(resp, 422)
    assert body["errors"][0]["field"] == "password"
    resp = api.client.post("/auth/token", json={"username": OP, "password": "x", "extra": 1})
    assert problem(resp, 422)["errors"][0]["field"] == "extra"
    resp = api.client.post("/auth/token", content=b"{not json", headers={
        "content-type": "application/json"
    })
    problem(resp, 422)
