"""Footage: timeline metadata, thumbnails, clips and per-segment media — all through a grant.

Every call here follows the same order: resolve the camera within the caller's sites, decide
against the grant, write the decision to the ledger (durable), and only then read and send
bytes (I3). A ledger that cannot be written raises ``Unavailable`` before any byte leaves.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import AwareDatetime, BaseModel
from sqlalchemy.engine import Connection
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool

from access_api.deps import ApiServices, Caller, CameraId, ObjectId, ServicesDep, requires
from access_api.grants import camera_site_and_grant
from access_api.policy import Action, Decision, FootageFacts, GrantFacts, decide
from access_api.ranges import Unsatisfiable, parse_range
from vault.catalog import TimelineGap, TimelineSegment, segments_in_range
from vault.catalog import timeline as catalog_timeline
from vault.errors import Forbidden, NotFound
from vault.lifecycle import open_segment_for_playback, read_thumbnail
from vault.media.playback import open_playback_clip
from vault.models import Segment, SegmentState
from vault.timerange import TimeRange

router = APIRouter(tags=["footage"])

Viewer = Annotated[Caller, Depends(requires(Action.FOOTAGE_VIEW))]
GrantQ = Annotated[UUID, Query(alias="grant", description="The grant this viewing uses")]
FromQ = Annotated[AwareDatetime, Query(alias="from", description="Range start, with offset")]
ToQ = Annotated[AwareDatetime, Query(alias="to", description="Range end (exclusive)")]

# Footage must never sit in a shared cache or be sniffed into something else.
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class TimelineOut(BaseModel):
    """A camera's timeline. Its segments and gaps are the catalog's own light records
    (metadata only): the route serialises them in one pass, without a model per segment."""

    camera: str
    start: datetime
    end: datetime
    grant: str
    segments: list[TimelineSegment]
    gaps: list[TimelineGap]


@dataclass(frozen=True, slots=True)
class _Scope:
    """What a footage decision needs from the catalog, read inside the request's unit of work.

    The decision and its durable ledger event come after that unit of work has closed, so no
    catalog connection is held while the ledger commits (a pool of connections each waiting on
    a group commit would cap the whole API at pool size / commit latency).
    """

    camera_id: str
    camera_site: str | None  # None: no such camera within the caller's sites (I4)
    grant_id: str  # as asked for
    grant: GrantFacts | None  # None: no such grant


def _read_scope(conn: Connection, caller: Caller, camera_id: str, grant_id: UUID) -> _Scope:
    site, grant = camera_site_and_grant(conn, camera_id, str(grant_id))
    if site is not None and not caller.principal.covers_site(site):
        site = None  # another site's camera does not exist for this caller (I4)
    return _Scope(camera_id, site, str(grant_id), grant)


async def _gate(
    services: ApiServices,
    caller: Caller,
    scope: _Scope,
    *,
    window: TimeRange,
    action: str,
    target: str,
    whole_segment: bool = False,
    details: dict[str, Any] | None = None,
    before_send: bool = False,
) -> Decision:
    """Decide a footage call and make the decision durable; raise on refusal.

    ``before_send``: durable before the response leaves rather than before this returns
    (``Auditor.adecision(before_send=True)``), for answers built from the catalog alone.
    """
    p = caller.principal
    grant = scope.grant
    info = {
        "grant": scope.grant_id,
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        **(details or {}),
    }
    if scope.camera_site is None:
        message = f"no camera {scope.camera_id!r}"
        await services.auditor.arecord(
            p, action, target, "refused", reason=f"not-found: {message}",
            client=caller.client, details=info,
        )
        raise NotFound(message)
    facts = FootageFacts(
        camera_id=scope.camera_id,
        camera_site=scope.camera_site,
        window=window,
        grant=grant,
        whole_segment=whole_segment,
    )
    decision = decide(p, Action.FOOTAGE_VIEW, facts, services.ctx.clock.now(), services.policy)
    purpose = grant.purpose if grant and grant.holder == p.name else ""
    await services.auditor.adecision(
        p, action, target, decision, purpose=purpose, client=caller.client, details=info,
        before_send=before_send,
    )
    if not decision.allowed:
        raise Forbidden(decision.reason, decision.rule)
    return decision


def _read_segment(
    services: ApiServices, caller: Caller, segment_id: UUID, grant_id: UUID
) -> tuple[Segment | None, _Scope | None]:
    """The stored segment and its decision scope (None, None: no such stored segment)."""
    with services.uow() as session:
        segment = session.get(Segment, str(segment_id))
        if segment is None or segment.state != SegmentState.STORED:
            return None, None
        return segment, _read_scope(session.connection(), caller, segment.camera_id, grant_id)


async def _no_segment(
    services: ApiServices, caller: Caller, segment_id: UUID, action: str
) -> NotFound:
    await services.auditor.arecord(
        caller.principal, action, f"segment:{segment_id}", "refused",
        reason="not-found: no such stored segment", client=caller.client,
    )
    return NotFound(f"no segment {segment_id}")


@router.get("/cameras/{camera_id}/timeline", response_model=TimelineOut, response_class=Response)
async def timeline(
    camera_id: CameraId,
    start: FromQ,
    end: ToQ,
    grant: GrantQ,
    caller: Viewer,
    services: ServicesDep,
) -> Response:
    """Segments and gaps of one camera in ``[from, to)`` — metadata only, never footage."""
    window = TimeRange(start, end)

    def read(conn: Connection) -> tuple[list[TimelineSegment], list[TimelineGap], _Scope]:
        segments, gaps = catalog_timeline(conn, camera_id, window)
        return segments, gaps, _read_scope(conn, caller, camera_id, grant)

    segments, gaps, scope = await services.read(read)
    await _gate(
        services, caller, scope, window=window, action="footage.timeline",
        target=f"camera:{camera_id}", details={"segments": len(segments), "gaps": len(gaps)},
        before_send=True,
    )
    body = TimelineOut.model_construct(
        camera=camera_id, start=window.start, end=window.end, grant=str(grant),
        segments=segments, gaps=gaps,
    )
    return Response(body.model_dump_json(), media_type="application/json")


@router.get(
    "/segments/{segment_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
async def thumbnail(
    segment_id: ObjectId, grant: GrantQ, caller: Viewer, services: ServicesDep
) -> Response:
    """The segment's first-keyframe thumbnail (a derived JPEG)."""
    segment, scope = await run_in_threadpool(_read_segment, services, caller, segment_id, grant)
    if segment is None or scope is None:
        raise await _no_segment(services, caller, segment_id, "footage.thumbnail")
    await _gate(
        services, caller, scope, window=TimeRange(segment.start, segment.end),
        action="footage.thumbnail", target=f"segment:{segment.id}", whole_segment=True,
    )
    jpeg = await run_in_threadpool(read_thumbnail, services.ctx, segment)
    return Response(jpeg, media_type="image/jpeg", headers=_NO_STORE)


@router.get(
    "/segments/{segment_id}/media",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}, 206: {"content": {"video/mp4": {}}}},
)
async def segment_media(
    segment_id: ObjectId,
    grant: GrantQ,
    caller: Viewer,
    services: ServicesDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """One native segment as MP4, with HTTP Range so that a player can seek."""
    segment, scope = await run_in_threadpool(_read_segment, services, caller, segment_id, grant)
    if segment is None or scope is None:
        raise await _no_segment(services, caller, segment_id, "footage.segment")
    try:
        byte_range = parse_range(range_header, segment.bytes)
    except Unsatisfiable:
        byte_range = None
        unsatisfiable = True
    else:
        unsatisfiable = False
    await _gate(
        services, caller, scope, window=TimeRange(segment.start, segment.end),
        action="footage.segment", target=f"segment:{segment.id}", whole_segment=True,
        details={"range": range_header or "", "sent": "none" if unsatisfiable else (
            f"{byte_range.start}-{byte_range.end}" if byte_range else "all")},
    )
    headers = {**_NO_STORE, "Accept-Ranges": "bytes"}
    if unsatisfiable:
        headers["Content-Range"] = f"bytes */{segment.bytes}"
        return Response(status_code=416, headers=headers)
    body = await run_in_threadpool(open_segment_for_playback, services.ctx, segment)
    if byte_range is None:
        return Response(body, media_type="video/mp4", headers=headers)
    headers["Content-Range"] = byte_range.content_range(len(body))
    return Response(
        body[byte_range.start : byte_range.end + 1],
        status_code=206,
        media_type="video/mp4",
        headers=headers,
    )


@router.get(
    "/cameras/{camera_id}/clip",
    response_class=StreamingResponse,
    responses={200: {"content": {"video/mp4": {}}}},
)
async def clip(
    camera_id: CameraId,
    start: FromQ,
    end: ToQ,
    grant: GrantQ,
    caller: Viewer,
    services: ServicesDep,
) -> StreamingResponse:
    """A clip of one camera for ``[from, to)``: fragmented MP4 remuxed from the native
    segments (no transcode), starting at the keyframe at or before ``from``."""
    window = TimeRange(start, end)

    def read() -> tuple[list[Segment], _Scope]:
        with services.uow() as session:
            segments = segments_in_range(session, camera_id, window)
            return segments, _read_scope(session.connection(), caller, camera_id, grant)

    segments, scope = await run_in_threadpool(read)
    await _gate(
        services, caller, scope, window=window, action="footage.clip",
        target=f"camera:{camera_id}", details={"segments": [s.id for s in segments]},
    )
    clip = await run_in_threadpool(open_playback_clip, services.ctx, segments, window)
    headers = {
        **_NO_STORE,
        # Media time 0 is this wall instant; gaps keep running media time (see playback.md).
        "X-Clip-Start": clip.start.isoformat(),
        "X-Clip-End": clip.end.isoformat(),
        "X-Clip-Gaps": ",".join(f"{g.start.isoformat()}/{g.end.isoformat()}" for g in clip.gaps),
    }
    return StreamingResponse(
        iter(clip), media_type=clip.content_type, headers=headers,
        background=BackgroundTask(clip.close),
    )
