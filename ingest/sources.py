"""Camera sources: credentials, URL redaction, opening through PyAV and reading packets.

Credentials come from the environment or a secret file, never from the catalog (DESIGN §5).
They exist only inside the URL handed to FFmpeg: every message we raise or log is built from
the redacted URL, and FFmpeg's own exceptions (whose text repeats the full URL) are never
chained onto ours.
"""

from __future__ import annotations

import builtins
import logging
import re
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote, unquote_plus, urlsplit, urlunsplit

import av
import av.container
import av.error
import av.video.stream

from vault.errors import ConfigError, Unavailable

__all__ = [
    "SOURCE_KINDS",
    "SUPPORTED_CODECS",
    "SourceError",
    "authenticated_url",
    "open_source",
    "read_packets",
    "redact_url",
    "resolve_credentials",
    "video_stream",
]

log = logging.getLogger(__name__)

SOURCE_KINDS = ("rtsp", "http", "file")
# Codecs that fragmented MP4 carries and that we copy without transcoding.
SUPPORTED_CODECS = frozenset({"h264", "hevc"})

_SECRET_PARAM_WORDS = ("password", "pass", "pwd", "token", "key", "secret", "auth", "signature")
_MASK = "***"


# Redaction ----------------------------------------------------------------------------------


_PARAM_SEPARATORS = re.compile(r"([/?&;#])")


def _is_secret_name(name: str) -> bool:
    lowered = unquote_plus(name).lower()
    return any(word in lowered for word in _SECRET_PARAM_WORDS)


def _mask_params(text: str) -> str:
    """Mask ``name=value`` pairs with secret-looking names in a query *or* a path.

    Some DVRs take credentials in the path (``/user=admin&password=x&channel=1.sdp``). A masked
    value runs to the next ``&``, ``;``, ``?`` or ``#``: an unescaped ``/`` inside a password
    must not leave its tail visible, even if that hides a following path segment.
    """
    pieces = _PARAM_SEPARATORS.split(text)  # token, separator, token, separator, ...
    masked: list[str] = []
    masking = False
    for index, piece in enumerate(pieces):
        if index % 2:
            if piece != "/":
                masking = False
            if not masking:
                masked.append(piece)
            continue
        if masking:
            continue
        name, eq, _value = piece.partition("=")
        if eq and _is_secret_name(name):
            masked.append(f"{name}={_MASK}")
            masking = True
        else:
            masked.append(piece)
    return "".join(masked)


def redact_url(url: str) -> str:
    """``url`` without userinfo (``***@`` instead) and with secret-looking parameters masked.

    Userinfo is taken to end at the *last* ``@`` of the URL, not at the first ``/``: a password
    with an unescaped ``/``, ``?`` or ``#`` must not leak into the "path". The price is
    over-redaction of URLs that carry ``@`` after the host, which is acceptable for logs.
    """
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    elif "@" in rest:
        rest = f"{_MASK}@{rest[rest.rfind('@') + 1 :]}"
    if "=" in rest:
        rest = _mask_params(rest)
    return f"{scheme}{sep}{rest}"


def _scrub(text: str, url: str) -> str:
    """Defence in depth: remove the URL's userinfo from ``text`` however it was spelled."""
    _scheme, sep, rest = url.partition("://")
    if not sep or "@" not in rest:
        return text
    userinfo = rest[: rest.rfind("@")]
    _user, _colon, password = userinfo.partition(":")
    secrets = {userinfo, unquote_plus(userinfo), password, unquote_plus(password)}
    for secret in sorted((s for s in secrets if len(s) >= 3), key=len, reverse=True):
        text = text.replace(secret, _MASK)
    return text


# Credentials --------------------------------------------------------------------------------


def resolve_credentials(
    credentials_env: str | None,
    credentials_file: Path | None,
    environ: Mapping[str, str],
) -> tuple[str, str] | None:
    """A camera's ``(username, password)`` from ``{P}_USERNAME``/``{P}_PASSWORD`` or a file.

    The file holds ``user:password`` on its first line. Errors name the variable or file,
    never a value.
    """
    if credentials_env and credentials_file is not None:
        raise ConfigError("set either credentials_env or credentials_file, not both")
    if credentials_env:
        names = (f"{credentials_env}_USERNAME", f"{credentials_env}_PASSWORD")
        for name in names:
            if name not in environ:
                raise ConfigError(f"credentials variable {name} is not set")
        username, password = environ[names[0]], environ[names[1]]
        if not username:
            raise ConfigError(f"credentials variable {names[0]} is empty")
        return username, password
    if credentials_file is not None:
        first_line = _first_line(credentials_file)
        username, colon, password = first_line.rstrip("\r\n").partition(":")
        if not colon or not username:
            raise ConfigError(
                f"credentials file {credentials_file}: first line must be user:password"
            )
        return username, password
    return None


def _first_line(credentials_file: Path) -> str:
    problem = ""
    try:
        with open(credentials_file, encoding="utf-8") as fh:
            return fh.readline()
    except FileNotFoundError:
        problem = "does not exist"
    except UnicodeDecodeError:
        problem = "is not UTF-8"
    except OSError as exc:
        problem = f"is not readable ({exc.strerror})"
    # Raised outside the handler: a decode error's text quotes bytes of the secret.
    raise ConfigError(f"credentials file {credentials_file} {problem}")


def authenticated_url(url: str, creds: tuple[str, str] | None) -> str:
    """``url`` with percent-encoded ``user:password@`` userinfo (replacing any it had)."""
    if creds is None:
        return url
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        raise ConfigError(f"cannot add credentials to {redact_url(url)}: not a network URL")
    host = parts.netloc.rpartition("@")[2]
    username, password = creds
    userinfo = f"{quote(username, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{userinfo}@{host}"))


# Opening and reading ------------------------------------------------------------------------


class SourceError(Unavailable):
    """A camera or input cannot deliver video now. ``reason`` is a short machine word:
    ``timeout``, ``refused``, ``not-video``, ``unsupported-codec``, ``eof``, ``corrupt`` or
    ``error``. The message only ever contains a redacted URL."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _micros(seconds: float) -> str:
    return str(max(1, int(seconds * 1_000_000)))


def _options(kind: str, read_timeout_s: float) -> dict[str, str]:
    if kind == "rtsp":
        return {
            # UDP loses packets under load and needs open ports back to us.
            "rtsp_transport": "tcp",
            # Socket I/O timeout (µs): a camera that goes silent fails the read.
            "timeout": _micros(read_timeout_s),
            # Default probing waits 2–5 s for a camera; 0.5 s/64 KiB is enough to find one
            # H.264/H.265 stream whose parameters come from the SDP (FIELD-NOTES).
            "analyzeduration": "500000",
            "probesize": "65536",
        }
    if kind == "http":
        return {"rw_timeout": _micros(read_timeout_s), "timeout": _micros(read_timeout_s)}
    return {}


def _is_timeout(exc: BaseException) -> bool:
    # PyAV's interrupt callback surfaces an expired open/read timeout as ExitError.
    return isinstance(exc, av.error.ExitError | builtins.TimeoutError)


def _strerror(exc: BaseException) -> str:
    # str() of an FFmpeg error repeats the URL (with credentials); strerror is the bare text.
    text = getattr(exc, "strerror", None)
    return str(text) if text else type(exc).__name__


def _open_reason(exc: BaseException, kind: str, elapsed: float, open_timeout_s: float) -> str:
    if _is_timeout(exc):
        return "timeout"
    if isinstance(exc, builtins.ConnectionRefusedError):
        return "refused"
    if isinstance(exc, av.error.InvalidDataError):
        # FFmpeg's RTSP client reports an interrupted handshake as invalid data; only the
        # clock tells a silent camera from one that answers with garbage.
        if kind != "file" and elapsed >= 0.9 * open_timeout_s:
            return "timeout"
        return "not-video"
    if isinstance(exc, builtins.EOFError | builtins.ConnectionError):
        return "eof"
    return "error"


def _read_reason(exc: BaseException) -> str:
    if _is_timeout(exc):
        return "timeout"
    if isinstance(exc, builtins.EOFError | builtins.ConnectionError):
        return "eof"
    if isinstance(exc, av.error.InvalidDataError):
        return "corrupt"
    return "error"


def video_stream(container: av.container.InputContainer) -> av.video.stream.VideoStream:
    """The one video stream we record: the first H.264/H.265 video stream of ``container``.

    Raises SourceError ``not-video`` if there is no video stream and ``unsupported-codec``
    (naming the codecs found) if none is H.264/H.265.
    """
    streams = list(container.streams.video)
    where = redact_url(container.name)
    if not streams:
        raise SourceError("not-video", f"{where}: no video stream")
    for stream in streams:
        if stream.codec_context.name in SUPPORTED_CODECS:
            return stream
    found = ", ".join(sorted({s.codec_context.name for s in streams}))
    raise SourceError(
        "unsupported-codec",
        f"{where}: video codec {found} is not supported (need h264 or hevc)",
    )


def open_source(
    url: str,
    *,
    kind: str,
    open_timeout_s: float,
    read_timeout_s: float,
) -> av.container.InputContainer:
    """Open ``url`` (``kind`` rtsp, http or file) and check it carries recordable video.

    Raises SourceError (with ``reason``) on any failure; the container is closed first.
    """
    if kind not in SOURCE_KINDS:
        raise ConfigError(f"unknown source kind {kind!r}; expected one of {SOURCE_KINDS}")
    redacted = redact_url(url)
    timeout: Any = None
    if kind == "rtsp":
        # Reads are bounded by the socket timeout option; PyAV's own read timeout runs a
        # Python-level check on every FFmpeg I/O poll (~0.1% of a core per stream, P2 floor).
        timeout = (open_timeout_s, None)
    elif kind == "http":
        timeout = (open_timeout_s, read_timeout_s)
    started = time.monotonic()
    failure: SourceError | None = None
    try:
        container = av.open(url, "r", options=_options(kind, read_timeout_s), timeout=timeout)
    except (av.FFmpegError, OSError) as exc:
        elapsed = time.monotonic() - started
        reason = _open_reason(exc, kind, elapsed, open_timeout_s)
        message = _scrub(f"{kind} source {redacted}: {reason} ({_strerror(exc)})", url)
        log.warning("source open failed url=%s reason=%s elapsed_s=%.3f", redacted, reason, elapsed)
        failure = SourceError(reason, message)
    if failure is not None:
        # Raised outside the handler so FFmpeg's exception, whose text holds the full URL,
        # is not even attached as __context__ for a log formatter or error reporter to find.
        raise failure
    try:
        stream = video_stream(container)
    except SourceError as exc:
        container.close()
        log.warning("source rejected url=%s reason=%s", redacted, exc.reason)
        raise
    log.info(
        "source opened url=%s kind=%s codec=%s size=%dx%d elapsed_s=%.3f",
        redacted,
        kind,
        stream.codec_context.name,
        stream.codec_context.width,
        stream.codec_context.height,
        time.monotonic() - started,
    )
    return container


def read_packets(container: av.container.InputContainer) -> Iterator[av.Packet[Any]]:
    """Packets with data of the recorded video stream, in demux order.

    Ends at a clean end of input; a failure mid-stream raises SourceError with reason
    ``timeout``, ``eof``, ``corrupt`` or ``error``.
    """
    stream = video_stream(container)
    failure: SourceError | None = None
    try:
        for packet in container.demux(stream):
            if packet.size:  # skip the demuxer's empty end-of-stream flush packet
                yield packet
    except (av.FFmpegError, OSError) as exc:
        redacted = redact_url(container.name)
        reason = _read_reason(exc)
        message = _scrub(f"source {redacted}: {reason} ({_strerror(exc)})", container.name)
        log.warning("source read failed url=%s reason=%s", redacted, reason)
        failure = SourceError(reason, message)
    if failure is not None:
        raise failure  # outside the handler: see open_source
