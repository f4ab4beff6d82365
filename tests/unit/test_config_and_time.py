"""Config validation (extra="forbid", purpose, references, naive datetimes) and the time model."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from tests.support.configs import SITE_AND_POLICY
from vault.config import parse_config
from vault.errors import ConfigError, InvalidInput
from vault.timerange import TimeRange, as_utc, parse_instant

BASE = SITE_AND_POLICY

CAMERA = """
[[cameras]]
id = "cam-a"
site = "tokyo-1"
name = "Main"
retention_policy = "pci"
{extra}
source = {source}
"""


def camera(source: str = '{ kind = "rtsp", url = "rtsp://10.0.0.5/s" }', extra: str = "") -> str:
    return BASE + CAMERA.format(source=source, extra=extra)


def test_valid_config_loads() -> None:
    cfg = parse_config(camera())
    assert cfg.cameras[0].purpose == "security"
    assert cfg.segment_seconds(cfg.cameras[0]) == 60


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (camera(extra='purpose = "marketing"'), "purpose 'marketing' is not allowed"),
        (camera(extra='purpose = "hr_investigation"'), "only 'security'"),
        (camera(extra="colour = 3"), "cameras.0.colour: unknown key"),
        (BASE + "[recording]\nsegment_secs = 5\n", "recording.segment_secs: unknown key"),
        (camera(source='{ kind = "rtsp", url = "rtsp://admin:hunter2@10.0.0.5/s" }'),
         "must not carry credentials"),
        (camera(source='{ kind = "rtsp", url = "http://10.0.0.5/s" }'), "needs a rtsp:// url"),
        (camera(source='{ kind = "file" }'), "needs a url"),
        (camera(extra="segment_seconds = 1"), "segment_seconds"),
        (camera(extra="segment_seconds = 301"), "segment_seconds"),
        (BASE.replace("days = 90\nmin", "days = 30\nmin"), "outside [min_days=90"),
        (BASE.replace("days = 90\nmin", "days = -1\nmin"), "days"),
        (BASE + 'effective = 1\n', "unknown key"),
        (BASE.replace('max_days = 365', 'max_days = 365\neffective_from = 2026-01-01T00:00:00'),
         "effective_from: Input should have timezone info"),
        (camera().replace('site = "tokyo-1"', 'site = "nowhere"'), "unknown site 'nowhere'"),
        (BASE.replace('"Asia/Tokyo"', '"Mars/Olympus"'), "unknown timezone"),
        ("sites = [", "not valid TOML"),
    ],
)
def test_bad_config_is_refused_with_a_precise_message(text: str, message: str) -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(text)
    assert message in err.value.message
    assert "hunter2" not in err.value.message


def test_config_error_never_echoes_a_credential() -> None:
    with pytest.raises(ConfigError) as err:
        parse_config(camera(source='{ kind = "rtsp", url = "rtsp://u:s3cr3t@h/x" }'))
    assert "s3cr3t" not in str(err.value)


def test_naive_datetimes_are_refused_everywhere() -> None:
    naive = datetime(2026, 1, 1, 0, 0)
    with pytest.raises(InvalidInput, match="timezone"):
        as_utc(naive)
    with pytest.raises(InvalidInput, match="timezone"):
        TimeRange(naive, naive + timedelta(hours=1))
    with pytest.raises(InvalidInput, match="timezone"):
        parse_instant("2026-01-01T00:00:00")
    with pytest.raises(InvalidInput, match="not an ISO 8601"):
        parse_instant("yesterday")


def test_instants_are_normalised_to_utc() -> None:
    jst = timezone(timedelta(hours=9))
    assert parse_instant("2026-01-01T09:00:00+09:00") == datetime(2026, 1, 1, tzinfo=UTC)
    assert parse_instant("2026-01-01T00:00:00Z").tzinfo == UTC
    r = TimeRange(datetime(2026, 1, 1, 9, tzinfo=jst), datetime(2026, 1, 1, 10, tzinfo=jst))
    assert r.start == datetime(2026, 1, 1, tzinfo=UTC)


def test_time_range_is_half_open() -> None:
    t = datetime(2026, 1, 1, tzinfo=UTC)
    r = TimeRange(t, t + timedelta(minutes=1))
    assert r.contains(t) and not r.contains(t + timedelta(minutes=1))
    assert not r.overlaps(TimeRange(t + timedelta(minutes=1), t + timedelta(minutes=2)))
    assert r.overlaps(TimeRange(t - timedelta(seconds=1), t + timedelta(seconds=1)))
    with pytest.raises(InvalidInput, match="before start"):
        TimeRange(t, t - timedelta(seconds=1))


def test_an_api_process_takes_the_configured_thread_switch_interval() -> None:
    import sys

    from cctv_vault.runtime import tune_api_process
    from vault.settings import Settings

    before = sys.getswitchinterval()
    try:
        tune_api_process(Settings(api_gil_switch_ms=0.5))
        assert sys.getswitchinterval() == pytest.approx(0.0005)
    finally:
        sys.setswitchinterval(before)
    with pytest.raises(ValueError, match="api_gil_switch_ms"):
        Settings(api_gil_switch_ms=0)
