"""Bearer tokens: our own short-lived EdDSA JWTs, and an external OIDC issuer's through its JWKS.

Which verifier runs is chosen by the token's ``iss`` claim, read unverified only to route it;
each verifier then checks signature, algorithm (allow-list: never ``none``, never HMAC), issuer,
audience and lifetime. Expiry is checked against the injected clock, so the whole product keeps
one time model.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import jwt
from jwt import PyJWKClient

from vault.errors import Unauthenticated, Unavailable
from vault.signing import SigningKey
from vault.timerange import Clock

__all__ = [
    "LOCAL_AUDIENCE",
    "LOCAL_ISSUER",
    "Identity",
    "OidcConfig",
    "TokenService",
]

LOCAL_ISSUER = "cctv-vault"
LOCAL_AUDIENCE = "cctv-vault-api"
_LEEWAY = timedelta(seconds=30)
_REQUIRED = ["exp", "iat", "iss", "aud", "sub"]
_VERIFIED_MAX = 10_000  # tokens whose signature and claims this process has checked


@dataclass(frozen=True)
class Identity:
    """Who a verified token says the caller is.

    Local identities carry only the name: roles and sites are read from the catalog on every
    request, so disabling a user or changing their sites takes effect at once. External ones
    carry the roles and sites their issuer asserted.
    """

    kind: str  # "local" | "oidc"
    subject: str
    name: str
    roles: tuple[str, ...] = ()
    sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class OidcConfig:
    issuer: str
    audience: str
    jwks_url: str
    algorithms: tuple[str, ...]
    name_claim: str = "preferred_username"
    roles_claim: str = "roles"
    sites_claim: str = "sites"


def _string_list(value: Any) -> tuple[str, ...]:
    if isinstance(value, str):
        return tuple(v for v in value.replace(",", " ").split() if v)
    if isinstance(value, list):
        return tuple(v for v in value if isinstance(v, str))
    return ()


class TokenService:
    def __init__(
        self,
        key: SigningKey,
        clock: Clock,
        ttl: timedelta = timedelta(minutes=15),
        oidc: OidcConfig | None = None,
    ) -> None:
        self._key = key
        self._clock = clock
        self.ttl = ttl
        self._oidc = oidc
        self._jwks = (
            PyJWKClient(oidc.jwks_url, cache_keys=True, lifespan=300, timeout=5)
            if oidc
            else None
        )
        # token -> (identity, not before, expires): a token's signature, issuer, audience and
        # algorithm never change, so they are checked once per process; its lifetime is
        # checked against the clock on every use.
        self._verified: dict[str, tuple[Identity, datetime, datetime]] = {}

    @property
    def key(self) -> SigningKey:
        return self._key

    def issue(self, name: str) -> tuple[str, int]:
        """A signed token for local principal ``name``, and its lifetime in seconds."""
        now = self._clock.now()
        claims = {
            "iss": LOCAL_ISSUER,
            "aud": LOCAL_AUDIENCE,
            "sub": name,
            "iat": int(now.timestamp()),
            "exp": int((now + self.ttl).timestamp()),
            "jti": uuid.uuid4().hex,
        }
        token = jwt.encode(claims, self._key.private, algorithm="EdDSA", headers={
            "kid": self._key.key_id
        })
        return token, int(self.ttl.total_seconds())

    def verify(self, token: str) -> Identity:
        known = self._verified.get(token)
        if known is not None:
            identity, not_before, expires = known
            self._check_lifetime(self._clock.now(), not_before, expires)
            return identity
        identity, not_before, expires = self._verify_once(token)
        if len(self._verified) >= _VERIFIED_MAX:
            self._verified.clear()
        self._verified[token] = (identity, not_before, expires)
        return identity

    def _verify_once(self, token: str) -> tuple[Identity, datetime, datetime]:
        try:
            unverified = jwt.decode(token, options={"verify_signature": False})
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthenticated("malformed bearer token") from exc
        issuer = unverified.get("iss")
        if issuer == LOCAL_ISSUER:
            claims, not_before, expires = self._decode(
                token, self._key.public, ("EdDSA",), LOCAL_AUDIENCE, LOCAL_ISSUER
            )
            identity = Identity(kind="local", subject=str(claims["sub"]), name=str(claims["sub"]))
            return identity, not_before, expires
        if self._oidc is not None and self._jwks is not None and issuer == self._oidc.issuer:
            if header.get("alg") not in self._oidc.algorithms:
                raise Unauthenticated("token algorithm is not accepted")
            try:
                signing_key = self._jwks.get_signing_key_from_jwt(token)
            except jwt.PyJWKClientConnectionError as exc:
                raise Unavailable("the identity provider's keys cannot be fetched") from exc
            except jwt.PyJWTError as exc:
                raise Unauthenticated("token signed by an unknown key") from exc
            claims, not_before, expires = self._decode(
                token, signing_key.key, self._oidc.algorithms, self._oidc.audience,
                self._oidc.issuer,
            )
            subject = str(claims["sub"])
            name = claims.get(self._oidc.name_claim)
            identity = Identity(
                kind="oidc",
                subject=f"{self._oidc.issuer}#{subject}",
                name=name if isinstance(name, str) and name else subject,
                roles=_string_list(claims.get(self._oidc.roles_claim)),
                sites=_string_list(claims.get(self._oidc.sites_claim)),
            )
            return identity, not_before, expires
        raise Unauthenticated("token from an unknown issuer")

    def _decode(
        self, token: str, key: Any, algorithms: tuple[str, ...], audience: str, issuer: str
    ) -> tuple[dict[str, Any], datetime, datetime]:
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=list(algorithms),
                audience=audience,
                issuer=issuer,
                # Lifetime is checked below against the injected clock.
                options={"require": _REQUIRED, "verify_exp": False, "verify_iat": False,
                         "verify_nbf": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthenticated(f"invalid token: {_why(exc)}") from exc
        now = self._clock.now()
        try:
            exp = datetime.fromtimestamp(float(claims["exp"]), tz=now.tzinfo)
            iat = datetime.fromtimestamp(float(claims["iat"]), tz=now.tzinfo)
            nbf = claims.get("nbf")
            not_before = datetime.fromtimestamp(float(nbf), tz=now.tzinfo) if nbf else iat
        except (TypeError, ValueError, OverflowError) as exc:
            raise Unauthenticated("invalid token: bad time claims") from exc
        self._check_lifetime(now, not_before, exp)
        return claims, not_before, exp

    @staticmethod
    def _check_lifetime(now: datetime, not_before: datetime, expires: datetime) -> None:
        if now >= expires + _LEEWAY:
            raise Unauthenticated("token expired")
        if now + _LEEWAY < not_before:
            raise Unauthenticated("token not valid yet")


def _why(exc: jwt.PyJWTError) -> str:
    """A short, safe reason: never echoes the token itself (I9)."""
    match exc:
        case jwt.InvalidAudienceError():
            return "wrong audience"
        case jwt.InvalidIssuerError():
            return "wrong issuer"
        case jwt.InvalidAlgorithmError():
            return "algorithm not accepted"
        case jwt.InvalidSignatureError():
            return "bad signature"
        case jwt.MissingRequiredClaimError():
            return f"missing claim {exc.claim}"
    return type(exc).__name__
