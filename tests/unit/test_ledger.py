"""The ledger's pure core: canonical form, drafts, the chain walk, checkpoint documents."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from vault.checkpoints import (
    CheckpointDocument,
    CheckpointStatement,
    compare_checkpoints,
    parse_checkpoint,
    verify_checkpoint_file,
)
from vault.errors import IntegrityError, InvalidInput
from vault.ledger import (
    FIELD_LIMITS,
    GENESIS,
    EventDraft,
    NullLedger,
    _chain_rows,
    canonical,
    walk_chain,
)
from vault.signing import SigningKey

T0 = datetime(2026, 11, 29, 1, 0, tzinfo=UTC)


def draft(i: int = 0, **overrides: Any) -> EventDraft:
    fields: dict[str, Any] = {
        "at": T0 + timedelta(seconds=i),
        "actor": "alice",
        "role": "operator",
        "action": "footage.view",
        "target": f"camera:cam-{i}",
        "decision": "allowed",
        "purpose": "security_review",
        "reason": "incident 42",
        "client": "10.0.0.1",
        "details": {"i": i},
    }
    fields.update(overrides)
    return EventDraft(**fields)


def chain(n: int) -> list[dict[str, Any]]:
    return _chain_rows(None, [draft(i) for i in range(n)])


def test_canonical_is_sorted_compact_utf8() -> None:
    assert canonical({"b": 1, "a": "é"}) == '{"a":"é","b":1}'.encode()


def test_first_event_chains_from_genesis_and_each_links_to_the_previous() -> None:
    rows = chain(3)
    assert [r["seq"] for r in rows] == [1, 2, 3]
    assert rows[0]["prev_hash"] == GENESIS
    assert rows[1]["prev_hash"] == rows[0]["hash"]
    assert rows[2]["prev_hash"] == rows[1]["hash"]
    assert walk_chain(rows).fault is None


def test_chain_rows_continue_from_a_head() -> None:
    first = chain(2)
    more = _chain_rows((2, first[-1]["hash"]), [draft(5)])
    assert more[0]["seq"] == 3
    assert walk_chain(first + more).fault is None


def test_draft_time_is_normalised_to_utc_and_naive_time_refused() -> None:
    jst = timezone(timedelta(hours=9))
    assert draft(at=datetime(2026, 11, 29, 10, 0, tzinfo=jst)).at == T0
    with pytest.raises(InvalidInput, match="timezone"):
        draft(at=datetime(2026, 11, 29, 1, 0))


@pytest.mark.parametrize("name", sorted(FIELD_LIMITS))
def test_draft_refuses_fields_wider_than_their_column(name: str) -> None:
    draft(**{name: "x" * FIELD_LIMITS[name]})
    with pytest.raises(InvalidInput, match=name):
        draft(**{name: "x" * (FIELD_LIMITS[name] + 1)})


def test_draft_refuses_nul_and_non_json_details() -> None:
    with pytest.raises(InvalidInput, match="NUL"):
        draft(reason="a\x00b")
    with pytest.raises(InvalidInput, match="NUL"):
        draft(details={"k": "a\x00b"})
    with pytest.raises(InvalidInput, match="JSON"):
        draft(details={(1, 2): "tuple keys are not JSON"})


def test_draft_freezes_details_at_construction() -> None:
    details: dict[str, Any] = {"camera": "cam-a", "when": T0}
    d = draft(details=details)
    details["camera"] = "cam-b"
    assert json.loads(d.columns()["details"]) == {"camera": "cam-a", "when": str(T0)}


# -- the walk names the first bad seq ------------------------------------------------------------


def test_walk_of_empty_chain() -> None:
    walk = walk_chain([])
    assert walk.fault is None and walk.events == 0 and walk.head_seq is None


@pytest.mark.parametrize(
    ("tamper", "first_bad", "kind"),
    [
        (lambda rows: rows[2].update(reason="rewritten"), 3, "altered"),
        (lambda rows: rows[2].update(at=rows[2]["at"] + timedelta(microseconds=1)), 3, "altered"),
        (lambda rows: rows[2].update(details='{"i": 99}'), 3, "altered"),
        (lambda rows: rows[2].update(details="not json"), 3, "altered"),
        (lambda rows: rows[2].update(hash="f" * 64), 3, "altered"),
        (lambda rows: rows[2].update(prev_hash="e" * 64), 3, "link"),
        (lambda rows: rows[0].update(prev_hash="e" * 64), 1, "link"),
        (lambda rows: rows.pop(1), 2, "missing"),
        (lambda rows: rows.pop(0), 1, "missing"),
        (lambda rows: rows.insert(0, {**rows[0], "seq": 0}), 0, "unexpected"),
    ],
)
def test_walk_names_the_first_bad_seq(tamper: Any, first_bad: int, kind: str) -> None:
    rows = chain(5)
    tamper(rows)
    fault = walk_chain(rows).fault
    assert fault is not None
    assert (fault.seq, fault.kind) == (first_bad, kind)


def test_walk_whitespace_in_details_is_not_a_change() -> None:
    rows = chain(3)
    rows[1]["details"] = '{ "i" : 1 }'
    assert walk_chain(rows).fault is None


def test_walk_after_a_fault_still_reports_head_and_wanted_hashes() -> None:
    rows = chain(6)
    rows[1]["reason"] = "rewritten"
    walk = walk_chain(rows, want=[4, 9])
    assert walk.fault is not None and walk.fault.seq == 2
    assert walk.head_seq == 6 and walk.events == 6
    assert walk.hashes == {4: rows[3]["hash"]}


# -- checkpoints ---------------------------------------------------------------------------------


@pytest.fixture
def key(tmp_path: Path) -> SigningKey:
    return SigningKey.load_or_create(tmp_path / "ledger.pem")


def signed(key: SigningKey, seq: int = 7, digest: str = "a" * 64) -> bytes:
    statement = CheckpointStatement(seq, digest, T0, key.key_id)
    return CheckpointDocument(
        statement, key.sign(statement.message()), key.public_pem().decode()
    ).to_bytes()


def test_checkpoint_file_verifies_with_the_public_key_alone(key: SigningKey) -> None:
    statement = verify_checkpoint_file(signed(key), key.public_pem())
    assert (statement.seq, statement.hash, statement.at, statement.key_id) == (
        7,
        "a" * 64,
        T0,
        key.key_id,
    )


def test_checkpoint_file_with_another_key_is_refused(key: SigningKey, tmp_path: Path) -> None:
    other = SigningKey.load_or_create(tmp_path / "other.pem")
    with pytest.raises(IntegrityError, match="names key"):
        verify_checkpoint_file(signed(key), other.public_pem())
    # Swapping in the forger's key id and embedded PEM does not help without the trusted key.
    forged = json.loads(signed(other))
    with pytest.raises(IntegrityError):
        verify_checkpoint_file(json.dumps(forged).encode(), key.public_pem())


@pytest.mark.parametrize(
    "edit",
    [
        lambda d: d["statement"].update(seq=8),
        lambda d: d["statement"].update(hash="b" * 64),
        lambda d: d["statement"].update(at="2026-11-29T01:00:00.000001+00:00"),
        lambda d: d.update(signature=d["signature"][:-2] + "AA"),
    ],
)
def test_tampered_checkpoint_file_fails_its_signature(key: SigningKey, edit: Any) -> None:
    document = json.loads(signed(key))
    edit(document)
    with pytest.raises(IntegrityError, match="signature"):
        verify_checkpoint_file(json.dumps(document).encode(), key.public_pem())


@pytest.mark.parametrize(
    "data",
    [
        b"not json",
        b"[]",
        b'{"format": "other"}',
        # Same instant, another spelling: would sign different bytes, so it is refused.
        None,
    ],
)
def test_malformed_checkpoint_is_an_integrity_error(key: SigningKey, data: bytes | None) -> None:
    if data is None:
        document = json.loads(signed(key))
        document["statement"]["at"] = "2026-11-29T01:00:00Z"
        data = json.dumps(document).encode()
    with pytest.raises(IntegrityError, match="malformed"):
        parse_checkpoint(data)


def test_checkpoints_compared_with_the_chain() -> None:
    rows = chain(5)
    walk = walk_chain(rows[:3], want=[2, 3, 5])

    def at(seq: int, digest: str) -> CheckpointStatement:
        return CheckpointStatement(seq, digest, T0, "ed25519:x")

    assert compare_checkpoints(walk, [at(3, rows[2]["hash"])]) == []
    beyond = compare_checkpoints(walk, [at(5, rows[4]["hash"])])
    assert [(p.kind, p.seq) for p in beyond] == [("truncated", 4)]
    rewritten = compare_checkpoints(walk, [at(2, "c" * 64)])
    assert [(p.kind, p.seq) for p in rewritten] == [("checkpoint-mismatch", 2)]


def test_null_ledger_counts_and_writes_nothing() -> None:
    sink = NullLedger()
    assert [sink.write(draft(i)) for i in range(3)] == [1, 2, 3]
    assert sink.write_many([draft(), draft()]) == [4, 5]


def test_null_ledger_with_a_delay_suspends_the_caller_first() -> None:
    async def scenario() -> tuple[bool, list[int]]:
        sink = NullLedger(delay_s=0.001)
        write = asyncio.ensure_future(sink.write_async(draft()))
        await asyncio.sleep(0)  # one turn of the loop: the write has started
        suspended = not write.done()
        return suspended, [await write, await sink.write_async(draft())]

    suspended, seqs = asyncio.run(scenario())
    assert suspended
    assert seqs == [1, 2]
    assert NullLedger().write_many([draft()]) == [1]  # without a delay: nothing to wait for
