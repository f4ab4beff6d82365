"""Media derived from native segments without re-encoding them (I1): playback clips."""

from vault.media.clip import Clip, ClipSource, open_clip
from vault.media.playback import clip_sources, open_playback_clip

__all__ = ["Clip", "ClipSource", "clip_sources", "open_clip", "open_playback_clip"]
