"""The access policy (DESIGN §7): pure decisions over roles, sites, purposes and grants.

Nothing here touches the database, the clock or HTTP: routes gather the facts, call
:func:`decide`, log the :class:`Decision` and act on it. Every refusal carries a ``rule`` (a
stable identifier an auditor can count) and a ``reason`` that never mentions anything outside
the caller's scope (I4).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from vault.models import COLLECTION_PURPOSE
from vault.timerange import TimeRange

__all__ = [
    "ALL_SITES",
    "ROLE_PERMISSIONS",
    "AccessPolicy",
    "Action",
    "ApproveFacts",
    "Decision",
    "FootageFacts",
    "GrantFacts",
    "HoldPlaceFacts",
    "HoldReleaseFacts",
    "Outcome",
    "PrincipalView",
    "Purpose",
    "RequestFacts",
    "RevokeFacts",
    "Role",
    "ScopeFacts",
    "decide",
    "purpose_rule",
]

ALL_SITES = "*"


class Role(StrEnum):
    OPERATOR = "operator"
    SUPERVISOR = "supervisor"
    LEGAL = "legal"
    PRIVACY_OFFICER = "privacy_officer"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Purpose(StrEnum):
    """The purposes the policy knows. Any other string is incompatible with ``security``."""

    SECURITY_REVIEW = "security_review"
    INCIDENT_INVESTIGATION = "incident_investigation"
    LEGAL_DISCLOSURE = "legal_disclosure"
    DATA_SUBJECT_REQUEST = "data_subject_request"


# Compatible with the collection purpose without further paperwork.
SECURITY_PURPOSES = frozenset({Purpose.SECURITY_REVIEW, Purpose.INCIDENT_INVESTIGATION})


class Action(StrEnum):
    """What a route does; every route declares exactly one (I4)."""

    PUBLIC = "public"  # no principal: health, login, the token verification keys
    AUTHENTICATED = "authenticated"  # any principal, about itself only
    CAMERAS_LIST = "cameras.list"
    ACCESS_REQUEST = "access.request"
    ACCESS_LIST = "access.list"
    ACCESS_APPROVE = "access.approve"
    GRANT_REVOKE = "grant.revoke"
    FOOTAGE_VIEW = "footage.view"  # timeline, thumbnails, clips, segment media
    AUDIT_READ = "audit.read"
    USERS_MANAGE = "users.manage"
    HOLDS_LIST = "holds.list"
    HOLDS_PLACE = "holds.place"  # legal holds: legal counsel; security holds: supervisors
    HOLDS_RELEASE = "holds.release"
    RETENTION_READ = "retention.read"  # policies, the retention report, purge runs
    RETENTION_CHANGE = "retention.change"  # change a retention policy: privacy officer only


_VIEWERS = frozenset({Role.OPERATOR, Role.SUPERVISOR, Role.LEGAL, Role.PRIVACY_OFFICER})

ROLE_PERMISSIONS: dict[Action, frozenset[Role]] = {
    Action.PUBLIC: frozenset(Role),
    Action.AUTHENTICATED: frozenset(Role),
    Action.CAMERAS_LIST: _VIEWERS | {Role.ADMIN},
    Action.ACCESS_REQUEST: _VIEWERS,
    Action.ACCESS_LIST: _VIEWERS,
    Action.ACCESS_APPROVE: frozenset({Role.SUPERVISOR, Role.PRIVACY_OFFICER}),
    Action.GRANT_REVOKE: _VIEWERS | {Role.ADMIN},
    # Separation of duties: administrators and auditors never see footage.
    Action.FOOTAGE_VIEW: _VIEWERS,
    Action.AUDIT_READ: frozenset({Role.AUDITOR, Role.PRIVACY_OFFICER}),
    Action.USERS_MANAGE: frozenset({Role.ADMIN}),
    Action.HOLDS_LIST: frozenset(
        {Role.SUPERVISOR, Role.LEGAL, Role.PRIVACY_OFFICER, Role.AUDITOR}
    ),
    Action.HOLDS_PLACE: frozenset({Role.SUPERVISOR, Role.LEGAL}),
    Action.HOLDS_RELEASE: frozenset({Role.SUPERVISOR, Role.LEGAL, Role.PRIVACY_OFFICER}),
    Action.RETENTION_READ: frozenset({Role.PRIVACY_OFFICER, Role.AUDITOR, Role.ADMIN}),
    Action.RETENTION_CHANGE: frozenset({Role.PRIVACY_OFFICER}),
}

# Which roles may ask for footage for which purpose.
_PURPOSE_ROLES: dict[Purpose, frozenset[Role]] = {
    Purpose.SECURITY_REVIEW: frozenset({Role.OPERATOR, Role.SUPERVISOR}),
    Purpose.INCIDENT_INVESTIGATION: frozenset({Role.OPERATOR, Role.SUPERVISOR}),
    Purpose.LEGAL_DISCLOSURE: frozenset({Role.LEGAL}),
    Purpose.DATA_SUBJECT_REQUEST: frozenset({Role.PRIVACY_OFFICER}),
}

# Who approves what: security purposes by a supervisor of the sites, disclosures by the
# privacy officer. Never the requester (four eyes).
_APPROVER_ROLE: dict[Purpose, Role] = {
    Purpose.SECURITY_REVIEW: Role.SUPERVISOR,
    Purpose.INCIDENT_INVESTIGATION: Role.SUPERVISOR,
    Purpose.LEGAL_DISCLOSURE: Role.PRIVACY_OFFICER,
    Purpose.DATA_SUBJECT_REQUEST: Role.PRIVACY_OFFICER,
}


class Outcome(StrEnum):
    ALLOW = "allowed"
    PENDING = "pending"
    REFUSE = "refused"


@dataclass(frozen=True, slots=True)
class Decision:
    outcome: Outcome
    rule: str
    reason: str

    @property
    def allowed(self) -> bool:
        return self.outcome is Outcome.ALLOW


def _allow(rule: str, reason: str) -> Decision:
    return Decision(Outcome.ALLOW, rule, reason)


def _refuse(rule: str, reason: str) -> Decision:
    return Decision(Outcome.REFUSE, rule, reason)


@dataclass(frozen=True, slots=True)
class PrincipalView:
    """Who is asking: the roles and sites the catalog (or the identity provider) gives them."""

    name: str
    roles: frozenset[Role]
    sites: frozenset[str]

    def has(self, role: Role) -> bool:
        return role in self.roles

    def covers_site(self, site_id: str) -> bool:
        return ALL_SITES in self.sites or site_id in self.sites

    def covers_sites(self, site_ids: Iterable[str]) -> bool:
        return all(self.covers_site(s) for s in site_ids)

    @property
    def primary_role(self) -> str:
        """The role recorded in the ledger: all of them, in a stable order."""
        return ",".join(sorted(self.roles)) or "none"


@dataclass(frozen=True)
class AccessPolicy:
    """Configurable bounds of the automatic grant and grant lifetime."""

    auto_grant_window: timedelta = timedelta(days=7)
    auto_grant_max_span: timedelta = timedelta(hours=2)
    grant_ttl: timedelta = timedelta(minutes=60)


@dataclass(frozen=True)
class ScopeFacts:
    """A role-level question: may this principal use this route at all?"""


@dataclass(frozen=True)
class RequestFacts:
    """An access request about to be filed: cameras (with their sites) x range, for a purpose."""

    camera_sites: dict[str, str]  # camera id -> site id, for the cameras asked for
    window: TimeRange
    purpose: str
    # Scopes of registered warrants / open disclosure requests covering this request.
    # Empty until the legal-disclosure capability registers them.
    covering_warrants: Sequence[str] = ()
    covering_disclosures: Sequence[str] = ()


@dataclass(frozen=True)
class ApproveFacts:
    requester: str
    purpose: str
    sites: frozenset[str]
    state: str


@dataclass(frozen=True)
class GrantFacts:
    id: str
    holder: str
    cameras: frozenset[str]
    window: TimeRange
    purpose: str
    expires_at: datetime
    revoked: bool


@dataclass(frozen=True)
class FootageFacts:
    """A footage call: which camera (and its site), which range, through which grant."""

    camera_id: str
    camera_site: str
    window: TimeRange
    grant: GrantFacts | None
    # Segment media is served whole: it may start or end outside the grant, but must overlap.
    whole_segment: bool = False


@dataclass(frozen=True)
class RevokeFacts:
    grant: GrantFacts
    sites: frozenset[str]


@dataclass(frozen=True)
class HoldPlaceFacts:
    """A hold about to be placed: its kind and the sites of its cameras."""

    kind: str  # "legal" | "security"
    sites: frozenset[str]
    has_expiry: bool


@dataclass(frozen=True)
class HoldReleaseFacts:
    kind: str
    placed_by: str
    sites: frozenset[str]


Resource = (
    ScopeFacts
    | RequestFacts
    | ApproveFacts
    | FootageFacts
    | RevokeFacts
    | HoldPlaceFacts
    | HoldReleaseFacts
)


def purpose_rule(purpose: str) -> Decision:
    """Is ``purpose`` compatible with the collection purpose (I2)? Paperwork is checked later."""
    if purpose in SECURITY_PURPOSES:
        return _allow("purpose-compatible", f"{purpose} is compatible with {COLLECTION_PURPOSE}")
    if purpose == Purpose.LEGAL_DISCLOSURE:
        return _allow("purpose-needs-warrant", "legal_disclosure needs a covering warrant")
    if purpose == Purpose.DATA_SUBJECT_REQUEST:
        return _allow(
            "purpose-needs-disclosure-request",
            "data_subject_request needs an open disclosure request",
        )
    return _refuse(
        "purpose-incompatible",
        f"purpose {purpose!r} is incompatible with the collection purpose "
        f"{COLLECTION_PURPOSE!r}: footage may be used for security only (I2)",
    )


def _role_check(principal: PrincipalView, action: Action) -> Decision:
    allowed_roles = ROLE_PERMISSIONS[action]
    if principal.roles & allowed_roles:
        return _allow("role", f"role permits {action}")
    if action is Action.FOOTAGE_VIEW or action is Action.ACCESS_REQUEST:
        if principal.roles & {Role.ADMIN, Role.AUDITOR}:
            return _refuse(
                "separation-of-duties",
                "administrators and auditors never view footage (separation of duties)",
            )
    return _refuse("role", f"no role of {principal.name!r} permits {action}")


def _decide_request(
    p: PrincipalView, facts: RequestFacts, now: datetime, pol: AccessPolicy
) -> Decision:
    purpose = purpose_rule(facts.purpose)
    if not purpose.allowed:
        return purpose
    wanted = Purpose(facts.purpose)
    if not p.roles & _PURPOSE_ROLES[wanted]:
        return _refuse(
            "purpose-role",
            f"purpose {wanted} is not available to role(s) {p.primary_role}",
        )
    if not facts.camera_sites:
        return _refuse("no-cameras", "an access request names at least one camera")
    if not p.covers_sites(facts.camera_sites.values()):
        # Routes resolve cameras within the caller's sites first; this is the backstop.
        return _refuse("site-scope", "a requested camera is outside your sites")
    if wanted is Purpose.LEGAL_DISCLOSURE and not facts.covering_warrants:
        return _refuse(
            "purpose-needs-warrant",
            "legal_disclosure needs a registered warrant covering these cameras and this "
            "range; none does",
        )
    if wanted is Purpose.DATA_SUBJECT_REQUEST and not facts.covering_disclosures:
        return _refuse(
            "purpose-needs-disclosure-request",
            "data_subject_request needs an open disclosure request covering these cameras "
            "and this range; none does",
        )
    if wanted in SECURITY_PURPOSES:
        recent = facts.window.start >= now - pol.auto_grant_window
        short = facts.window.duration <= pol.auto_grant_max_span
        if recent and short:
            return _allow(
                "auto-grant",
                f"recent footage of own sites (within {pol.auto_grant_window}, span at most "
                f"{pol.auto_grant_max_span})",
            )
        why = "older than the automatic window" if not recent else "longer than the automatic span"
        return Decision(
            Outcome.PENDING, "needs-approval", f"{why}: a supervisor (another person) must approve"
        )
    return Decision(
        Outcome.PENDING, "needs-approval", "disclosures need the privacy officer's approval"
    )


def _decide_approve(p: PrincipalView, facts: ApproveFacts) -> Decision:
    if facts.state != "pending":
        return _refuse("not-pending", f"the request is {facts.state}, not pending")
    if facts.requester == p.name:
        return _refuse("four-eyes", "nobody approves their own request")
    try:
        approver_role = _APPROVER_ROLE[Purpose(facts.purpose)]
    except ValueError:
        return _refuse("purpose-incompatible", "the request's purpose cannot be approved")
    if not p.has(approver_role):
        return _refuse(
            "approver-role", f"requests for {facts.purpose} are approved by a {approver_role}"
        )
    if approver_role is Role.SUPERVISOR and not p.covers_sites(facts.sites):
        return _refuse("site-scope", "the request covers cameras outside your sites")
    return _allow("approved", f"approved by a {approver_role} other than the requester")


def _decide_footage(p: PrincipalView, facts: FootageFacts, now: datetime) -> Decision:
    grant = facts.grant
    if grant is None:
        return _refuse("no-grant", "footage is viewed through a grant; none was given")
    if grant.holder != p.name:
        return _refuse("grant-holder", "the grant belongs to someone else")
    if grant.revoked:
        return _refuse("grant-revoked", "the grant has been revoked")
    if now >= grant.expires_at:
        return _refuse("grant-expired", "the grant has expired")
    if facts.camera_id not in grant.cameras:
        return _refuse("grant-camera", "the grant does not cover this camera")
    if facts.whole_segment:
        inside = facts.window.overlaps(grant.window)
    else:
        inside = grant.window.start <= facts.window.start and facts.window.end <= grant.window.end
    if not inside:
        return _refuse("grant-range", "the asked range is outside the grant's range")
    if Purpose(grant.purpose) in SECURITY_PURPOSES and not p.covers_site(facts.camera_site):
        # Sites taken away since the grant was issued end security viewing at once.
        return _refuse("site-scope", "the camera is outside your sites")
    return _allow("grant", f"grant {grant.id} covers camera and range")


def _decide_revoke(p: PrincipalView, facts: RevokeFacts) -> Decision:
    if facts.grant.revoked:
        return _refuse("grant-revoked", "the grant is already revoked")
    if facts.grant.holder == p.name:
        return _allow("own-grant", "holders may give up their own grant")
    if p.has(Role.PRIVACY_OFFICER) or p.has(Role.ADMIN):
        return _allow("revoke-role", "privacy officers and administrators may revoke any grant")
    if p.has(Role.SUPERVISOR) and p.covers_sites(facts.sites):
        return _allow("revoke-supervisor", "supervisors may revoke grants on their sites")
    return _refuse("revoke-role", "you may not revoke this grant")


def _decide_hold_place(p: PrincipalView, facts: HoldPlaceFacts) -> Decision:
    if facts.kind == "legal":
        if not p.has(Role.LEGAL):
            return _refuse("hold-role", "legal holds are placed by legal counsel")
        return _allow("hold-legal", "legal counsel places legal holds")
    if facts.kind == "security":
        if not p.has(Role.SUPERVISOR):
            return _refuse("hold-role", "security holds are placed by a supervisor")
        if not p.covers_sites(facts.sites):
            return _refuse("site-scope", "a camera of the hold is outside your sites")
        if not facts.has_expiry:
            return _refuse("hold-expiry", "a security hold needs an expiry")
        return _allow("hold-security", "a supervisor places security holds on own sites")
    return _refuse("hold-kind", f"unknown hold kind {facts.kind!r}: legal or security")


def _decide_hold_release(p: PrincipalView, facts: HoldReleaseFacts) -> Decision:
    if p.has(Role.PRIVACY_OFFICER):
        return _allow("release-privacy-officer", "the privacy officer may release any hold")
    if facts.kind == "legal":
        if not p.has(Role.LEGAL):
            return _refuse("release-role", "legal holds are released by legal counsel")
        if facts.placed_by == p.name:
            return _refuse(
                "four-eyes", "a legal hold is released by another person than who placed it"
            )
        return _allow("release-legal", "released by legal counsel other than the placer")
    if p.has(Role.SUPERVISOR) and p.covers_sites(facts.sites):
        return _allow("release-security", "a supervisor of the sites releases security holds")
    return _refuse("release-role", "security holds are released by a supervisor of the sites")


def decide(
    principal: PrincipalView,
    action: Action,
    resource: Resource,
    now: datetime,
    policy: AccessPolicy | None = None,
) -> Decision:
    """Decide whether ``principal`` may perform ``action`` on ``resource`` at ``now``.

    The role check comes first, so a refusal for lack of role never depends on (or reveals)
    the resource. Requests may come out ``PENDING``: allowed to be filed, not yet granted.
    """
    pol = policy or AccessPolicy()
    role = _role_check(principal, action)
    if not role.allowed:
        return role
    match resource:
        case ScopeFacts():
            return role
        case RequestFacts() if action is Action.ACCESS_REQUEST:
            return _decide_request(principal, resource, now, pol)
        case ApproveFacts() if action is Action.ACCESS_APPROVE:
            return _decide_approve(principal, resource)
        case FootageFacts() if action is Action.FOOTAGE_VIEW:
            return _decide_footage(principal, resource, now)
        case RevokeFacts() if action is Action.GRANT_REVOKE:
            return _decide_revoke(principal, resource)
        case HoldPlaceFacts() if action is Action.HOLDS_PLACE:
            return _decide_hold_place(principal, resource)
        case HoldReleaseFacts() if action is Action.HOLDS_RELEASE:
            return _decide_hold_release(principal, resource)
    return _refuse("unknown", f"no rule decides {action} on {type(resource).__name__}")
