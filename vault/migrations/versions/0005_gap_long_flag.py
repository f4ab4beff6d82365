"""gaps: a flag for those longer than a day, and an index that finds them by camera and end

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-29 22:00:00

A gap may last any time, so a lookup by the ``(camera_id, start)`` index alone had no lower
bound: it read every earlier outage of the camera and kept those still open at the window's
start. Now gaps no longer than ``SHORT_GAP`` (a day) are read from the window's start minus a
day, and the rare longer ones through ``(camera_id, is_long, end)``. Existing rows are flagged
here from their own start and end.
"""

from collections.abc import Sequence
from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The value of vault.models.SHORT_GAP when this revision was written (a migration must not
# change with the code).
_SHORT_GAP = timedelta(days=1)


def upgrade() -> None:
    with op.batch_alter_table('gap', schema=None) as batch_op:
        batch_op.add_column(
            sa.Column('is_long', sa.Boolean(), server_default=sa.false(), nullable=False)
        )
        batch_op.create_index(
            'ix_gap_camera_long_end', ['camera_id', 'is_long', 'end'], unique=False
        )
    bind = op.get_bind()
    gap = sa.table(
        'gap', sa.column('id', sa.String), sa.column('start', sa.DateTime),
        sa.column('end', sa.DateTime), sa.column('is_long', sa.Boolean),
    )
    if bind.dialect.name == 'postgresql':
        op.execute(
            gap.update()
            .where(gap.c.end - gap.c.start > sa.literal(_SHORT_GAP, sa.Interval()))
            .values(is_long=True)
        )
        return
    # SQLite stores instants as text (UTC, no offset), read back as naive datetimes: compare
    # in Python.
    rows = bind.execute(sa.select(gap.c.id, gap.c.start, gap.c.end)).all()
    long_ids = [row.id for row in rows if row.end - row.start > _SHORT_GAP]
    for at in range(0, len(long_ids), 500):
        bind.execute(
            gap.update().where(gap.c.id.in_(long_ids[at:at + 500])).values(is_long=True)
        )


def downgrade() -> None:
    with op.batch_alter_table('gap', schema=None) as batch_op:
        batch_op.drop_index('ix_gap_camera_long_end')
        batch_op.drop_column('is_long')
