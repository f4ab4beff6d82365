"""Playback of stored footage: the vault side of the access API's clip and segment media.

The API authorizes the request, writes its durable audit event (I3), then streams what these
functions return. Nothing here decides who may see what.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import partial

from vault.errors import InvalidInput
from vault.lifecycle import VaultContext, open_segment_for_playback
from vault.media.clip import Clip, ClipSource, open_clip
from vault.models import Segment
from vault.timerange import TimeRange

__all__ = ["clip_sources", "open_playback_clip"]


def clip_sources(ctx: VaultContext, segments: Sequence[Segment]) -> list[ClipSource]:
    """Clip inputs for catalog rows; each segment is fetched and decrypted only when reached."""
    return [
        ClipSource(
            segment_id=segment.id,
            start=segment.start,
            end=segment.end,
            codec=segment.codec,
            width=segment.width,
            height=segment.height,
            read=partial(open_segment_for_playback, ctx, segment),
        )
        for segment in segments
    ]


def open_playback_clip(ctx: VaultContext, segments: Sequence[Segment], window: TimeRange) -> Clip:
    """The clip of ``window`` from ``segments`` (one camera's rows, as ``segments_in_range``
    returns them). Raises what :func:`vault.media.clip.open_clip` and
    :func:`vault.lifecycle.open_segment_for_playback` raise, before any byte is produced for
    the first segment."""
    cameras = {segment.camera_id for segment in segments}
    if len(cameras) > 1:
        raise InvalidInput(f"a clip shows one camera, got {sorted(cameras)}")
    return open_clip(clip_sources(ctx, segments), window)
