# One command for people and CI. Each target creates/uses .venv by itself.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed
PG_URL  ?= postgresql+psycopg://postgres@127.0.0.1:5432/test

.PHONY: demo test check bench peers clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

# Debian packages the real-peer tests and benchmarks need (ffprobe, gst-rtsp-server).
peers:
	bash scripts/ensure-peers.sh

demo: $(STAMP)
	CCTV_DATA_DIR=$${CCTV_DATA_DIR:-var/demo} CCTV_DEMO=true $(BIN)/cctv-vault up --config cctv_vault/demo.toml

test: $(STAMP) peers
	CCTV_TEST_DATABASE_URL=$${CCTV_TEST_DATABASE_URL:-$(PG_URL)} $(BIN)/pytest

check: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP) peers
	$(BIN)/python -m bench.p1_ingest_cpu
	$(BIN)/python -m bench.p2_live_streams
	$(BIN)/python -m bench.p2_receive_floor
	CCTV_BENCH_DATABASE_URL=$${CCTV_BENCH_DATABASE_URL:-$(PG_URL)} $(BIN)/python -m bench.p3_ledger_appends
	CCTV_BENCH_DATABASE_URL=$${CCTV_BENCH_DATABASE_URL:-$(PG_URL)} $(BIN)/python -m bench.p3_access_decisions
	CCTV_BENCH_DATABASE_URL=$${CCTV_BENCH_DATABASE_URL:-$(PG_URL)} $(BIN)/python -m bench.p4_timeline
	CCTV_BENCH_DATABASE_URL=$${CCTV_BENCH_DATABASE_URL:-$(PG_URL)} $(BIN)/python -m bench.p4_gap_history
	$(BIN)/python -m bench.p5_purge
	$(BIN)/python -m bench.p6_playback_ttfb

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
