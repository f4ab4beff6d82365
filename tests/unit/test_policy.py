"""The pure access policy, table-tested: roles x sites x purposes x grants -> decision."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from access_api.policy import (
    ROLE_PERMISSIONS,
    AccessPolicy,
    Action,
    ApproveFacts,
    FootageFacts,
    GrantFacts,
    HoldPlaceFacts,
    HoldReleaseFacts,
    Outcome,
    PrincipalView,
    RequestFacts,
    RevokeFacts,
    Role,
    ScopeFacts,
    decide,
    purpose_rule,
)
from vault.timerange import TimeRange

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
POLICY = AccessPolicy(
    auto_grant_window=timedelta(days=7),
    auto_grant_max_span=timedelta(hours=2),
    grant_ttl=timedelta(minutes=60),
)
RECENT = TimeRange(NOW - timedelta(hours=2), NOW - timedelta(hours=1))


def who(*roles: Role, sites: tuple[str, ...] = ("tokyo-1",), name: str = "alice") -> PrincipalView:
    return PrincipalView(name=name, roles=frozenset(roles), sites=frozenset(sites))


def request(
    purpose: str = "security_review",
    window: TimeRange = RECENT,
    sites: dict[str, str] | None = None,
    warrants: tuple[str, ...] = (),
) -> RequestFacts:
    return RequestFacts(
        camera_sites=sites if sites is not None else {"cam-a": "tokyo-1"},
        window=window,
        purpose=purpose,
        covering_warrants=warrants,
    )


@pytest.mark.parametrize(
    ("role", "action", "allowed"),
    [(role, action, role in ROLE_PERMISSIONS[action]) for role in Role for action in Action],
)
def test_role_level_permission_follows_the_table(role: Role, action: Action, allowed: bool) -> None:
    decision = decide(who(role), action, ScopeFacts(), NOW, POLICY)
    assert decision.allowed is allowed


@pytest.mark.parametrize("role", [Role.ADMIN, Role.AUDITOR])
@pytest.mark.parametrize("action", [Action.FOOTAGE_VIEW, Action.ACCESS_REQUEST])
def test_admins_and_auditors_never_get_footage(role: Role, action: Action) -> None:
    decision = decide(who(role, sites=("*",)), action, ScopeFacts(), NOW, POLICY)
    assert decision.outcome is Outcome.REFUSE
    assert decision.rule == "separation-of-duties"


@pytest.mark.parametrize(
    ("purpose", "rule", "allowed"),
    [
        ("security_review", "purpose-compatible", True),
        ("incident_investigation", "purpose-compatible", True),
        ("legal_disclosure", "purpose-needs-warrant", True),
        ("data_subject_request", "purpose-needs-disclosure-request", True),
        ("hr_investigation", "purpose-incompatible", False),
        ("marketing", "purpose-incompatible", False),
        ("Security_Review", "purpose-incompatible", False),
        ("", "purpose-incompatible", False),
    ],
)
def test_purpose_rule(purpose: str, rule: str, allowed: bool) -> None:
    decision = purpose_rule(purpose)
    assert (decision.rule, decision.allowed) == (rule, allowed)


# (roles, sites, purpose, window, camera site, warrants) -> (outcome, rule)
REQUEST_TABLE = [
    # Operators: recent, short, own site -> granted at once.
    ((Role.OPERATOR,), ("tokyo-1",), "security_review", RECENT, "tokyo-1", (), "allowed",
     "auto-grant"),
    ((Role.OPERATOR,), ("tokyo-1",), "incident_investigation", RECENT, "tokyo-1", (), "allowed",
     "auto-grant"),
    # Older than the window, or longer than the span -> a supervisor must approve.
    ((Role.OPERATOR,), ("tokyo-1",), "security_review",
     TimeRange(NOW - timedelta(days=8), NOW - timedelta(days=8) + timedelta(minutes=5)),
     "tokyo-1", (), "pending", "needs-approval"),
    ((Role.OPERATOR,), ("tokyo-1",), "security_review",
     TimeRange(NOW - timedelta(hours=5), NOW - timedelta(minutes=30)), "tokyo-1", (), "pending",
     "needs-approval"),
    # Exactly at the bounds is still automatic.
    ((Role.OPERATOR,), ("tokyo-1",), "security_review",
     TimeRange(NOW - timedelta(days=7), NOW - timedelta(days=7) + timedelta(hours=2)),
     "tokyo-1", (), "allowed", "auto-grant"),
    # Another site: refused (the route answers 404 before, this is the backstop).
    ((Role.OPERATOR,), ("tokyo-1",), "security_review", RECENT, "osaka-1", (), "refused",
     "site-scope"),
    ((Role.SUPERVISOR,), ("tokyo-1",), "security_review", RECENT, "tokyo-1", (), "allowed",
     "auto-grant"),
    # Incompatible purposes, whoever asks.
    ((Role.OPERATOR,), ("tokyo-1",), "hr_investigation", RECENT, "tokyo-1", (), "refused",
     "purpose-incompatible"),
    ((Role.LEGAL,), ("*",), "marketing", RECENT, "tokyo-1", (), "refused",
     "purpose-incompatible"),
    # Purposes belong to roles.
    ((Role.OPERATOR,), ("tokyo-1",), "legal_disclosure", RECENT, "tokyo-1", (), "refused",
     "purpose-role"),
    ((Role.LEGAL,), ("*",), "security_review", RECENT, "tokyo-1", (), "refused", "purpose-role"),
    # Legal disclosure needs a warrant; with one it waits for the privacy officer.
    ((Role.LEGAL,), ("*",), "legal_disclosure", RECENT, "tokyo-1", (), "refused",
     "purpose-needs-warrant"),
    ((Role.LEGAL,), ("*",), "legal_disclosure", RECENT, "tokyo-1", ("warrant-1",), "pending",
     "needs-approval"),
    ((Role.PRIVACY_OFFICER,), ("*",), "data_subject_request", RECENT, "tokyo-1", (), "refused",
     "purpose-needs-disclosure-request"),
    ((Role.ADMIN,), ("*",), "security_review", RECENT, "tokyo-1", (), "refused",
     "separation-of-duties"),
    ((Role.AUDITOR,), ("*",), "security_review", RECENT, "tokyo-1", (), "refused",
     "separation-of-duties"),
]


@pytest.mark.parametrize(
    ("roles", "sites", "purpose", "window", "camera_site", "warrants", "outcome", "rule"),
    REQUEST_TABLE,
)
def test_access_request_table(
    roles: tuple[Role, ...],
    sites: tuple[str, ...],
    purpose: str,
    window: TimeRange,
    camera_site: str,
    warrants: tuple[str, ...],
    outcome: str,
    rule: str,
) -> None:
    facts = request(purpose, window, {"cam-a": camera_site}, warrants)
    decision = decide(who(*roles, sites=sites), Action.ACCESS_REQUEST, facts, NOW, POLICY)
    assert (decision.outcome.value, decision.rule) == (outcome, rule)


def test_request_without_cameras_is_refused() -> None:
    decision = decide(who(Role.OPERATOR), Action.ACCESS_REQUEST, request(sites={}), NOW, POLICY)
    assert decision.rule == "no-cameras"


APPROVE_TABLE = [
    # approver roles, approver sites, approver name, requester, purpose, request sites, state
    ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "alice", "security_review", ("tokyo-1",),
     "pending", "allowed", "approved"),
    ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "sam", "security_review", ("tokyo-1",), "pending",
     "refused", "four-eyes"),
    ((Role.SUPERVISOR,), ("osaka-1",), "sam", "alice", "security_review", ("tokyo-1",),
     "pending", "refused", "site-scope"),
    ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "alice", "security_review", ("tokyo-1",),
     "granted", "refused", "not-pending"),
    ((Role.SUPERVISOR,), ("*",), "sam", "lee", "legal_disclosure", ("tokyo-1",), "pending",
     "refused", "approver-role"),
    ((Role.PRIVACY_OFFICER,), ("*",), "pat", "lee", "legal_disclosure", ("tokyo-1",), "pending",
     "allowed", "approved"),
    ((Role.PRIVACY_OFFICER,), ("*",), "pat", "pat", "data_subject_request", ("tokyo-1",),
     "pending", "refused", "four-eyes"),
    ((Role.PRIVACY_OFFICER,), ("*",), "pat", "alice", "security_review", ("tokyo-1",), "pending",
     "refused", "approver-role"),
    ((Role.OPERATOR,), ("tokyo-1",), "olga", "alice", "security_review", ("tokyo-1",), "pending",
     "refused", "role"),
]


@pytest.mark.parametrize(
    ("roles", "sites", "name", "requester", "purpose", "req_sites", "state", "outcome", "rule"),
    APPROVE_TABLE,
)
def test_approval_table(
    roles: tuple[Role, ...],
    sites: tuple[str, ...],
    name: str,
    requester: str,
    purpose: str,
    req_sites: tuple[str, ...],
    state: str,
    outcome: str,
    rule: str,
) -> None:
    facts = ApproveFacts(requester=requester, purpose=purpose, sites=frozenset(req_sites),
                         state=state)
    decision = decide(who(*roles, sites=sites, name=name), Action.ACCESS_APPROVE, facts, NOW,
                      POLICY)
    assert (decision.outcome.value, decision.rule) == (outcome, rule)


def grant(**overrides: object) -> GrantFacts:
    values: dict[str, object] = {
        "id": "g1",
        "holder": "alice",
        "cameras": frozenset({"cam-a"}),
        "window": RECENT,
        "purpose": "security_review",
        "expires_at": NOW + timedelta(minutes=30),
        "revoked": False,
    }
    values.update(overrides)
    return GrantFacts(**values)  # type: ignore[arg-type]


INSIDE = TimeRange(RECENT.start + timedelta(minutes=5), RECENT.end - timedelta(minutes=5))
FOOTAGE_TABLE = [
    (grant(), "cam-a", "tokyo-1", INSIDE, False, "allowed", "grant"),
    (grant(), "cam-a", "tokyo-1", RECENT, False, "allowed", "grant"),
    (None, "cam-a", "tokyo-1", INSIDE, False, "refused", "no-grant"),
    (grant(holder="bob"), "cam-a", "tokyo-1", INSIDE, False, "refused", "grant-holder"),
    (grant(revoked=True), "cam-a", "tokyo-1", INSIDE, False, "refused", "grant-revoked"),
    (grant(expires_at=NOW), "cam-a", "tokyo-1", INSIDE, False, "refused", "grant-expired"),
    (grant(), "cam-b", "tokyo-1", INSIDE, False, "refused", "grant-camera"),
    (grant(), "cam-a", "tokyo-1",
     TimeRange(RECENT.start - timedelta(seconds=1), RECENT.end), False, "refused", "grant-range"),
    (grant(), "cam-a", "tokyo-1",
     TimeRange(RECENT.start, RECENT.end + timedelta(seconds=1)), False, "refused", "grant-range"),
    # Whole segments only need to overlap the grant.
    (grant(), "cam-a", "tokyo-1",
     TimeRange(RECENT.start - timedelta(seconds=30), RECENT.start + timedelta(seconds=30)), True,
     "allowed", "grant"),
    (grant(), "cam-a", "tokyo-1",
     TimeRange(RECENT.end, RECENT.end + timedelta(seconds=60)), True, "refused", "grant-range"),
    # The holder lost the site since: security viewing stops.
    (grant(), "cam-a", "osaka-1", INSIDE, False, "refused", "site-scope"),
]


@pytest.mark.parametrize(
    ("grant_facts", "camera", "camera_site", "window", "whole", "outcome", "rule"), FOOTAGE_TABLE
)
def test_footage_table(
    grant_facts: GrantFacts | None,
    camera: str,
    camera_site: str,
    window: TimeRange,
    whole: bool,
    outcome: str,
    rule: str,
) -> None:
    facts = FootageFacts(camera, camera_site, window, grant_facts, whole)
    decision = decide(who(Role.OPERATOR), Action.FOOTAGE_VIEW, facts, NOW, POLICY)
    assert (decision.outcome.value, decision.rule) == (outcome, rule)


@pytest.mark.parametrize(
    ("roles", "sites", "name", "holder", "revoked", "rule"),
    [
        ((Role.OPERATOR,), ("tokyo-1",), "alice", "alice", False, "own-grant"),
        ((Role.OPERATOR,), ("tokyo-1",), "olga", "alice", False, "revoke-role"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "alice", False, "revoke-supervisor"),
        ((Role.SUPERVISOR,), ("osaka-1",), "sam", "alice", False, "revoke-role"),
        ((Role.PRIVACY_OFFICER,), ("*",), "pat", "alice", False, "revoke-role"),
        ((Role.ADMIN,), ("*",), "root", "alice", False, "revoke-role"),
        ((Role.OPERATOR,), ("tokyo-1",), "alice", "alice", True, "grant-revoked"),
    ],
)
def test_revoke_table(
    roles: tuple[Role, ...], sites: tuple[str, ...], name: str, holder: str, revoked: bool,
    rule: str,
) -> None:
    facts = RevokeFacts(grant(holder=holder, revoked=revoked), frozenset({"tokyo-1"}))
    decision = decide(who(*roles, sites=sites, name=name), Action.GRANT_REVOKE, facts, NOW,
                      POLICY)
    assert decision.rule == rule
    assert decision.allowed is (rule in {"own-grant", "revoke-supervisor"} or (
        rule == "revoke-role" and bool(set(roles) & {Role.PRIVACY_OFFICER, Role.ADMIN})
    ))


def test_mismatched_action_and_resource_is_refused() -> None:
    decision = decide(who(Role.OPERATOR), Action.FOOTAGE_VIEW, request(), NOW, POLICY)
    assert decision.outcome is Outcome.REFUSE
    assert decision.rule == "unknown"


@pytest.mark.parametrize(
    ("roles", "sites", "kind", "hold_sites", "expiry", "outcome", "rule"),
    [
        ((Role.LEGAL,), ("*",), "legal", ("tokyo-1",), False, "allowed", "hold-legal"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "legal", ("tokyo-1",), False, "refused", "hold-role"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "security", ("tokyo-1",), True, "allowed",
         "hold-security"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "security", ("tokyo-1",), False, "refused",
         "hold-expiry"),
        ((Role.SUPERVISOR,), ("osaka-1",), "security", ("tokyo-1",), True, "refused",
         "site-scope"),
        ((Role.LEGAL,), ("*",), "security", ("tokyo-1",), True, "refused", "hold-role"),
        ((Role.LEGAL,), ("*",), "forever", ("tokyo-1",), False, "refused", "hold-kind"),
        ((Role.OPERATOR,), ("tokyo-1",), "security", ("tokyo-1",), True, "refused", "role"),
        ((Role.PRIVACY_OFFICER,), ("*",), "legal", ("tokyo-1",), False, "refused", "role"),
    ],
)
def test_hold_placement_table(
    roles: tuple[Role, ...], sites: tuple[str, ...], kind: str, hold_sites: tuple[str, ...],
    expiry: bool, outcome: str, rule: str,
) -> None:
    facts = HoldPlaceFacts(kind=kind, sites=frozenset(hold_sites), has_expiry=expiry)
    decision = decide(who(*roles, sites=sites), Action.HOLDS_PLACE, facts, NOW, POLICY)
    assert (decision.outcome.value, decision.rule) == (outcome, rule)


@pytest.mark.parametrize(
    ("roles", "sites", "name", "kind", "placed_by", "outcome", "rule"),
    [
        ((Role.LEGAL,), ("*",), "lee", "legal", "lin", "allowed", "release-legal"),
        ((Role.LEGAL,), ("*",), "lee", "legal", "lee", "refused", "four-eyes"),
        ((Role.PRIVACY_OFFICER,), ("*",), "pat", "legal", "lee", "allowed",
         "release-privacy-officer"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "legal", "lee", "refused", "release-role"),
        ((Role.SUPERVISOR,), ("tokyo-1",), "sam", "security", "sam", "allowed",
         "release-security"),
        ((Role.SUPERVISOR,), ("osaka-1",), "sid", "security", "sam", "refused", "release-role"),
        ((Role.AUDITOR,), ("*",), "aud", "security", "sam", "refused", "role"),
    ],
)
def test_hold_release_table(
    roles: tuple[Role, ...], sites: tuple[str, ...], name: str, kind: str, placed_by: str,
    outcome: str, rule: str,
) -> None:
    facts = HoldReleaseFacts(kind=kind, placed_by=placed_by, sites=frozenset({"tokyo-1"}))
    decision = decide(who(*roles, sites=sites, name=name), Action.HOLDS_RELEASE, facts, NOW,
                      POLICY)
    assert (decision.outcome.value, decision.rule) == (outcome, rule)
