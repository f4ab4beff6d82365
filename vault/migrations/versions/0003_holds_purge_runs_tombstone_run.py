"""holds, purge runs; tombstones name their purge run and thumbnail

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29 09:52:39.822332
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('hold',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('cameras', sa.Text(), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=False),
    sa.Column('warrant_ref', sa.String(length=200), nullable=False),
    sa.Column('placed_by', sa.String(length=200), nullable=False),
    sa.Column('placed_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('released_by', sa.String(length=200), nullable=True),
    sa.Column('released_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('release_reason', sa.String(length=2000), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('hold', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_hold_kind'), ['kind'], unique=False)
        batch_op.create_index(batch_op.f('ix_hold_released_at'), ['released_at'], unique=False)

    op.create_table('purge_run',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('started_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('as_of', sa.DateTime(timezone=True), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('trigger', sa.String(length=64), nullable=False),
    sa.Column('purged', sa.Integer(), nullable=False),
    sa.Column('purged_bytes', sa.BigInteger(), nullable=False),
    sa.Column('held_back', sa.Integer(), nullable=False),
    sa.Column('failed', sa.Integer(), nullable=False),
    sa.Column('certificate_key', sa.String(length=500), nullable=True),
    sa.Column('certificate_sha256', sa.String(length=64), nullable=True),
    sa.Column('detail', sa.String(length=2000), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('purge_run', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_purge_run_started_at'), ['started_at'], unique=False)

    with op.batch_alter_table('tombstone', schema=None) as batch_op:
        batch_op.add_column(sa.Column('purge_run_id', sa.String(length=36), nullable=True))
        batch_op.add_column(sa.Column('thumb_key', sa.String(length=500), nullable=True))
        batch_op.create_index(
            batch_op.f('ix_tombstone_purge_run_id'), ['purge_run_id'], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table('tombstone', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_tombstone_purge_run_id'))
        batch_op.drop_column('thumb_key')
        batch_op.drop_column('purge_run_id')

    with op.batch_alter_table('purge_run', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_purge_run_started_at'))

    op.drop_table('purge_run')
    with op.batch_alter_table('hold', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_hold_released_at'))
        batch_op.drop_index(batch_op.f('ix_hold_kind'))

    op.drop_table('hold')
