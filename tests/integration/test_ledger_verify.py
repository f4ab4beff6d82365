"""Checkpoints and verification on real catalogs and stores: every tampering names its first seq."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from sqlalchemy import delete
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from tests.unit.test_ledger import T0, draft
from vault import ledger
from vault.checkpoints import (
    LEDGER_RETENTION,
    VerifyReport,
    checkpoint_key,
    verify,
    verify_checkpoint_file,
    write_checkpoint,
)
from vault.db import unit_of_work
from vault.errors import IntegrityError
from vault.models import AuditCheckpoint, AuditEvent
from vault.signing import SigningKey
from vault.store.base import ObjectStore
from vault.store.fs import FilesystemStore
from vault.timerange import FixedClock

TABLE = ledger._TABLE


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "keys" / "ledger.pem")


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def fill(engine: Engine, n: int, start: int = 0) -> None:
    with unit_of_work(engine) as session:
        for i in range(start, start + n):
            d = draft(i)
            ledger.append(session, at=d.at, actor=d.actor, role=d.role, action=d.action,
                          target=d.target, decision=d.decision, purpose=d.purpose,
                          reason=d.reason, client=d.client, details=d.details)


def read_rows(engine: Engine) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(row) for row in ledger.read_chain(conn)]


def replace_rows(engine: Engine, rows: list[dict[str, Any]]) -> None:
    """What a database administrator can do: rewrite the table at will."""
    with engine.begin() as conn:
        conn.execute(delete(TABLE))
        if rows:
            conn.execute(TABLE.insert(), rows)


def run_verify(engine: Engine, store: ObjectStore, key: SigningKey) -> VerifyReport:
    return verify(engine, store, [key.public])


def test_checkpoint_is_signed_locked_and_verifies(
    engine: Engine, store: ObjectStore, key: SigningKey, clock: FixedClock
) -> None:
    assert write_checkpoint(engine, store, key, clock) is None  # empty ledger
    fill(engine, 5)
    first = write_checkpoint(engine, store, key, clock)
    assert first is not None
    assert (first.seq, first.object_key) == (5, "ledger/checkpoints/000000000005.json")
    info = store.head(first.object_key)
    assert info is not None and info.retain_until == T0 + LEDGER_RETENTION
    # Verifiable with the public key alone: no database, no store client.
    statement = verify_checkpoint_file(store.get(first.object_key), key.public_pem())
    assert (statement.seq, statement.hash) == (5, read_rows(engine)[-1]["hash"])
    assert write_checkpoint(engine, store, key, clock) is None  # head already signed
    fill(engine, 2, start=5)
    clock.advance(timedelta(minutes=5))
    second = write_checkpoint(engine, store, key, clock)
    assert second is not None and second.seq == 7
    report = run_verify(engine, store, key)
    assert report.ok, report.problems
    assert (report.events, report.checkpoints, report.latest_checkpoint_seq) == (7, 2, 7)
    assert report.unanchored == 0 and report.first_bad_seq is None


def test_crash_between_object_and_row_adopts_the_object(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 3)
    written = write_checkpoint(engine, fs_store, key, clock)
    assert written is not None
    with engine.begin() as conn:
        conn.execute(delete(AuditCheckpoint))
    clock.advance(timedelta(minutes=1))
    again = write_checkpoint(engine, fs_store, key, clock)
    assert again is not None
    assert (again.seq, again.at, again.signature) == (written.seq, written.at, written.signature)
    assert run_verify(engine, fs_store, key).ok


def test_checkpoint_object_that_disagrees_with_the_chain_stops_checkpointing(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 3)
    assert write_checkpoint(engine, fs_store, key, clock) is not None
    rows = read_rows(engine)
    rows[2]["reason"] = "rewritten"
    rows[2]["hash"] = ledger._hash(rows[1]["hash"], rows[2])
    replace_rows(engine, rows)
    with engine.begin() as conn:
        conn.execute(delete(AuditCheckpoint))
    with pytest.raises(IntegrityError, match="chain says"):
        write_checkpoint(engine, fs_store, key, clock)


def test_deleted_tail_is_named_by_the_checkpoint(
    engine: Engine, store: ObjectStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 6)
    assert write_checkpoint(engine, store, key, clock) is not None
    replace_rows(engine, read_rows(engine)[:4])
    with Session(engine) as session:
        assert ledger.verify_chain(session) is None  # the chain alone cannot see it
    report = run_verify(engine, store, key)
    assert not report.ok
    assert report.first_bad_seq == 5
    assert [p.kind for p in report.problems] == ["truncated"]


def test_rewrite_with_recomputed_hashes_is_caught_at_the_first_disagreeing_checkpoint(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 4)
    assert write_checkpoint(engine, fs_store, key, clock) is not None
    fill(engine, 2, start=4)
    assert write_checkpoint(engine, fs_store, key, clock) is not None
    rows = read_rows(engine)
    rows[2]["decision"] = "refused"
    prev = rows[1]["hash"]
    for row in rows[2:]:  # a careful forger re-chains everything after the change
        row["prev_hash"] = prev
        row["hash"] = prev = ledger._hash(prev, row)
    replace_rows(engine, rows)
    report = run_verify(engine, fs_store, key)
    assert [(p.kind, p.seq) for p in report.problems] == [
        ("checkpoint-mismatch", 4),
        ("checkpoint-mismatch", 6),
    ]
    assert report.first_bad_seq == 4


def test_forged_event_that_links_correctly_is_named_by_its_successor(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey
) -> None:
    fill(engine, 5)
    rows = read_rows(engine)
    forged = {**rows[2], "actor": "mallory", "prev_hash": rows[1]["hash"]}
    forged["hash"] = ledger._hash(rows[1]["hash"], forged)
    tampered = rows[:2] + [forged] + [{**r, "seq": r["seq"] + 1} for r in rows[2:]]
    replace_rows(engine, tampered)
    report = run_verify(engine, fs_store, key)
    # Event 3 is self-consistent; the first event the chain can prove wrong is the next one.
    assert (report.first_bad_seq, report.problems[0].kind) == (4, "link")


def test_tampered_checkpoint_object_fails_its_signature(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 3)
    written = write_checkpoint(engine, fs_store, key, clock)
    assert written is not None
    # Someone with the disk, not the store API (which refuses to replace a locked object).
    path = fs_store.root / "objects" / written.object_key
    document = json.loads(path.read_bytes())
    document["statement"]["seq"] = 2
    path.write_text(json.dumps(document))
    report = run_verify(engine, fs_store, key)
    assert not report.ok
    assert [p.kind for p in report.problems] == ["checkpoint-signature"]
    assert report.first_bad_seq is None


def test_checkpoint_signed_by_an_untrusted_key_is_reported(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock, tmp_path: Path
) -> None:
    fill(engine, 2)
    assert write_checkpoint(engine, fs_store, key, clock) is not None
    other = SigningKey.load_or_create(tmp_path / "other.pem")
    report = verify(engine, fs_store, [other.public])
    assert [p.kind for p in report.problems] == ["checkpoint-unknown-key"]


def test_checkpoint_row_whose_object_vanished_is_reported(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 2)
    written = write_checkpoint(engine, fs_store, key, clock)
    assert written is not None
    (fs_store.root / "objects" / written.object_key).unlink()
    report = run_verify(engine, fs_store, key)
    assert [p.kind for p in report.problems] == ["checkpoint-object-missing"]


def test_locked_checkpoint_cannot_be_replaced_through_the_store(
    engine: Engine, fs_store: FilesystemStore, key: SigningKey, clock: FixedClock
) -> None:
    fill(engine, 2)
    written = write_checkpoint(engine, fs_store, key, clock)
    assert written is not None
    assert fs_store.delete_many([written.object_key])[0].key == written.object_key
    assert checkpoint_key(2) == written.object_key


# -- property: any tampering is named at its first seq ------------------------------------------

FIELDS = ["actor", "role", "action", "target", "purpose", "decision", "reason", "client",
          "details", "at", "prev_hash", "hash"]

index = st.integers(min_value=0, max_value=40)
tamperings = st.lists(
    st.one_of(
        st.tuples(st.just("change"), index, st.sampled_from(FIELDS)),
        st.tuples(st.just("delete"), index),
        st.tuples(st.just("delete_shift"), index),
        st.tuples(st.just("insert_shift"), index),
        st.tuples(st.just("swap"), index, index),
        st.tuples(st.just("truncate"), st.integers(min_value=1, max_value=3)),
    ),
    min_size=1,
    max_size=3,
)


def _changed(row: dict[str, Any], name: str) -> dict[str, Any]:
    value = row[name]
    if name == "at":
        return {**row, "at": value + timedelta(seconds=1)}
    if name == "details":
        return {**row, "details": json.dumps({**json.loads(value), "forged": True})}
    if name in ("prev_hash", "hash"):
        return {**row, name: ("1" if value[0] != "1" else "2") + value[1:]}
    return {**row, name: value[:15] + "!"}


def tamper(rows: list[dict[str, Any]], op: tuple[Any, ...]) -> list[dict[str, Any]]:
    """Apply one naive tampering (hashes left as they are) to rows ordered by seq."""
    rows = [dict(r) for r in rows]
    kind = op[0]
    if kind == "truncate":
        return rows[: max(0, len(rows) - op[1])]
    if kind == "insert_shift":
        k = op[1] % (len(rows) + 1)
        seq = rows[k - 1]["seq"] + 1 if k else 1
        template = rows[k % len(rows)] if rows else dict(_TEMPLATE)
        forged = {**template, "seq": seq, "actor": "mallory",
                  "prev_hash": rows[k - 1]["hash"] if k else ledger.GENESIS, "hash": "0" * 64}
        return rows[:k] + [forged] + [{**r, "seq": r["seq"] + 1} for r in rows[k:]]
    if not rows:
        return rows
    k = op[1] % len(rows)
    if kind == "change":
        rows[k] = _changed(rows[k], op[2])
    elif kind == "delete":
        del rows[k]
    elif kind == "delete_shift":
        rows = rows[:k] + [{**r, "seq": r["seq"] - 1} for r in rows[k + 1 :]]
    elif kind == "swap":
        j = op[2] % len(rows)
        rows[k], rows[j] = {**rows[j], "seq": rows[k]["seq"]}, {**rows[k], "seq": rows[j]["seq"]}
    return rows


_TEMPLATE = ledger._chain_rows(None, [draft(0)])[0]


def first_difference(original: list[dict[str, Any]], tampered: list[dict[str, Any]]) -> int | None:
    """The oracle: the first seq whose stored event (or its absence) is not the original's."""

    def meaning(row: dict[str, Any] | None) -> dict[str, Any] | None:
        return None if row is None else {**row, "details": json.loads(row["details"])}

    before = {r["seq"]: r for r in original}
    after = {r["seq"]: r for r in tampered}
    last_stored = max([*after, 0])
    for seq in range(1, max([*before, *after, 0]) + 1):
        if seq not in after and seq < last_stored:
            return seq  # a hole before a stored event: the chain breaks here
        if meaning(before.get(seq)) != meaning(after.get(seq)):
            return seq
    return None


@settings(
    max_examples=60,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(n=st.integers(min_value=1, max_value=8), ops=tamperings)
def test_verify_names_the_first_tampered_seq(
    engine: Engine, key: SigningKey, tmp_path: Path, n: int, ops: list[tuple[Any, ...]]
) -> None:
    with engine.begin() as conn:
        conn.execute(delete(TABLE))
        conn.execute(delete(AuditCheckpoint))
    store = FilesystemStore(tmp_path / f"store-{uuid.uuid4().hex}")
    fill(engine, n)
    # A checkpoint of the untouched head: the anchor that makes a deleted tail visible.
    assert write_checkpoint(engine, store, key, FixedClock(T0)) is not None
    original = read_rows(engine)
    tampered = original
    for op in ops:
        tampered = tamper(tampered, op)
    replace_rows(engine, tampered)
    expected = first_difference(original, tampered)
    report = run_verify(engine, store, key)
    event(report.problems[0].kind if report.problems else "no change")
    assert report.first_bad_seq == expected, report.problems
    assert report.ok == (expected is None)
    with Session(engine) as session:
        seqs = list(session.exec(select(AuditEvent.seq).order_by(col(AuditEvent.seq))))
    assert seqs == [r["seq"] for r in tampered]
