"""The deployment's TOML config: sites, retention policies, cameras. Unknown keys are refused."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from vault.errors import ConfigError

__all__ = [
    "CameraConfig",
    "RecordingConfig",
    "RetentionPolicyConfig",
    "SiteConfig",
    "SourceConfig",
    "VaultConfig",
    "load_config",
]

Ident = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SiteConfig(_Strict):
    id: Ident
    name: str = Field(min_length=1, max_length=200)
    timezone: str = Field("UTC", description="IANA zone used for the site's schedules")

    @model_validator(mode="after")
    def _zone(self) -> SiteConfig:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(self.timezone)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError(f"unknown timezone {self.timezone!r}") from exc
        return self


class RetentionPolicyConfig(_Strict):
    id: Ident
    days: int = Field(ge=1, le=3650, description="Days kept after a segment's end")
    min_days: int = Field(1, ge=1, le=3650)
    max_days: int = Field(3650, ge=1, le=3650)
    basis: str = Field("", max_length=200, description="Why this period (law, standard)")
    effective_from: AwareDatetime | None = Field(
        None, description="When this policy took effect; must carry an offset"
    )

    @model_validator(mode="after")
    def _bounds(self) -> RetentionPolicyConfig:
        if not self.min_days <= self.days <= self.max_days:
            raise ValueError(
                f"days={self.days} is outside [min_days={self.min_days}, max_days={self.max_days}]"
            )
        return self


class SourceConfig(_Strict):
    kind: Literal["rtsp", "http", "file", "synthetic"]
    url: str | None = Field(None, description="Stream URL or file path; never with credentials")
    credentials_env: str | None = Field(
        None,
        pattern=r"^[A-Z][A-Z0-9_]*$",
        description="Prefix of <P>_USERNAME / <P>_PASSWORD environment variables",
    )
    credentials_file: Path | None = Field(None, description="File holding 'user:password'")
    open_timeout_s: float = Field(5.0, gt=0, le=60)
    read_timeout_s: float = Field(5.0, gt=0, le=60)
    # Synthetic cameras only.
    width: int = Field(640, ge=64, le=3840)
    height: int = Field(360, ge=64, le=2160)
    fps: int = Field(15, ge=1, le=60)
    gop_seconds: float = Field(2.0, gt=0, le=10)
    loop_seconds: int = Field(30, ge=2, le=600)

    @model_validator(mode="after")
    def _url(self) -> SourceConfig:
        if self.kind == "synthetic":
            return self
        if not self.url:
            raise ValueError(f"a {self.kind} source needs a url")
        parts = urlsplit(self.url)
        if parts.username or parts.password:
            raise ValueError(
                "the source url must not carry credentials; use credentials_env or "
                "credentials_file"
            )
        if self.kind in ("rtsp", "http") and parts.scheme not in (
            ("rtsp", "rtsps") if self.kind == "rtsp" else ("http", "https")
        ):
            raise ValueError(f"a {self.kind} source needs a {self.kind}:// url")
        return self


class CameraConfig(_Strict):
    id: Ident
    site: Ident
    name: str = Field(min_length=1, max_length=200)
    location: str = Field("", max_length=200)
    purpose: str = Field("security", description="Collection purpose; only 'security'")
    retention_policy: Ident
    enabled: bool = True
    segment_seconds: float | None = Field(None, ge=2, le=300)
    source: SourceConfig

    @model_validator(mode="after")
    def _purpose(self) -> CameraConfig:
        if self.purpose != "security":
            raise ValueError(
                f"purpose {self.purpose!r} is not allowed: the privacy notice discloses only "
                "'security' as the purpose of entrance cameras"
            )
        return self


class RecordingConfig(_Strict):
    segment_seconds: float = Field(60, ge=2, le=300, description="Target segment duration")
    max_gop_seconds: float = Field(10, gt=0, le=60, description="Longer GOPs warn")
    reconnect_min_s: float = Field(1, gt=0, le=60)
    reconnect_max_s: float = Field(30, gt=0, le=600)
    offline_after_s: float = Field(60, gt=0, description="Reconnecting this long -> offline")


class VaultConfig(_Strict):
    recording: RecordingConfig = RecordingConfig()
    sites: list[SiteConfig] = Field(min_length=1)
    retention_policies: list[RetentionPolicyConfig] = Field(min_length=1)
    cameras: list[CameraConfig] = Field(default_factory=list)

    @model_validator(mode="after")
    def _references(self) -> VaultConfig:
        for kind, items in (
            ("site", self.sites),
            ("retention policy", self.retention_policies),
            ("camera", self.cameras),
        ):
            seen: set[str] = set()
            for item in items:
                if item.id in seen:
                    raise ValueError(f"duplicate {kind} id {item.id!r}")
                seen.add(item.id)
        sites = {s.id for s in self.sites}
        policies = {p.id for p in self.retention_policies}
        for cam in self.cameras:
            if cam.site not in sites:
                raise ValueError(f"camera {cam.id!r} names unknown site {cam.site!r}")
            if cam.retention_policy not in policies:
                raise ValueError(
                    f"camera {cam.id!r} names unknown retention policy {cam.retention_policy!r}"
                )
        return self

    def camera(self, camera_id: str) -> CameraConfig:
        for cam in self.cameras:
            if cam.id == camera_id:
                return cam
        raise ConfigError(f"no camera {camera_id!r} in config")

    def segment_seconds(self, camera: CameraConfig) -> float:
        return camera.segment_seconds or self.recording.segment_seconds


def _describe(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        where = ".".join(str(p) for p in err["loc"]) or "(top level)"
        msg = err["msg"]
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{where}: {msg}")
    return "; ".join(lines)


def parse_config(text: str, *, origin: str = "<config>") -> VaultConfig:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{origin}: not valid TOML: {exc}") from exc
    try:
        return VaultConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{origin}: {_describe(exc)}") from exc


def load_config(path: Path) -> VaultConfig:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from exc
    return parse_config(text, origin=str(path))
