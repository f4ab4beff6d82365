"""Deny by default (I4): every route declares one permission, and the authorization matrix —
every route x every role x own/other site x each purpose — answers what the policy says.

The expected statuses below are written out from DESIGN §1/§7 by hand, not computed with the
policy code, so that a change in either shows up here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pytest
from fastapi.routing import APIRoute, iter_route_contexts
from starlette.requests import Request

from access_api.deps import bearer_token, declared_permissions
from access_api.policy import Action
from tests.api.conftest import Api, S
from tests.integration.test_clip import T0

ROLES = ("operator", "supervisor", "legal", "privacy-officer", "auditor", "admin")
SITES = ("tokyo", "osaka")  # cam-a and its footage are in tokyo
PURPOSES = (
    "security_review", "incident_investigation", "legal_disclosure", "data_subject_request",
    "hr_investigation",
)
VIEWERS = {"operator", "supervisor", "legal", "privacy-officer"}
HOLDER = "operator-tokyo"
HOLD_PLACER = "legal-tokyo"
RETENTION_READERS = ("privacy-officer", "auditor", "admin")
FROM, TO = (T0 + 1 * S).isoformat(), (T0 + 12 * S).isoformat()


@dataclass
class Fixtures:
    grant: str
    segment: str


@dataclass(frozen=True)
class Route:
    method: str
    template: str
    call: Callable[[Api, str | None, Fixtures, str], int]
    expect: Callable[[str, str, str], int]
    public: bool = False


def _get(path: str, **params: str) -> Callable[[Api, str | None, Fixtures, str], int]:
    def call(api: Api, user: str | None, fx: Fixtures, _purpose: str) -> int:
        filled = path.format(grant=fx.grant, segment=fx.segment)
        extra = {k: v.format(grant=fx.grant) for k, v in params.items()}
        return api.get(filled, user, params=extra).status_code

    return call


def _access_request(api: Api, user: str | None, _fx: Fixtures, purpose: str) -> int:
    return api.request_access(  # type: ignore[arg-type]
        user, start=T0, end=T0 + 13 * S, purpose=purpose
    ).status_code


def _decide(verb: str) -> Callable[[Api, str | None, Fixtures, str], int]:
    def call(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
        request_id = api.pending_request(HOLDER)
        return api.post(f"/access-requests/{request_id}/{verb}", user, {"note": "ok"}).status_code

    return call


def _revoke(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
    grant = api.grant(HOLDER)
    return api.post(f"/grants/{grant}/revoke", user, {"reason": "incident closed"}).status_code


def _user_admin(verb: str) -> Callable[[Api, str | None, Fixtures, str], int]:
    def call(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
        status = api.post(f"/users/auditor-osaka/{verb}", user).status_code
        api.client.post("/users/auditor-osaka/enable", headers=api.as_("admin-tokyo"))
        return status

    return call


def _login(api: Api, _user: str | None, _fx: Fixtures, _purpose: str) -> int:
    return api.login("auditor-tokyo").status_code


def _place_hold(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
    # Each role asks for the kind it could place: supervisors security holds, others legal.
    security = user is not None and user.startswith("supervisor-")
    return api.post("/holds", user, {
        "kind": "security" if security else "legal", "cameras": ["cam-a"],
        "start": T0.isoformat(), "end": (T0 + 13 * S).isoformat(),
        "reason": "litigation over the gate 2 incident", "warrant_ref": "W-1",
        **({"expires_at": (T0 + 30 * 24 * 3600 * S).isoformat()} if security else {}),
    }).status_code


def _release_hold(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
    placed = api.post("/holds", HOLD_PLACER, {
        "kind": "legal", "cameras": ["cam-a"], "start": T0.isoformat(),
        "end": (T0 + 13 * S).isoformat(), "reason": "litigation over the gate 2 incident",
    })
    assert placed.status_code == 201, placed.text
    hold = placed.json()["id"]
    return api.post(f"/holds/{hold}/release", user, {"reason": "case settled"}).status_code


def _put_policy(api: Api, user: str | None, _fx: Fixtures, _purpose: str) -> int:
    return api.client.put(
        "/retention-policies/pci", headers=api.as_(user),
        json={"days": 120, "reason": "PCI scope review 2026"},
    ).status_code


def _expect_place_hold(role: str, site: str, _purpose: str) -> int:
    if role not in ("legal", "supervisor"):
        return 403
    return 201 if site == "tokyo" else 404  # cam-a is outside osaka's sites


def _expect_release_hold(role: str, site: str, _purpose: str) -> int:
    if role == "privacy-officer":
        return 200  # releases any hold
    if role in ("operator", "auditor", "admin"):
        return 403  # no role to release
    if site != "tokyo":
        return 404  # the hold's camera is outside the caller's sites
    return 403  # legal-tokyo placed it (four eyes); supervisors release security holds only


def only(*roles: str) -> Callable[[str, str, str], int]:
    return lambda role, _site, _purpose: 200 if role in roles else 403


def _expect_request(role: str, site: str, purpose: str) -> int:
    if role in ("admin", "auditor"):
        return 403  # separation of duties, whatever the camera
    if site != "tokyo":
        return 404  # the camera is outside the caller's sites: it does not exist for them
    if purpose in ("security_review", "incident_investigation"):
        return 201 if role in ("operator", "supervisor") else 403  # purpose belongs to roles
    return 403  # needs a warrant / disclosure request, or incompatible


def _expect_approve(role: str, site: str, _purpose: str) -> int:
    if role == "supervisor":
        return 200 if site == "tokyo" else 404
    if role == "privacy-officer":
        return 403  # sees every request; approves disclosures, not security reviews
    return 403


def _expect_revoke(role: str, site: str, _purpose: str) -> int:
    if role == "auditor":
        return 403
    if role in ("privacy-officer", "admin"):
        return 200
    if role in ("operator", "supervisor") and site == "tokyo":
        return 200  # the holder itself, or the supervisor of the site
    return 404  # not theirs to see


def _expect_footage(ok: int) -> Callable[[str, str, str], int]:
    def expect(role: str, site: str, _purpose: str) -> int:
        if role in ("admin", "auditor"):
            return 403
        if site != "tokyo":
            return 404
        return ok if f"{role}-{site}" == HOLDER else 403  # someone else's grant

    return expect


ROUTES = [
    Route("GET", "/healthz", _get("/healthz"), lambda *_: 200, public=True),
    Route("POST", "/auth/token", _login, lambda *_: 200, public=True),
    Route("GET", "/me", _get("/me"), lambda *_: 200),
    Route("GET", "/cameras", _get("/cameras"), only(*VIEWERS, "admin")),
    Route("POST", "/access-requests", _access_request, _expect_request),
    Route("GET", "/access-requests", _get("/access-requests"), only(*VIEWERS)),
    Route("POST", "/access-requests/{request_id}/approve", _decide("approve"), _expect_approve),
    Route("POST", "/access-requests/{request_id}/reject", _decide("reject"), _expect_approve),
    Route("GET", "/grants", _get("/grants"), only(*VIEWERS)),
    Route("POST", "/grants/{grant_id}/revoke", _revoke, _expect_revoke),
    Route(
        "GET", "/cameras/{camera_id}/timeline",
        _get("/cameras/cam-a/timeline", **{"from": FROM, "to": TO, "grant": "{grant}"}),
        _expect_footage(200),
    ),
    Route(
        "GET", "/segments/{segment_id}/thumbnail",
        _get("/segments/{segment}/thumbnail", grant="{grant}"), _expect_footage(200),
    ),
    Route(
        "GET", "/segments/{segment_id}/media",
        _get("/segments/{segment}/media", grant="{grant}"), _expect_footage(200),
    ),
    Route(
        "GET", "/cameras/{camera_id}/clip",
        _get("/cameras/cam-a/clip", **{"from": FROM, "to": TO, "grant": "{grant}"}),
        _expect_footage(200),
    ),
    Route("GET", "/audit", _get("/audit", limit="5"), only("auditor", "privacy-officer")),
    Route("GET", "/users", _get("/users"), only("admin")),
    Route("POST", "/users/{name}/disable", _user_admin("disable"), only("admin")),
    Route("POST", "/users/{name}/enable", _user_admin("enable"), only("admin")),
    Route("POST", "/users/{name}/unlock", _user_admin("unlock"), only("admin")),
    Route("POST", "/holds", _place_hold, _expect_place_hold),
    Route(
        "GET", "/holds", _get("/holds"),
        only("supervisor", "legal", "privacy-officer", "auditor"),
    ),
    Route("POST", "/holds/{hold_id}/release", _release_hold, _expect_release_hold),
    Route("GET", "/retention-policies", _get("/retention-policies"), only(*RETENTION_READERS)),
    Route("PUT", "/retention-policies/{policy_id}", _put_policy, only("privacy-officer")),
    Route("GET", "/retention/report", _get("/retention/report"), only(*RETENTION_READERS)),
    Route("GET", "/purge-runs", _get("/purge-runs"), only(*RETENTION_READERS)),
]


def test_every_route_declares_exactly_one_permission(api: Api) -> None:
    undeclared, seen = [], set()
    for context in iter_route_contexts(api.client.app.routes):  # type: ignore[attr-defined]
        route = context.original_route
        if not isinstance(route, APIRoute):
            # Only FastAPI's own documentation routes live outside APIRoute.
            assert context.path in {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
            continue
        permissions = declared_permissions(route.dependant)
        if len(permissions) != 1:
            undeclared.append((route.path, permissions))
        for method in route.methods:
            seen.add((method, route.path))
            public = next(
                r.public for r in ROUTES if (r.method, r.template) == (method, route.path)
            )
            assert (permissions == [Action.PUBLIC]) is public, route.path
    assert undeclared == []
    # The matrix below covers every route there is, and nothing else.
    assert seen == {(r.method, r.template) for r in ROUTES}


def test_authorization_matrix(api: Api) -> None:
    fx = Fixtures(grant=api.grant(HOLDER), segment=api.segments[0])
    mismatches = []
    for route in ROUTES:
        purposes = PURPOSES if route.template == "/access-requests" else ("security_review",)
        for purpose in purposes:
            if not route.public:
                status = route.call(api, None, fx, purpose)
                if status != 401:
                    mismatches.append((route.method, route.template, "anonymous", purpose, status))
            for role in ROLES:
                for site in SITES:
                    user = f"{role}-{site}"
                    want = route.expect(role, site, purpose)
                    got = route.call(api, user, fx, purpose)
                    if got != want:
                        mismatches.append(
                            (route.method, route.template, user, purpose, f"{got} != {want}")
                        )
    assert mismatches == []


def test_every_refusal_is_logged_with_its_rule(api: Api) -> None:
    mark = api.head()
    assert api.get("/audit", "operator-tokyo").status_code == 403
    assert api.request_access("admin-tokyo").status_code == 403
    assert api.request_access("operator-tokyo", purpose="hr_investigation").status_code == 403
    refused = [
        (e.actor, e.action, e.reason.split(":")[0])
        for e in api.events(mark) if e.decision == "refused"
    ]
    assert refused == [
        ("operator-tokyo", "audit.read", "role"),
        ("admin-tokyo", "access.request", "separation-of-duties"),
        ("operator-tokyo", "access.request", "purpose-incompatible"),
    ]


def test_openapi_documents_the_bearer_scheme_exactly_where_a_permission_needs_it(
    api: Api,
) -> None:
    schema = api.client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["bearer"]["scheme"] == "bearer"
    for route in ROUTES:
        operation = schema["paths"][route.template][route.method.lower()]
        if route.public:
            assert "security" not in operation, route.template
        else:
            assert operation["security"] == [{"bearer": []}], route.template


@pytest.mark.parametrize(("header", "token"), [
    ("Bearer abc.def", "abc.def"),
    ("bearer abc.def", "abc.def"),
    ("BEARER   abc.def  ", "abc.def"),
    ("Bearer", None),
    ("Bearer ", None),
    ("Basic dXNlcjpwYXNz", None),
    ("abc.def", None),
    ("", None),
])
def test_bearer_token_is_read_from_the_authorization_header(header: str, token: str | None) -> None:
    scope = {"type": "http", "headers": [(b"authorization", header.encode())] if header else []}
    assert bearer_token(Request(scope)) == token
