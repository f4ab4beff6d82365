#!/usr/bin/env bash
# Installs and starts the real peers the tests talk to. Fails loudly under CI=true.
set -euo pipefail

need_apt=()
command -v ffprobe >/dev/null || need_apt+=(ffmpeg)
# Chromium judges that clips play in a real browser (Media Source Extensions, ranged <video>).
command -v chromium >/dev/null || need_apt+=(chromium)
# wrk drives the access API in the P3 benchmark (make bench).
command -v wrk >/dev/null || need_apt+=(wrk)
/usr/bin/python3 -c 'import gi; gi.require_version("GstRtspServer", "1.0"); from gi.repository import GstRtspServer' \
  >/dev/null 2>&1 || need_apt+=(python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-base
  gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-rtsp)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "ensure-peers: installing ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

# PostgreSQL: this machine kind starts it; start it again if it stopped.
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if command -v pg_ctlcluster >/dev/null; then
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start || true
  fi
fi
if ! pg_isready -q -h 127.0.0.1 -p 5432 2>/dev/null; then
  if [ "${CI:-}" = "true" ]; then
    echo "ensure-peers: PostgreSQL at 127.0.0.1:5432 is required in CI and is not running" >&2
    exit 1
  fi
  echo "ensure-peers: PostgreSQL not reachable; PostgreSQL tests will be skipped (not in CI)" >&2
fi
command -v ffprobe >/dev/null || { echo "ensure-peers: ffprobe missing" >&2; exit 1; }
command -v chromium >/dev/null || { echo "ensure-peers: chromium missing" >&2; exit 1; }
echo "ensure-peers: ffprobe, chromium, gst-rtsp-server and PostgreSQL ready"
