"""Holds, retention policies, the retention report and purge runs over HTTP (SQLite and
PostgreSQL, the real filesystem store, the real ledger).

cam-a (tokyo) has five recorded segments between T0 and T0+13 s, each with a thumbnail; cam-b
is in osaka. The clock stands at T0 + 1 h.
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

import pytest
from httpx import Response
from sqlmodel import col, select

from access_api.principals import add_user
from tests.api.conftest import NOW, PASSWORD, Api, S, problem
from tests.integration.test_clip import T0
from vault.db import unit_of_work
from vault.models import Hold, PurgeRun, RetentionPolicy, Segment, SegmentState

DAY = timedelta(days=1)
REASON = "litigation over the gate 2 incident"


def segments(api: Api) -> list[Segment]:
    with unit_of_work(api.ctx.engine) as session:
        return list(session.exec(select(Segment).order_by(col(Segment.start))))


def legal_holds(api: Api) -> list[tuple[bool, bool]]:
    """(segment object held, thumbnail held) per segment of cam-a, read from the store."""
    out = []
    for segment in segments(api):
        assert segment.thumb_key is not None
        info, thumb = api.ctx.store.head(segment.object_key), api.ctx.store.head(segment.thumb_key)
        assert info is not None and thumb is not None
        out.append((info.legal_hold, thumb.legal_hold))
    return out


def locks(api: Api) -> list[datetime | None]:
    out = []
    for segment in segments(api):
        for key in (segment.object_key, segment.thumb_key):
            assert key is not None
            info = api.ctx.store.head(key)
            assert info is not None
            out.append(info.retain_until)
    return out


def hold_body(**change: Any) -> dict[str, Any]:
    body = {
        "kind": "legal", "cameras": ["cam-a"], "start": T0.isoformat(),
        "end": (T0 + 6 * S).isoformat(), "reason": REASON, "warrant_ref": "W-2026-17",
    }
    body.update(change)
    return body


def place(api: Api, user: str = "legal-tokyo", **change: Any) -> Response:
    return api.post("/holds", user, hold_body(**change))


def put_policy(api: Api, user: str, days: Any, reason: str = "PCI scope review 2026") -> Response:
    return api.client.put(
        "/retention-policies/pci", headers=api.as_(user), json={"days": days, "reason": reason}
    )


def hold_rows(api: Api) -> list[Hold]:
    with unit_of_work(api.ctx.engine) as session:
        return list(session.exec(select(Hold)))


@pytest.fixture
def colleague(api: Api) -> str:
    """A second legal counsel at tokyo: the one who may release legal-tokyo's holds."""
    with unit_of_work(api.ctx.engine) as session:
        add_user(session, "legal2-tokyo", ["legal"], ["tokyo-1"], NOW, password=PASSWORD)
    return "legal2-tokyo"


def test_legal_hold_is_placed_logged_and_set_on_the_store(api: Api) -> None:
    api.token("legal-tokyo")
    mark = api.head()
    resp = place(api)
    assert resp.status_code == 201, resp.text
    hold = resp.json()
    assert hold["kind"] == "legal" and hold["active"] is True
    assert hold["placed_by"] == "legal-tokyo" and hold["warrant_ref"] == "W-2026-17"
    # Segments [0,2) [2,4) [4,6) are inside [T0, T0+6 s); [9,11) and [11,13) are not.
    assert legal_holds(api) == [(True, True)] * 3 + [(False, False)] * 2

    placed, synced = [e for e in api.events(mark) if e.action.startswith("holds.")]
    assert (placed.action, placed.decision, placed.target) == (
        "holds.place", "allowed", f"hold:{hold['id']}"
    )
    assert placed.reason.startswith("hold-legal:")
    assert json.loads(placed.details)["reason_given"] == REASON
    assert (synced.actor, synced.action, synced.decision) == (
        "system:store-sync", "holds.objects", "done"
    )
    assert json.loads(synced.details)["held"] == 6


def test_placer_cannot_release_own_legal_hold_a_colleague_can(api: Api, colleague: str) -> None:
    hold = place(api).json()["id"]
    api.token("legal-tokyo")
    mark = api.head()
    refused = problem(api.post(f"/holds/{hold}/release", "legal-tokyo", {"reason": "done"}), 403)
    assert refused["rule"] == "four-eyes"
    (event,) = api.events(mark)
    assert (event.action, event.decision) == ("holds.release", "refused")
    assert legal_holds(api)[0] == (True, True)

    resp = api.post(f"/holds/{hold}/release", colleague, {"reason": "case settled in court"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["released_by"] == colleague and resp.json()["active"] is False
    assert legal_holds(api) == [(False, False)] * 5

    again = api.post(f"/holds/{hold}/release", "privacy-officer-tokyo", {"reason": "again now"})
    problem(again, 409)


def test_privacy_officer_releases_any_hold_overlapping_holds_stay(api: Api) -> None:
    legal = place(api).json()["id"]
    security = place(
        api, "supervisor-tokyo", kind="security", start=(T0 + 4 * S).isoformat(),
        end=(T0 + 13 * S).isoformat(), expires_at=(NOW + 7 * DAY).isoformat(),
    )
    assert security.status_code == 201, security.text
    assert legal_holds(api) == [(True, True)] * 5

    resp = api.post(f"/holds/{legal}/release", "privacy-officer-osaka", {"reason": "court order"})
    assert resp.status_code == 200, resp.text
    # [4,6) is still under the security hold; [0,2) and [2,4) are not.
    assert legal_holds(api) == [(False, False)] * 2 + [(True, True)] * 3

    active = api.get("/holds", "privacy-officer-tokyo", params={"state": "active"}).json()
    assert [h["id"] for h in active] == [security.json()["id"]]
    assert api.get("/holds", "supervisor-osaka").json() == []  # not their sites
    assert len(api.get("/holds", "auditor-osaka").json()) == 2  # oversight sees all


@pytest.mark.parametrize(
    ("user", "change", "status", "rule"),
    [
        ("legal-tokyo", {"kind": "security", "expires_at": (NOW + DAY).isoformat()}, 403,
         "hold-role"),
        ("supervisor-tokyo", {"kind": "legal"}, 403, "hold-role"),
        ("supervisor-tokyo", {"kind": "security"}, 403, "hold-expiry"),
        ("supervisor-osaka", {"kind": "security", "expires_at": (NOW + DAY).isoformat()}, 404,
         None),
        ("legal-tokyo", {"end": (T0 - S).isoformat()}, 422, None),  # end before start
        ("legal-tokyo", {"end": T0.isoformat()}, 422, None),  # empty range
        ("legal-tokyo", {"expires_at": (NOW - S).isoformat()}, 422, None),  # expired already
        ("legal-tokyo", {"reason": "because"}, 422, None),
        ("legal-tokyo", {"cameras": ["cam-x"]}, 404, None),
        ("legal-tokyo", {"cameras": ["cam-b"]}, 404, None),  # osaka: not in scope
        ("operator-tokyo", {}, 403, "role"),
    ],
)
def test_bad_or_unauthorized_holds_change_nothing_and_are_logged(
    api: Api, user: str, change: dict[str, Any], status: int, rule: str | None
) -> None:
    api.token(user)  # the login is an event of its own
    mark = api.head()
    body = problem(place(api, user, **change), status)
    if rule is not None:
        assert body["rule"] == rule
    assert hold_rows(api) == []
    assert legal_holds(api) == [(False, False)] * 5
    assert [(e.actor, e.decision) for e in api.events(mark)] == [(user, "refused")]


@pytest.mark.parametrize(
    "change",
    [
        {"start": "2026-11-29T01:00:00"},  # naive (I8)
        {"expires_at": "2026-12-29T01:00:00"},
        {"kind": "personal"},
        {"cameras": []},
        {"cameras": ["Cam A"]},
        {"extra": "field"},
    ],
)
def test_malformed_holds_are_422_and_change_nothing(api: Api, change: dict[str, Any]) -> None:
    body = problem(place(api, **change), 422)
    assert body["errors"]
    assert hold_rows(api) == []


def test_naive_release_reason_and_unknown_hold(api: Api) -> None:
    problem(api.post(f"/holds/{'0' * 8}-0000-0000-0000-{'0' * 12}/release",
                     "privacy-officer-tokyo", {"reason": "nothing to release"}), 404)
    problem(api.post("/holds/not-a-uuid/release", "privacy-officer-tokyo", {"reason": "x"}), 422)


def test_policy_lengthened_extends_locks_shortened_moves_the_catalog(api: Api) -> None:
    before = segments(api)
    assert all(s.retention_until == s.end + 90 * DAY for s in before)
    api.token("privacy-officer-tokyo")
    mark = api.head()

    resp = put_policy(api, "privacy-officer-tokyo", 180)
    assert resp.status_code == 200, resp.text
    assert resp.json()["old_days"] == 90 and resp.json()["new_days"] == 180
    assert resp.json()["segments"] == 5 and resp.json()["policy"]["days"] == 180
    after = segments(api)
    assert [s.retention_until for s in after] == [s.end + 180 * DAY for s in before]
    expected_locks = [s.end + 180 * DAY for s in before for _ in (0, 1)]
    assert locks(api) == expected_locks  # segment and thumbnail, extended
    changed, relocked = [e for e in api.events(mark) if e.action.startswith("retention.")]
    assert (changed.action, changed.decision, changed.actor) == (
        "retention.change", "allowed", "privacy-officer-tokyo"
    )
    assert json.loads(changed.details)["reason_given"] == "PCI scope review 2026"
    assert relocked.action == "retention.locks"
    assert json.loads(relocked.details)["extended"] == 10

    resp = put_policy(api, "privacy-officer-tokyo", 120, "retention minimised after review")
    assert resp.status_code == 200, resp.text
    assert [s.retention_until for s in segments(api)] == [s.end + 120 * DAY for s in before]
    assert locks(api) == expected_locks  # the store keeps its longer lock


@pytest.mark.parametrize(
    ("days", "reason", "status"),
    [
        (-1, "PCI scope review 2026", 422),
        (0, "PCI scope review 2026", 422),
        (89, "PCI scope review 2026", 422),  # below the policy's 90-day minimum
        (366, "PCI scope review 2026", 422),  # above its maximum
        ("ninety", "PCI scope review 2026", 422),
        (120, "short", 422),
    ],
)
def test_bad_policy_changes_change_nothing(api: Api, days: Any, reason: str, status: int) -> None:
    before = [s.retention_until for s in segments(api)]
    before_locks = locks(api)
    api.token("privacy-officer-tokyo")
    mark = api.head()
    body = problem(put_policy(api, "privacy-officer-tokyo", days, reason), status)
    if days == 89:
        assert "minimum" in body["detail"]
    assert [s.retention_until for s in segments(api)] == before
    assert locks(api) == before_locks
    with unit_of_work(api.ctx.engine) as session:
        policy = session.get(RetentionPolicy, "pci")
        assert policy is not None and policy.days == 90
    assert not [e for e in api.events(mark) if e.decision == "allowed"]


def test_unknown_policy_and_other_roles(api: Api) -> None:
    resp = api.client.put(
        "/retention-policies/nope", headers=api.as_("privacy-officer-tokyo"),
        json={"days": 120, "reason": "PCI scope review 2026"},
    )
    problem(resp, 404)
    assert problem(put_policy(api, "admin-tokyo", 120), 403)["rule"] == "role"
    policies = api.get("/retention-policies", "auditor-tokyo").json()
    assert [(p["id"], p["days"], p["min_days"], p["max_days"]) for p in policies] == [
        ("pci", 90, 90, 365)
    ]
    assert policies[0]["cameras"] == ["cam-a", "cam-b", "cam-c"]
    admin = api.get("/retention-policies", "admin-osaka").json()
    assert admin[0]["cameras"] == ["cam-b"]  # administrators see cameras of their sites


def test_retention_report_overdue_held_and_after_a_purge(api: Api) -> None:
    place(api)  # holds segments [0,2) [2,4) [4,6)
    report = api.get("/retention/report", "auditor-tokyo").json()
    cam_a = next(c for c in report["cameras"] if c["camera"] == "cam-a")
    assert cam_a["stored_segments"] == 5 and cam_a["overdue_segments"] == 0
    assert cam_a["held_segments"] == 3 and cam_a["held_past_deadline"] == 0
    assert datetime.fromisoformat(cam_a["oldest_start"]) == T0
    assert datetime.fromisoformat(cam_a["newest_end"]) == T0 + 13 * S
    (held_by,) = cam_a["holds"]
    assert (held_by["kind"], held_by["reason"], held_by["segments"]) == ("legal", REASON, 3)
    assert report["ok"] is True

    api.clock.set(T0 + 100 * DAY)  # every deadline (end + 90 days) has passed
    report = api.get("/retention/report", "privacy-officer-tokyo").json()
    cam_a = next(c for c in report["cameras"] if c["camera"] == "cam-a")
    assert (cam_a["overdue_segments"], cam_a["held_past_deadline"]) == (2, 3)
    assert report["ok"] is False and report["totals"]["overdue_segments"] == 2

    # What the purge does to the two unheld ones (its own tests prove the purge itself).
    with unit_of_work(api.ctx.engine) as session:
        for segment in session.exec(select(Segment).where(col(Segment.start) >= T0 + 9 * S)):
            segment.state = SegmentState.PURGED
            session.add(segment)
    report = api.get("/retention/report", "admin-tokyo").json()
    assert report["ok"] is True and report["totals"]["held_segments"] == 3
    assert [c["camera"] for c in report["cameras"]] == ["cam-a", "cam-c"]  # admin: own sites


def test_purge_runs_list_certificates(api: Api) -> None:
    with unit_of_work(api.ctx.engine) as session:
        session.add(PurgeRun(
            id="6f1c1d8e-0000-4000-8000-000000000001", started_at=NOW, finished_at=NOW + S,
            as_of=NOW, state="done", trigger="scheduler", purged=12, purged_bytes=3456,
            held_back=3, certificate_key="ledger/certificates/2026/11/29/run.json",
            certificate_sha256="ab" * 32,
        ))
    api.token("auditor-osaka")
    mark = api.head()
    (run,) = api.get("/purge-runs", "auditor-osaka").json()
    assert (run["purged"], run["held_back"], run["certificate_sha256"]) == (12, 3, "ab" * 32)
    assert run["certificate_key"] == "ledger/certificates/2026/11/29/run.json"
    (event,) = api.events(mark)
    assert (event.action, event.actor) == ("purge.runs", "auditor-osaka")
