"""Attacks on the gate are refused, answered as problem details, and logged."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from datetime import timedelta

import jwt
import pytest

from tests.api.conftest import Api, S, problem
from tests.integration.test_clip import T0

OP = "operator-tokyo"


def _timeline(api: Api, user: str, grant: str, camera: str = "cam-a", start=T0, end=None):  # type: ignore[no-untyped-def]
    end = end or T0 + 5 * S
    return api.get(
        f"/cameras/{camera}/timeline", user,
        params={"from": start.isoformat(), "to": end.isoformat(), "grant": grant},
    )


def _refusals(api: Api, after: int) -> list[tuple[str, str, str]]:
    return [
        (e.actor, e.action, e.reason.split(":")[0])
        for e in api.events(after)
        if e.decision == "refused"
    ]


def test_another_users_grant(api: Api) -> None:
    grant = api.grant(OP)
    mark = api.head()
    body = problem(_timeline(api, "supervisor-tokyo", grant), 403)
    assert body["rule"] == "grant-holder"
    segment = api.segments[0]
    resp = api.get(f"/segments/{segment}/media", "supervisor-tokyo", params={"grant": grant})
    assert problem(resp, 403)["rule"] == "grant-holder"
    assert _refusals(api, mark) == [
        ("supervisor-tokyo", "footage.timeline", "grant-holder"),
        ("supervisor-tokyo", "footage.segment", "grant-holder"),
    ]
    assert not [e for e in api.order.entries if e.startswith("get segments/")]


def test_range_or_camera_outside_the_grant(api: Api) -> None:
    grant = api.grant(OP, start=T0, end=T0 + 5 * S)
    mark = api.head()
    assert problem(_timeline(api, OP, grant, end=T0 + 10 * S), 403)["rule"] == "grant-range"
    assert problem(_timeline(api, OP, grant, start=T0 - S), 403)["rule"] == "grant-range"
    # A segment entirely after the grant's range (T0+9..11 s).
    late = api.segments[3]
    resp = api.get(f"/segments/{late}/thumbnail", OP, params={"grant": grant})
    assert problem(resp, 403)["rule"] == "grant-range"
    assert problem(_timeline(api, OP, grant, camera="cam-c"), 403)["rule"] == "grant-camera"
    # A camera of another site does not exist for this caller.
    assert problem(_timeline(api, OP, grant, camera="cam-b"), 404)["detail"] == "no camera 'cam-b'"
    assert [r[2] for r in _refusals(api, mark)] == [
        "grant-range", "grant-range", "grant-range", "grant-camera", "not-found",
    ]


def test_expired_and_revoked_grants(api: Api) -> None:
    grant = api.grant(OP)
    other = api.grant(OP)
    revoke = api.post(f"/grants/{other}/revoke", OP, {"reason": "done with it"})
    assert revoke.status_code == 200 and revoke.json()["revoked_at"]
    assert problem(_timeline(api, OP, other), 403)["rule"] == "grant-revoked"
    api.clock.advance(timedelta(minutes=61))
    api.tokens.clear()  # the 15-minute token expired too
    assert problem(_timeline(api, OP, grant), 403)["rule"] == "grant-expired"
    assert api.get("/grants", OP).json() == []


def test_a_disabled_users_token_stops_at_once(api: Api) -> None:
    token = api.token(OP)
    assert api.get("/me", OP).status_code == 200
    assert api.post(f"/users/{OP}/disable", "admin-tokyo").status_code == 200
    mark = api.head()
    resp = api.client.get("/me", headers={"Authorization": f"Bearer {token}"})
    assert problem(resp, 401)["detail"] == "account disabled"
    assert resp.headers["www-authenticate"].startswith("Bearer")
    assert _refusals(api, mark) == [(OP, "auth.token", "account disabled")]
    assert api.login(OP).status_code == 401


def test_a_token_used_before_expires_all_the_same(api: Api) -> None:
    # The signature check is done once per token and remembered; the lifetime is not.
    token = api.token(OP)
    auth = {"Authorization": f"Bearer {token}"}
    assert api.client.get("/me", headers=auth).status_code == 200
    api.clock.advance(timedelta(minutes=15, seconds=29))  # inside the 30 s leeway
    assert api.client.get("/me", headers=auth).status_code == 200
    api.clock.advance(timedelta(seconds=2))
    mark = api.head()
    assert problem(api.client.get("/me", headers=auth), 401)["detail"] == "token expired"
    assert _refusals(api, mark) == [("anonymous", "auth.token", "token expired")]


def _b64(data: dict[str, object]) -> str:
    return base64.urlsafe_b64encode(json.dumps(data).encode()).rstrip(b"=").decode()


def _claims(api: Api, **overrides: object) -> dict[str, object]:
    now = int(api.clock.now().timestamp())
    claims: dict[str, object] = {
        "iss": "cctv-vault", "aud": "cctv-vault-api", "sub": OP, "iat": now, "exp": now + 600,
    }
    claims.update(overrides)
    return claims


@pytest.mark.parametrize(
    "forge",
    [
        "alg-none",
        "hs256-with-public-key",
        "wrong-issuer",
        "wrong-audience",
        "expired",
        "tampered-payload",
        "tampered-signature",
        "other-key",
        "missing-exp",
        "garbage",
    ],
)
def test_forged_tokens_are_refused_and_logged(api: Api, forge: str) -> None:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    services = api.client.app.state.services  # type: ignore[attr-defined]
    key = services.tokens.key
    good = api.token(OP)
    if forge == "alg-none":
        token = f"{_b64({'alg': 'none', 'typ': 'JWT'})}.{_b64(_claims(api))}."
    elif forge == "hs256-with-public-key":
        # The classic confusion: an HMAC "signed" with the public key as the secret.
        signing_input = f"{_b64({'alg': 'HS256', 'typ': 'JWT'})}.{_b64(_claims(api))}"
        mac = hmac.new(key.public_pem(), signing_input.encode(), hashlib.sha256).digest()
        token = f"{signing_input}.{base64.urlsafe_b64encode(mac).rstrip(b'=').decode()}"
    elif forge == "wrong-issuer":
        token = jwt.encode(_claims(api, iss="evil"), key.private, algorithm="EdDSA")
    elif forge == "wrong-audience":
        token = jwt.encode(_claims(api, aud="other-api"), key.private, algorithm="EdDSA")
    elif forge == "expired":
        api.clock.advance(timedelta(minutes=16))
        token = good
    elif forge == "tampered-payload":
        head, _payload, sig = good.split(".")
        token = f"{head}.{_b64(_claims(api, sub='admin-tokyo'))}.{sig}"
    elif forge == "tampered-signature":
        head, payload, sig = good.split(".")
        token = f"{head}.{payload}.{sig[:-4]}{'AAAA' if sig[-4:] != 'AAAA' else 'BBBB'}"
    elif forge == "other-key":
        token = jwt.encode(_claims(api), Ed25519PrivateKey.generate(), algorithm="EdDSA")
    elif forge == "missing-exp":
        claims = _claims(api)
        del claims["exp"]
        token = jwt.encode(claims, key.private, algorithm="EdDSA")
    else:
        token = "not.a.token"
    mark = api.head()
    resp = api.client.get("/cameras", headers={"Authorization": f"Bearer {token}"})
    body = problem(resp, 401)
    assert token not in resp.text and token not in json.dumps(body)
    refusals = [e for e in api.events(mark) if e.decision == "refused"]
    assert [(e.action, e.decision) for e in refusals] == [("auth.token", "refused")]
    assert token not in refusals[0].reason + refusals[0].details  # I9


def test_missing_or_non_bearer_credentials(api: Api) -> None:
    assert problem(api.client.get("/cameras"), 401)["detail"] == "a bearer token is required"
    resp = api.client.get("/cameras", headers={"Authorization": "Basic b3A6cHc="})
    problem(resp, 401)


def test_nobody_approves_their_own_request(api: Api) -> None:
    request_id = api.pending_request("supervisor-tokyo")
    mark = api.head()
    resp = api.post(f"/access-requests/{request_id}/approve", "supervisor-tokyo", {"note": "me"})
    assert problem(resp, 403)["rule"] == "four-eyes"
    assert _refusals(api, mark) == [("supervisor-tokyo", "access.approve", "four-eyes")]
    # Another supervisor of the site may; twice is a conflict.
    ok = api.post(f"/access-requests/{request_id}/approve", "supervisor-osaka", {})
    assert ok.status_code == 404  # not their site: the request does not exist for them
    request_id = api.pending_request(OP)
    first = api.post(f"/access-requests/{request_id}/approve", "supervisor-tokyo", {})
    assert first.status_code == 200 and first.json()["grant"]["holder"] == OP
    again = api.post(f"/access-requests/{request_id}/approve", "supervisor-tokyo", {})
    assert problem(again, 403)["rule"] == "not-pending"


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/segments/..%2F..%2Fetc%2Fpasswd/media", 404),
        ("/segments/../../etc/passwd", 404),
        ("/segments/not-a-uuid/media", 422),
        ("/segments/00000000-0000-0000-0000-000000000000%00/media", 422),
        ("/cameras/cam-a%00/timeline", 422),
        ("/cameras/CAM-A/timeline", 422),
        ("/cameras/..%2Fcam-a/timeline", 404),
        ("/cameras/cam-a;drop/timeline", 422),
        ("/access-requests/'%20OR%201=1--/approve", 422),
    ],
)
def test_path_tricks_in_ids(api: Api, path: str, status: int) -> None:
    grant = api.grant(OP)
    sep = "&" if "?" in path else "?"
    query = f"from={T0.isoformat()}&to={(T0 + S).isoformat()}&grant={grant}".replace("+", "%2B")
    approve = path.endswith("/approve")
    resp = api.client.request(
        "POST" if approve else "GET",
        f"{path}{sep}{query}",
        headers=api.as_("supervisor-tokyo" if approve else OP),
        json={} if approve else None,
    )
    problem(resp, status)
    assert not [e for e in api.order.entries if e.startswith("get ")]


def test_grant_ids_are_checked_too(api: Api) -> None:
    resp = _timeline(api, OP, "../../etc")
    assert problem(resp, 422)["errors"][0]["field"] == "query.grant"
    resp = _timeline(api, OP, "00000000-0000-0000-0000-000000000000")
    assert problem(resp, 403)["rule"] == "no-grant"
