"""External OIDC bearer tokens, verified through the issuer's JWKS served on loopback here."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.algorithms import RSAAlgorithm
from sqlalchemy.engine import Engine

from access_api.principals import add_user
from tests.api.conftest import NOW, Api, make_api, problem
from tests.integration.test_clip import Native
from vault.crypto import LocalKeyProvider
from vault.db import unit_of_work

ISSUER = "https://idp.example.test/realms/dc"
AUDIENCE = "cctv-vault"


class Jwks:
    """An identity provider's key endpoint: one RSA key, served over HTTP on 127.0.0.1."""

    def __init__(self) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = uuid.uuid4().hex
        jwk = json.loads(RSAAlgorithm.to_jwk(self.key.public_key()))
        body = json.dumps({"keys": [{**jwk, "kid": self.kid, "use": "sig", "alg": "RS256"}]})
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - the stdlib's name
                outer.hits += 1
                data = body.encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *_args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def token(self, api: Api, key: Any = None, alg: str = "RS256", **claims: Any) -> str:
        now = int(api.clock.now().timestamp())
        body = {
            "iss": ISSUER, "aud": AUDIENCE, "sub": "u-123", "iat": now, "exp": now + 300,
            "preferred_username": "kenji", "roles": ["operator"], "sites": ["tokyo-1"],
        }
        body.update(claims)
        return jwt.encode(body, key or self.key, algorithm=alg, headers={"kid": self.kid})

    def close(self) -> None:
        if self.thread.is_alive():
            self.server.shutdown()
            self.server.server_close()
            self.thread.join()


@pytest.fixture
def idp() -> Iterator[Jwks]:
    server = Jwks()
    yield server
    server.close()


@pytest.fixture
def api(
    engine: Engine, tmp_path: Path, keys: LocalKeyProvider, natives: list[Native], idp: Jwks
) -> Iterator[Api]:
    yield from make_api(
        engine, tmp_path, keys, natives,
        oidc_issuer=ISSUER, oidc_audience=AUDIENCE, oidc_jwks_url=idp.url,
        oidc_algorithms=["RS256"],
    )


def _me(api: Api, token: str) -> Any:
    return api.client.get("/me", headers={"Authorization": f"Bearer {token}"})


def test_a_valid_external_token_maps_claims_to_roles_and_sites(api: Api, idp: Jwks) -> None:
    resp = _me(api, idp.token(api))
    assert resp.status_code == 200, resp.text
    assert resp.json() == {"name": "oidc:kenji", "roles": ["operator"], "sites": ["tokyo-1"]}
    token = idp.token(api)
    cams = api.client.get("/cameras", headers={"Authorization": f"Bearer {token}"})
    assert [c["id"] for c in cams.json()] == ["cam-a", "cam-c"]
    assert idp.hits == 1  # the JWKS is cached, not fetched per request


@pytest.mark.parametrize(
    ("case", "detail"),
    [
        ("wrong-issuer", "token from an unknown issuer"),
        ("wrong-audience", "invalid token: wrong audience"),
        ("expired", "token expired"),
        ("alg-none", "token algorithm is not accepted"),
        ("alg-not-allowed", "token algorithm is not accepted"),
        ("foreign-key", "invalid token: bad signature"),
        ("no-cctv-role", "the identity provider grants no cctv-vault role"),
        ("unknown-role-only", "the identity provider grants no cctv-vault role"),
    ],
)
def test_bad_external_tokens_are_refused_and_logged(
    api: Api, idp: Jwks, case: str, detail: str
) -> None:
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if case == "wrong-issuer":
        token = idp.token(api, iss="https://evil.example.test")
    elif case == "wrong-audience":
        token = idp.token(api, aud="someone-else")
    elif case == "expired":
        token = idp.token(api, exp=int((api.clock.now() - timedelta(minutes=5)).timestamp()))
    elif case == "alg-none":
        token = jwt.encode(
            {"iss": ISSUER, "aud": AUDIENCE, "sub": "x"}, None, algorithm="none"
        )
    elif case == "alg-not-allowed":
        token = idp.token(api, key=other, alg="PS256")
    elif case == "foreign-key":
        token = idp.token(api, key=other)
    elif case == "no-cctv-role":
        token = idp.token(api, roles=[])
    else:
        token = idp.token(api, roles=["superuser"])
    mark = api.head()
    assert problem(_me(api, token), 401)["detail"] == detail
    refused = [e for e in api.events(mark) if e.decision == "refused"]
    assert [e.action for e in refused] == ["auth.token"]


def test_an_external_subject_can_be_disabled_here(api: Api, idp: Jwks) -> None:
    with unit_of_work(api.ctx.engine) as session:
        add_user(session, "kenji-ext", ["operator"], ["osaka-1"], NOW,
                 external_subject=f"{ISSUER}#u-123")
    # Registered here: our catalog pins the sites, whatever the token claims.
    assert _me(api, idp.token(api)).json()["sites"] == ["osaka-1"]
    assert api.post("/users/kenji-ext/disable", "admin-tokyo").status_code == 200
    assert problem(_me(api, idp.token(api)), 401)["detail"] == "account disabled"


def test_identity_provider_unreachable_is_503(api: Api, idp: Jwks) -> None:
    idp.close()
    resp = _me(api, idp.token(api))
    assert "keys cannot be fetched" in problem(resp, 503)["detail"]
