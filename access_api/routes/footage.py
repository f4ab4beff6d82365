"""Footage: timeline metadata, thumbnails, clips and per-segment media — all through a grant.

Every call here follows the same order: resolve the camera within the caller's sites, decide
against the grant, write the decision to the ledger (durable), and only then read and send
bytes (I3). A ledger that cannot be written raises ``Unavailable`` before any byte leaves.
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Depends, Header, Query
from fastapi.responses import Response, StreamingResponse
from pydantic import AwareDatetime, BaseModel
from sqlmodel import Session
from starlette.background import BackgroundTask

from access_api.deps import ApiServices, Caller, CameraId, ObjectId, ServicesDep, requires
from access_api.grants import grant_facts, visible_camera
from access_api.policy import Action, Decision, FootageFacts, decide
from access_api.ranges import Unsatisfiable, parse_range
from vault.catalog import gaps_in_range, segments_in_range
from vault.errors import Forbidden, NotFound
from vault.lifecycle import open_segment_for_playback, read_thumbnail
from vault.media.playback import open_playback_clip
from vault.models import Camera, Grant, Segment, SegmentState
from vault.timerange import TimeRange

router = APIRouter(tags=["footage"])

Viewer = Annotated[Caller, Depends(requires(Action.FOOTAGE_VIEW))]
GrantQ = Annotated[UUID, Query(alias="grant", description="The grant this viewing uses")]
FromQ = Annotated[AwareDatetime, Query(alias="from", description="Range start, with offset")]
ToQ = Annotated[AwareDatetime, Query(alias="to", description="Range end (exclusive)")]

# Footage must never sit in a shared cache or be sniffed into something else.
_NO_STORE = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}


class SegmentOut(BaseModel):
    id: str
    start: datetime
    end: datetime
    bytes: int
    codec: str
    width: int
    height: int
    has_thumbnail: bool


class GapOut(BaseModel):
    start: datetime
    end: datetime
    reason: str


class TimelineOut(BaseModel):
    camera: str
    start: datetime
    end: datetime
    grant: str
    segments: list[SegmentOut]
    gaps: list[GapOut]


def _gate(
    services: ApiServices,
    session: Session,
    caller: Caller,
    *,
    camera_id: str,
    window: TimeRange,
    grant_id: UUID,
    action: str,
    target: str,
    whole_segment: bool = False,
    details: dict[str, Any] | None = None,
) -> tuple[Camera, Decision]:
    """Decide a footage call and make the decision durable; raise on refusal."""
    p = caller.principal
    info = {
        "grant": str(grant_id),
        "start": window.start.isoformat(),
        "end": window.end.isoformat(),
        **(details or {}),
    }
    try:
        camera = visible_camera(session, p, camera_id)
    except NotFound as exc:
        services.auditor.record(
            p, action, target, "refused", reason=f"not-found: {exc.message}",
            client=caller.client, details=info,
        )
        raise
    grant = session.get(Grant, str(grant_id))
    facts = FootageFacts(
        camera_id=camera.id,
        camera_site=camera.site_id,
        window=window,
        grant=grant_facts(grant) if grant else None,
        whole_segment=whole_segment,
    )
    decision = decide(p, Action.FOOTAGE_VIEW, facts, services.ctx.clock.now(), services.policy)
    purpose = grant.purpose if grant and grant.holder == p.name else ""
    services.auditor.decision(
        p, action, target, decision, purpose=purpose, client=caller.client, details=info
    )
    if not decision.allowed:
        raise Forbidden(decision.reason, decision.rule)
    return camera, decision


def _segment(
    services: ApiServices, session: Session, caller: Caller, segment_id: UUID, action: str
) -> Segment:
    segment = session.get(Segment, str(segment_id))
    if segment is None or segment.state != SegmentState.STORED:
        services.auditor.record(
            caller.principal, action, f"segment:{segment_id}", "refused",
            reason="not-found: no such stored segment", client=caller.client,
        )
        raise NotFound(f"no segment {segment_id}")
    return segment


@router.get("/cameras/{camera_id}/timeline", response_model=TimelineOut)
def timeline(
    camera_id: CameraId,
    start: FromQ,
    end: ToQ,
    grant: GrantQ,
    caller: Viewer,
    services: ServicesDep,
) -> TimelineOut:
    """Segments and gaps of one camera in ``[from, to)`` — metadata only, never footage."""
    window = TimeRange(start, end)
    with services.uow() as session:
        segments = segments_in_range(session, camera_id, window)
        gaps = gaps_in_range(session, camera_id, window)
        _gate(
            services, session, caller, camera_id=camera_id, window=window, grant_id=grant,
            action="footage.timeline", target=f"camera:{camera_id}",
            details={"segments": len(segments), "gaps": len(gaps)},
        )
    return TimelineOut(
        camera=camera_id,
        start=window.start,
        end=window.end,
        grant=str(grant),
        segments=[
            SegmentOut(
                id=s.id, start=s.start, end=s.end, bytes=s.bytes, codec=s.codec, width=s.width,
                height=s.height, has_thumbnail=s.thumb_key is not None,
            )
            for s in segments
        ],
        gaps=[GapOut(start=g.start, end=g.end, reason=g.reason) for g in gaps],
    )


@router.get(
    "/segments/{segment_id}/thumbnail",
    response_class=Response,
    responses={200: {"content": {"image/jpeg": {}}}},
)
def thumbnail(
    segment_id: ObjectId, grant: GrantQ, caller: Viewer, services: ServicesDep
) -> Response:
    """The segment's first-keyframe thumbnail (a derived JPEG)."""
    with services.uow() as session:
        segment = _segment(services, session, caller, segment_id, "footage.thumbnail")
        _gate(
            services, session, caller, camera_id=segment.camera_id,
            window=TimeRange(segment.start, segment.end), grant_id=grant,
            action="footage.thumbnail", target=f"segment:{segment.id}", whole_segment=True,
        )
    jpeg = read_thumbnail(services.ctx, segment)
    return Response(jpeg, media_type="image/jpeg", headers=_NO_STORE)


@router.get(
    "/segments/{segment_id}/media",
    response_class=Response,
    responses={200: {"content": {"video/mp4": {}}}, 206: {"content": {"video/mp4": {}}}},
)
def segment_media(
    segment_id: ObjectId,
    grant: GrantQ,
    caller: Viewer,
    services: ServicesDep,
    range_header: Annotated[str | None, Header(alias="Range")] = None,
) -> Response:
    """One native segment as MP4, with HTTP Range so that a player can seek."""
    with services.uow() as session:
        segment = _segment(services, session, caller, segment_id, "footage.segment")
        try:
            byte_range = parse_range(range_header, segment.bytes)
        except Unsatisfiable:
            byte_range = None
            unsatisfiable = True
        else:
            unsatisfiable = False
        _gate(
            services, session, caller, camera_id=segment.camera_id,
            window=TimeRange(segment.start, segment.end), grant_id=grant,
            action="footage.segment", target=f"segment:{segment.id}", whole_segment=True,
            details={"range": range_header or "", "sent": "none" if unsatisfiable else (
                f"{byte_range.start}-{byte_range.end}" if byte_range else "all")},
        )
    headers = {**_NO_STORE, "Accept-Ranges": "bytes"}
    if unsatisfiable:
        headers["Content-Range"] = f"bytes */{segment.bytes}"
        return Response(status_code=416, headers=headers)
    body = open_segment_for_playback(services.ctx, segment)
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
def clip(
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
    with services.uow() as session:
        segments = segments_in_range(session, camera_id, window)
        _gate(
            services, session, caller, camera_id=camera_id, window=window, grant_id=grant,
            action="footage.clip", target=f"camera:{camera_id}",
            details={"segments": [s.id for s in segments]},
        )
    clip = open_playback_clip(services.ctx, segments, window)
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
