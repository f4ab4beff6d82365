"""Signed ledger checkpoints and full ledger verification (DESIGN §8; docs/design/ledger.md).

A checkpoint is an Ed25519-signed statement ``{seq, hash, at, key_id}`` about the chain head,
put in the object store under ``ledger/checkpoints/{seq:012d}.json`` with a retention lock. The
database can be rewritten by whoever administers it; a locked object signed by a key the
database never sees cannot, so a checkpoint anchors every event up to its ``seq``.

Invariants:

- C1. A checkpoint object is written (locked) before its catalog row; a row always has an
  object, an object may lack a row (a crash in between; the next run adopts the object).
- C2. One object per seq: an existing object is adopted, never replaced, and it must agree with
  the chain, or writing stops with :class:`IntegrityError`.
- C3. Verification lists the checkpoint objects *before* it reads the chain, so every listed
  checkpoint was made from a head the chain read can see: a checkpoint beyond the head read is
  a deleted tail, not a race.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from sqlalchemy import exc as sa_exc
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from vault.db import unit_of_work
from vault.errors import Conflict, IntegrityError, InvalidInput, Unavailable, VaultError
from vault.ledger import ChainWalk, canonical, read_chain, walk_chain
from vault.models import AuditCheckpoint, AuditEvent
from vault.signing import SigningKey, load_public_key, public_key_id, verify_signature
from vault.store.base import ObjectStore
from vault.timerange import Clock, as_utc, parse_instant

__all__ = [
    "CHECKPOINT_FORMAT",
    "CHECKPOINT_PREFIX",
    "LEDGER_RETENTION",
    "CheckpointDocument",
    "CheckpointStatement",
    "Problem",
    "VerifyReport",
    "checkpoint_key",
    "compare_checkpoints",
    "parse_checkpoint",
    "verify",
    "verify_checkpoint_file",
    "write_checkpoint",
]

log = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "ledger/checkpoints/"
CHECKPOINT_FORMAT = "cctv-vault/ledger-checkpoint/v1"
# PCI DSS 10.5.1 asks for 12 months of audit history; 400 days leaves margin for the checkpoint
# that anchors the oldest event still inside the twelve months.
LEDGER_RETENTION = timedelta(days=400)

_HASH = re.compile(r"[0-9a-f]{64}")
_KEY_NAME = re.compile(re.escape(CHECKPOINT_PREFIX) + r"(\d{12})\.json")


def checkpoint_key(seq: int) -> str:
    return f"{CHECKPOINT_PREFIX}{seq:012d}.json"


@dataclass(frozen=True, slots=True)
class CheckpointStatement:
    """What a checkpoint asserts: the chain's event ``seq`` has hash ``hash``, as of ``at``."""

    seq: int
    hash: str
    at: datetime
    key_id: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "hash": self.hash,
            "at": as_utc(self.at).isoformat(timespec="microseconds"),
            "key_id": self.key_id,
        }

    def message(self) -> bytes:
        """The signed bytes: canonical JSON of the statement."""
        return canonical(self.to_dict())


@dataclass(frozen=True, slots=True)
class CheckpointDocument:
    """A checkpoint object as stored: the statement, its signature, and the signer's public key.

    The embedded public key is a convenience for finding the right key; trust comes only from
    the key the verifier brings (:func:`verify_checkpoint_file`).
    """

    statement: CheckpointStatement
    signature: str
    public_pem: str

    def to_bytes(self) -> bytes:
        document = {
            "format": CHECKPOINT_FORMAT,
            "alg": "Ed25519",
            "statement": self.statement.to_dict(),
            "signature": self.signature,
            "key_id": self.statement.key_id,
            "public_key_pem": self.public_pem,
        }
        return json.dumps(document, sort_keys=True, indent=2).encode() + b"\n"


def parse_checkpoint(data: bytes) -> CheckpointDocument:
    """Parse a checkpoint object strictly; :class:`IntegrityError` if it is not one.

    Parsing checks the form only; the signature is checked by :func:`verify_checkpoint_file`.
    """
    try:
        document = json.loads(data)
        if not isinstance(document, dict) or document.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"not a {CHECKPOINT_FORMAT} document")
        raw = document["statement"]
        if not isinstance(raw, dict) or set(raw) != {"seq", "hash", "at", "key_id"}:
            raise ValueError("statement must have exactly seq, hash, at, key_id")
        seq, digest, at, key_id = raw["seq"], raw["hash"], raw["at"], raw["key_id"]
        if not isinstance(seq, int) or isinstance(seq, bool) or seq < 1:
            raise ValueError("seq must be a positive integer")
        if not isinstance(digest, str) or not _HASH.fullmatch(digest):
            raise ValueError("hash must be 64 lower-case hex digits")
        if not isinstance(at, str) or not isinstance(key_id, str):
            raise ValueError("at and key_id must be strings")
        statement = CheckpointStatement(seq, digest, parse_instant(at, field="at"), key_id)
        if statement.to_dict() != raw:
            # A different spelling of the same instant would sign different bytes.
            raise ValueError("statement is not in canonical form")
        signature, pem = document["signature"], document["public_key_pem"]
        if not isinstance(signature, str) or not isinstance(pem, str):
            raise ValueError("signature and public_key_pem must be strings")
        if document.get("key_id") != key_id:
            raise ValueError("key_id differs from the statement's")
    except (ValueError, KeyError, TypeError, InvalidInput) as exc:
        raise IntegrityError(f"malformed ledger checkpoint: {exc}") from exc
    return CheckpointDocument(statement, signature, pem)


def _check_signature(document: CheckpointDocument, public: Ed25519PublicKey) -> None:
    key_id = public_key_id(public)
    if document.statement.key_id != key_id:
        raise IntegrityError(
            f"checkpoint {document.statement.seq} names key {document.statement.key_id},"
            f" not {key_id}"
        )
    if not verify_signature(public, document.statement.message(), document.signature):
        raise IntegrityError(f"checkpoint {document.statement.seq}: signature does not verify")


def verify_checkpoint_file(data: bytes, public_pem: bytes) -> CheckpointStatement:
    """Verify one checkpoint object with the signer's public key alone (no database, no store).

    Raises :class:`IntegrityError` if the file is malformed, names another key, or its signature
    does not verify; returns the statement it proves otherwise.
    """
    document = parse_checkpoint(data)
    try:
        public = load_public_key(public_pem)
    except (ValueError, VaultError) as exc:
        raise IntegrityError(f"not an Ed25519 public key: {exc}") from exc
    _check_signature(document, public)
    return document.statement


def write_checkpoint(
    engine: Engine, store: ObjectStore, key: SigningKey, clock: Clock
) -> AuditCheckpoint | None:
    """Sign the current chain head and anchor it in the store; None if there is nothing new.

    Order (C1): read the head -> put the locked object (or adopt the one already there) ->
    insert the row. Safe to run again after a crash at any step, and from two processes.
    """
    with unit_of_work(engine) as session:
        head = session.exec(
            select(AuditEvent.seq, AuditEvent.hash).order_by(col(AuditEvent.seq).desc()).limit(1)
        ).first()
        if head is None:
            return None
        seq, digest = int(head[0]), str(head[1])
        if session.get(AuditCheckpoint, seq) is not None:
            return None
    object_key = checkpoint_key(seq)
    document = _existing_document(store, object_key)
    if document is None:
        at = as_utc(clock.now(), field="clock")
        statement = CheckpointStatement(seq, digest, at, key.key_id)
        document = CheckpointDocument(
            statement, key.sign(statement.message()), key.public_pem().decode()
        )
        try:
            store.put(
                object_key,
                document.to_bytes(),
                {"kind": "ledger-checkpoint", "seq": str(seq), "key-id": key.key_id},
                retain_until=at + LEDGER_RETENTION,
            )
        except Conflict:
            # Another checkpointer put it first: adopt theirs (C2).
            document = _existing_document(store, object_key)
            if document is None:
                raise
    if document.statement.hash != digest:
        raise IntegrityError(
            f"ledger checkpoint {object_key} says event {seq} has hash"
            f" {document.statement.hash}, the chain says {digest}"
        )
    row = _record(engine, document, object_key)
    log.info(
        "ledger checkpoint seq=%d hash=%s key_id=%s object=%s",
        row.seq,
        row.hash,
        row.key_id,
        row.object_key,
    )
    return row


def _existing_document(store: ObjectStore, object_key: str) -> CheckpointDocument | None:
    if store.head(object_key) is None:
        return None
    return parse_checkpoint(store.get(object_key))


def _record(engine: Engine, document: CheckpointDocument, object_key: str) -> AuditCheckpoint:
    statement = document.statement
    row = AuditCheckpoint(
        seq=statement.seq,
        hash=statement.hash,
        at=statement.at,
        key_id=statement.key_id,
        signature=document.signature,
        object_key=object_key,
    )
    try:
        with unit_of_work(engine) as session:
            if session.get(AuditCheckpoint, statement.seq) is None:
                session.add(row)
    except sa_exc.IntegrityError:
        pass  # recorded by a concurrent checkpointer from the same object
    return row


# -- verification ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Problem:
    """One reason the ledger does not verify. ``seq`` is the first event it puts in doubt."""

    kind: str
    seq: int | None
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "seq": self.seq, "detail": self.detail}


@dataclass(frozen=True, slots=True)
class VerifyReport:
    events: int
    head_seq: int | None
    head_hash: str | None
    checkpoints: int  # checkpoint objects whose signature verified
    latest_checkpoint_seq: int | None
    problems: tuple[Problem, ...] = field(default_factory=tuple)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def first_bad_seq(self) -> int | None:
        """The lowest sequence number any problem puts in doubt (None if none names one)."""
        seqs = [p.seq for p in self.problems if p.seq is not None]
        return min(seqs) if seqs else None

    @property
    def unanchored(self) -> int:
        """Events after the latest checkpoint: protected by the chain only, not yet anchored."""
        if self.head_seq is None:
            return 0
        return self.head_seq - (self.latest_checkpoint_seq or 0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "first_bad_seq": self.first_bad_seq,
            "events": self.events,
            "head_seq": self.head_seq,
            "head_hash": self.head_hash,
            "checkpoints": self.checkpoints,
            "latest_checkpoint_seq": self.latest_checkpoint_seq,
            "unanchored": self.unanchored,
            "problems": [p.to_dict() for p in self.problems],
        }


def _load_checkpoints(
    store: ObjectStore, keys: Mapping[str, Ed25519PublicKey]
) -> tuple[list[CheckpointStatement], list[Problem], set[str]]:
    """Every checkpoint object, signature-checked against the verifier's keys."""
    statements: list[CheckpointStatement] = []
    problems: list[Problem] = []
    listed: set[str] = set()
    for object_key in store.list(CHECKPOINT_PREFIX):
        listed.add(object_key)
        try:
            document = parse_checkpoint(store.get(object_key))
        except IntegrityError as exc:
            problems.append(Problem("checkpoint-malformed", None, f"{object_key}: {exc.message}"))
            continue
        statement = document.statement
        public = keys.get(statement.key_id)
        if public is None:
            problems.append(
                Problem(
                    "checkpoint-unknown-key",
                    None,
                    f"{object_key}: signed by {statement.key_id}, which is not a trusted key",
                )
            )
            continue
        try:
            _check_signature(document, public)
        except IntegrityError as exc:
            problems.append(Problem("checkpoint-signature", None, f"{object_key}: {exc.message}"))
            continue
        if object_key != checkpoint_key(statement.seq):
            problems.append(
                Problem(
                    "checkpoint-misplaced",
                    None,
                    f"{object_key} holds the checkpoint of event {statement.seq}",
                )
            )
            continue
        statements.append(statement)
    return statements, problems, listed


def compare_checkpoints(
    walk: ChainWalk, statements: Iterable[CheckpointStatement]
) -> list[Problem]:
    """Pure: each verified checkpoint must match the stored chain at its seq.

    A checkpoint beyond the head means the tail was deleted: the first missing event is the
    first bad one. A different hash at its seq means the chain was rewritten at or before it.
    """
    problems: list[Problem] = []
    head = walk.head_seq or 0
    for statement in statements:
        if statement.seq > head:
            problems.append(
                Problem(
                    "truncated",
                    head + 1,
                    f"event {head + 1} is missing: checkpoint {statement.seq} signed a chain"
                    f" of {statement.seq} events, the ledger holds {head}",
                )
            )
        elif walk.hashes.get(statement.seq) != statement.hash:
            problems.append(
                Problem(
                    "checkpoint-mismatch",
                    statement.seq,
                    f"event {statement.seq}'s hash differs from the signed checkpoint: the"
                    f" chain was rewritten at or before event {statement.seq}",
                )
            )
    return problems


def verify(
    engine: Engine, store: ObjectStore, public_keys: Iterable[Ed25519PublicKey]
) -> VerifyReport:
    """Recompute the chain and check it against every checkpoint object (C3 for the order).

    Detects a changed, deleted, inserted or reordered event (the chain) and a deleted tail or
    a wholesale rewrite up to a checkpoint (the checkpoints). Raises :class:`Unavailable` when
    the catalog or the store cannot be read: that is not a verdict.
    """
    keys = {public_key_id(k): k for k in public_keys}
    statements, problems, listed = _load_checkpoints(store, keys)
    try:
        with engine.connect() as conn:
            walk = walk_chain(read_chain(conn), want=[s.seq for s in statements])
        with Session(engine) as session:
            rows = list(session.exec(select(AuditCheckpoint)))
    except sa_exc.OperationalError as exc:
        raise Unavailable(f"catalog unavailable: {type(exc.orig).__name__}") from exc
    if walk.fault is not None:
        problems.append(Problem(walk.fault.kind, walk.fault.seq, walk.fault.detail))
    problems.extend(compare_checkpoints(walk, statements))
    by_seq = {s.seq: s for s in statements}
    for row in rows:
        # The catalog's record of a checkpoint whose locked object is gone, or differs from it.
        if row.object_key not in listed:
            problems.append(
                Problem(
                    "checkpoint-object-missing",
                    None,
                    f"checkpoint {row.seq} is recorded but {row.object_key} is not in the store",
                )
            )
        elif row.seq in by_seq and by_seq[row.seq].hash != row.hash:
            problems.append(
                Problem(
                    "checkpoint-row-mismatch",
                    None,
                    f"the catalog's record of checkpoint {row.seq} differs from its object",
                )
            )
    problems.sort(key=lambda p: (p.seq is None, p.seq or 0, p.kind))
    report = VerifyReport(
        events=walk.events,
        head_seq=walk.head_seq,
        head_hash=walk.head_hash,
        checkpoints=len(statements),
        latest_checkpoint_seq=max(by_seq) if by_seq else None,
        problems=tuple(problems),
    )
    log.info(
        "ledger verify ok=%s events=%d checkpoints=%d first_bad_seq=%s problems=%d",
        report.ok,
        report.events,
        report.checkpoints,
        report.first_bad_seq,
        len(report.problems),
    )
    return report
