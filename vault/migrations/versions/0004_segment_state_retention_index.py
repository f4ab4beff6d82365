"""segments: a (state, retention_until) index for the purge plan; two unused tombstone indexes go

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29 19:30:00

The plan asks for stored segments due by now, oldest first. With one index on ``state`` and
another on ``retention_until`` it walked every purged row whose deadline had passed (they
accumulate forever as tombstoned history) or every stored row; the composite index reads only
the due ones. It subsumes the index on ``state``; the one on ``retention_until`` alone served
no query. Nothing looks tombstones up by camera or object key (the certificate and ``check``
read them by run and by segment), and each index cost every purged segment an insert.
"""

from collections.abc import Sequence

from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('segment', schema=None) as batch_op:
        batch_op.create_index(
            'ix_segment_state_retention', ['state', 'retention_until'], unique=False
        )
        batch_op.drop_index(batch_op.f('ix_segment_state'))
        batch_op.drop_index(batch_op.f('ix_segment_retention_until'))
    with op.batch_alter_table('tombstone', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tombstone_camera_id'))
        batch_op.drop_index(batch_op.f('ix_tombstone_object_key'))


def downgrade() -> None:
    with op.batch_alter_table('tombstone', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_tombstone_object_key'), ['object_key'], unique=False)
        batch_op.create_index(batch_op.f('ix_tombstone_camera_id'), ['camera_id'], unique=False)
    with op.batch_alter_table('segment', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_segment_retention_until'), ['retention_until'], unique=False
        )
        batch_op.create_index(batch_op.f('ix_segment_state'), ['state'], unique=False)
        batch_op.drop_index('ix_segment_state_retention')
