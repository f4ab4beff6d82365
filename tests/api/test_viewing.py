"""Viewing through grants, end to end over HTTP: every footage response is preceded by exactly
one durable audit event (I3), clips are the native packets, segment media seeks by Range."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path

import pytest

from access_api.routes.footage import TimelineOut
from tests.api.conftest import PASSWORD, Api, S, problem
from tests.integration.test_clip import T0, Native, judge
from vault.catalog import TimelineSegment
from vault.timerange import TimeRange

OP = "operator-tokyo"


@dataclass(frozen=True)
class ServedClip:
    """What the HTTP response says about the clip, in the shape the clip judge reads."""

    start: datetime
    end: datetime
    content_type: str
    body: bytes

    def __iter__(self) -> Iterator[bytes]:
        return iter([self.body])


def _footage_events(api: Api, after: int) -> list[tuple[str, str, str]]:
    events = api.events(after)
    return [(e.action, e.decision, e.target) for e in events if e.action.startswith("footage.")]


def test_login_issues_a_short_lived_token_and_logs_it(api: Api) -> None:
    resp = api.login(OP)
    assert resp.status_code == 200
    body = resp.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 15 * 60
    me = api.client.get("/me", headers={"Authorization": f"Bearer {body['access_token']}"})
    assert me.json() == {"name": OP, "roles": ["operator"], "sites": ["tokyo-1"]}
    login = [e for e in api.events() if e.action == "auth.login"]
    assert [(e.actor, e.decision) for e in login] == [(OP, "allowed")]
    # Neither the password nor the token reaches the ledger (I9).
    for event in api.events():
        text = event.details + event.reason + event.target
        assert PASSWORD not in text and body["access_token"] not in text


def test_cameras_lists_only_the_callers_sites(api: Api) -> None:
    assert [c["id"] for c in api.get("/cameras", OP).json()] == ["cam-a", "cam-c"]
    assert [c["id"] for c in api.get("/cameras", "operator-osaka").json()] == ["cam-b"]


def test_recent_footage_is_granted_at_once_and_viewable(api: Api, tmp_path: Path) -> None:
    grant = api.grant(OP)
    mark = api.head()
    resp = api.get(
        "/cameras/cam-a/timeline", OP,
        params={"from": T0.isoformat(), "to": (T0 + 13 * S).isoformat(), "grant": grant},
    )
    assert resp.status_code == 200, resp.text
    timeline = resp.json()
    assert [s["id"] for s in timeline["segments"]] == api.segments
    assert len(timeline["gaps"]) == 0  # the recorder's gap rows are not in this fixture
    assert all(s["has_thumbnail"] for s in timeline["segments"])
    # The body is exactly the documented model (the route serialises light records directly).
    documented = TimelineOut.model_validate_json(resp.content)
    assert documented.model_dump(mode="json") == timeline
    assert documented.grant == grant and documented.camera == "cam-a"
    assert set(timeline["segments"][0]) == {f.name for f in fields(TimelineSegment)}
    assert timeline["segments"][0]["start"].endswith("Z")
    assert _footage_events(api, mark) == [("footage.timeline", "allowed", "camera:cam-a")]


def test_every_footage_response_follows_its_audit_event(api: Api) -> None:
    grant = api.grant(OP)
    segment = api.segments[1]
    for path, action in (
        (f"/segments/{segment}/thumbnail", "footage.thumbnail"),
        (f"/segments/{segment}/media", "footage.segment"),
    ):
        api.order.entries.clear()
        mark = api.head()
        resp = api.get(path, OP, params={"grant": grant})
        assert resp.status_code == 200, resp.text
        assert resp.headers["cache-control"] == "no-store"
        # Exactly one event, and it was durable before the first byte was read from the store.
        assert _footage_events(api, mark) == [(action, "allowed", f"segment:{segment}")]
        first_get = next(i for i, e in enumerate(api.order.entries) if e.startswith("get "))
        audits = [i for i, e in enumerate(api.order.entries) if e.startswith(f"audit {action}")]
        assert audits == [0] and first_get > 0, api.order.entries


def test_segment_media_supports_byte_ranges(api: Api, natives: list[Native]) -> None:
    grant = api.grant(OP)
    native = natives[2]
    segment = native.pending.segment_id
    whole = api.get(f"/segments/{segment}/media", OP, params={"grant": grant})
    assert whole.content == native.media
    assert whole.headers["accept-ranges"] == "bytes"
    part = api.get(
        f"/segments/{segment}/media", OP, params={"grant": grant}, headers={"Range": "bytes=8-99"}
    )
    assert part.status_code == 206
    assert part.content == native.media[8:100]
    assert part.headers["content-range"] == f"bytes 8-99/{len(native.media)}"
    tail = api.get(
        f"/segments/{segment}/media", OP, params={"grant": grant}, headers={"Range": "bytes=-10"}
    )
    assert tail.status_code == 206 and tail.content == native.media[-10:]
    beyond = api.get(
        f"/segments/{segment}/media", OP, params={"grant": grant},
        headers={"Range": f"bytes={len(native.media)}-"},
    )
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{len(native.media)}"
    assert beyond.content == b""


@pytest.mark.parametrize(
    ("start", "end"),
    [(T0 + 2.35 * S, T0 + 3.5 * S), (T0 + 3.5 * S, T0 + 10.5 * S), (T0, T0 + 13 * S)],
)
def test_clip_is_native_packets_from_the_keyframe_before_start(
    api: Api, natives: list[Native], tmp_path: Path, start: datetime, end: datetime
) -> None:
    grant = api.grant(OP)
    api.order.entries.clear()
    mark = api.head()
    resp = api.get(
        "/cameras/cam-a/clip", OP,
        params={"from": start.isoformat(), "to": end.isoformat(), "grant": grant},
    )
    assert resp.status_code == 200, resp.text
    assert _footage_events(api, mark) == [("footage.clip", "allowed", "camera:cam-a")]
    assert api.order.entries[0].startswith("audit footage.clip allowed")
    served = ServedClip(
        start=datetime.fromisoformat(resp.headers["x-clip-start"]),
        end=datetime.fromisoformat(resp.headers["x-clip-end"]),
        content_type=resp.headers["content-type"],
        body=resp.content,
    )
    judge(served, natives, TimeRange(start, end), tmp_path)  # type: ignore[arg-type]
    assert served.start <= start


def test_clip_without_footage_is_a_clear_404(api: Api) -> None:
    grant = api.grant(OP)
    resp = api.get(
        "/cameras/cam-a/clip", OP,
        params={
            "from": (T0 + 6.5 * S).isoformat(), "to": (T0 + 8 * S).isoformat(), "grant": grant,
        },
    )
    assert "no footage" in problem(resp, 404)["detail"]


def test_naive_datetimes_are_refused(api: Api) -> None:
    grant = api.grant(OP)
    resp = api.get(
        "/cameras/cam-a/timeline", OP,
        params={"from": "2026-11-29T01:00:00", "to": (T0 + S).isoformat(), "grant": grant},
    )
    body = problem(resp, 422)
    assert body["errors"][0]["field"] == "query.from"
    resp = api.request_access(OP, start=T0.replace(tzinfo=None))
    assert problem(resp, 422)["errors"][0]["field"] == "start"
