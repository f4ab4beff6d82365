"""Process settings: one validated object per process, built by the composition root."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]


class Settings(BaseSettings):
    """Read from ``CCTV_*`` environment variables (and a ``.env`` file if present)."""

    model_config = SettingsConfigDict(env_prefix="CCTV_", extra="forbid", env_file=None)

    data_dir: Path = Field(Path("./var"), description="Root of the embedded catalog, store, spool")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file under the data dir"
    )
    store: Literal["fs", "s3"] = Field("fs", description="Object store backend")
    s3_endpoint: str = Field("127.0.0.1:9000", description="host:port of the S3 service")
    s3_secure: bool = Field(True, description="Use HTTPS to reach the S3 service")
    s3_region: str = Field("us-east-1")
    s3_bucket: str = Field("cctv-vault", min_length=3, max_length=63)
    s3_access_key: SecretStr | None = Field(None, description="S3 access key id")
    s3_secret_key: SecretStr | None = Field(None, description="S3 secret access key")
    s3_allow_unenforced_lock: bool = Field(
        False,
        description="Start even if the store accepts deleting a locked object (logged loudly)",
    )
    key_file: Path | None = Field(
        None, description="Key-encryption key file (0600); default: <data_dir>/keys/kek.bin"
    )
    spool_dir: Path | None = Field(None, description="Spool directory; default <data_dir>/spool")
    spool_max_bytes: int = Field(
        2 * 1024**3, ge=16 * 1024**2, description="Bound of uncommitted footage in the spool"
    )
    ledger_key_file: Path | None = Field(
        None, description="Ed25519 key for ledger checkpoints; default <data_dir>/keys/ledger.pem"
    )
    token_key_file: Path | None = Field(
        None, description="Ed25519 key signing API access tokens; default <data_dir>/keys/token.pem"
    )
    ledger_batch_max: int = Field(100, ge=1, le=10_000, description="Events per group commit")
    ledger_batch_wait_ms: float = Field(
        10.0, ge=0, le=1000, description="Longest wait to fill a group commit"
    )
    ledger_write_timeout_s: float = Field(
        3.0, gt=0, le=60, description="A request whose audit event is not durable by then fails"
    )
    api_host: str = Field("127.0.0.1", description="Address the access API listens on")
    api_port: int = Field(8080, ge=1, le=65535, description="Port of the access API")
    api_gil_switch_ms: float = Field(
        0.5,
        gt=0,
        le=100,
        description=(
            "Python's thread switch interval in API worker processes (ms). Lower than the "
            "interpreter's 5 ms so the ledger writer thread is not held off by request threads"
        ),
    )
    token_ttl_minutes: int = Field(15, ge=1, le=15, description="Lifetime of API access tokens")
    grant_ttl_minutes: int = Field(60, ge=1, le=24 * 60, description="Lifetime of a viewing grant")
    auto_grant_window_hours: float = Field(
        168, ge=0, le=24 * 90, description="Operators are auto-granted footage this recent"
    )
    auto_grant_max_span_minutes: float = Field(
        120, ge=0, le=24 * 60, description="Longest range an automatic grant covers"
    )
    login_max_failures: int = Field(
        5, ge=1, le=100, description="Consecutive failed logins that lock an account"
    )
    login_lockout_minutes: float = Field(15, gt=0, description="How long a lockout lasts")
    login_client_max_failures: int = Field(
        20, ge=1, description="Failed logins one client may make per window before 429"
    )
    login_window_seconds: int = Field(300, ge=1, description="Window of the login rate limits")
    oidc_issuer: str | None = Field(None, description="External OIDC issuer (the iss claim)")
    oidc_audience: str | None = Field(None, description="Audience our API expects (aud claim)")
    oidc_jwks_url: str | None = Field(None, description="The issuer's JWKS URL")
    oidc_algorithms: list[str] = Field(
        default_factory=lambda: ["RS256", "ES256", "EdDSA"],
        description="Accepted signature algorithms of external tokens (never none or HS*)",
    )
    oidc_name_claim: str = Field("preferred_username", description="Claim naming the person")
    oidc_roles_claim: str = Field("roles", description="Claim listing cctv-vault roles")
    oidc_sites_claim: str = Field("sites", description="Claim listing the person's site ids")
    demo: bool = Field(False, description="Embedded demo mode: allows demo-only defaults")
    scheduler_timezone: str = Field(
        "Asia/Tokyo",
        min_length=1,
        max_length=64,
        description="IANA time zone in which the scheduler's cron expressions are read",
    )
    scheduler_purge_cron: str = Field(
        "30 2 * * *",
        max_length=120,
        pattern=r"^\s*\S+(\s+\S+){4,5}\s*$",
        description="When the purge runs: crontab fields (minute hour day month weekday,"
        " weekday 0 or 7 = Sunday), optionally with a leading seconds field",
    )
    scheduler_checkpoint_minutes: float = Field(
        5.0, ge=0.05, le=60, description="Interval of signed ledger checkpoints"
    )
    scheduler_expiry_minutes: float = Field(
        1.0, ge=0.05, le=60, description="Interval of the expiry of grants and security holds"
    )
    scheduler_sweep_cron: str = Field(
        "0 4 * * *",
        max_length=120,
        pattern=r"^\s*\S+(\s+\S+){4,5}\s*$",
        description="When the integrity sweep runs (same form as the purge cron)",
    )
    scheduler_sweep_sample: int = Field(
        200, ge=1, le=1_000_000, description="Stored segments decrypted and re-hashed per sweep"
    )
    scheduler_misfire_grace_hours: float = Field(
        6.0,
        gt=0,
        le=24,
        description="A job that could not start on time still runs if this late (once)",
    )
    scheduler_lease_poll_seconds: float = Field(
        5.0,
        ge=0.05,
        le=300,
        description="How often a waiting scheduler tries the lease and the holder checks it",
    )

    @model_validator(mode="after")
    def _s3_credentials(self) -> Settings:
        if self.store == "s3" and (self.s3_access_key is None or self.s3_secret_key is None):
            raise ValueError("store=s3 needs CCTV_S3_ACCESS_KEY and CCTV_S3_SECRET_KEY")
        return self

    @model_validator(mode="after")
    def _oidc_complete(self) -> Settings:
        oidc = (self.oidc_issuer, self.oidc_audience, self.oidc_jwks_url)
        if any(oidc) and not all(oidc):
            raise ValueError("OIDC needs CCTV_OIDC_ISSUER, _AUDIENCE and _JWKS_URL together")
        unsafe = {a for a in self.oidc_algorithms if a == "none" or a.startswith("HS")}
        if unsafe:
            raise ValueError(f"OIDC algorithms must be asymmetric; refusing {sorted(unsafe)}")
        return self

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'catalog.db').resolve()}"

    @property
    def resolved_key_file(self) -> Path:
        return self.key_file or self.data_dir / "keys" / "kek.bin"

    @property
    def resolved_ledger_key_file(self) -> Path:
        return self.ledger_key_file or self.data_dir / "keys" / "ledger.pem"

    @property
    def resolved_token_key_file(self) -> Path:
        return self.token_key_file or self.data_dir / "keys" / "token.pem"

    @property
    def resolved_spool_dir(self) -> Path:
        return self.spool_dir or self.data_dir / "spool"

    @property
    def store_root(self) -> Path:
        return self.data_dir / "store"
