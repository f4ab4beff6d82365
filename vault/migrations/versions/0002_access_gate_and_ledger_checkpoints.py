"""access gate (principals, requests, grants) and ledger checkpoints; 64-bit ledger seq

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29 09:19:11.264664
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('access_request',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('requester', sa.String(length=200), nullable=False),
    sa.Column('requester_role', sa.String(length=64), nullable=False),
    sa.Column('cameras', sa.Text(), nullable=False),
    sa.Column('sites', sa.Text(), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purpose', sa.String(length=64), nullable=False),
    sa.Column('reason', sa.String(length=2000), nullable=False),
    sa.Column('ticket', sa.String(length=200), nullable=False),
    sa.Column('state', sa.String(length=16), nullable=False),
    sa.Column('decided_by', sa.String(length=200), nullable=True),
    sa.Column('decided_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('decision_reason', sa.String(length=2000), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f('ix_access_request_requester'), ['requester'], unique=False
        )
        batch_op.create_index(batch_op.f('ix_access_request_state'), ['state'], unique=False)

    op.create_table('audit_checkpoint',
    sa.Column('seq', sa.BigInteger(), autoincrement=False, nullable=False),
    sa.Column('hash', sa.String(length=64), nullable=False),
    sa.Column('at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('key_id', sa.String(length=64), nullable=False),
    sa.Column('signature', sa.String(length=200), nullable=False),
    sa.Column('object_key', sa.String(length=500), nullable=False),
    sa.PrimaryKeyConstraint('seq')
    )
    op.create_table('principal',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('roles', sa.Text(), nullable=False),
    sa.Column('sites', sa.Text(), nullable=False),
    sa.Column('password_hash', sa.String(length=500), nullable=True),
    sa.Column('external_subject', sa.String(length=500), nullable=True),
    sa.Column('disabled', sa.Boolean(), nullable=False),
    sa.Column('failed_logins', sa.Integer(), nullable=False),
    sa.Column('locked_until', sa.DateTime(timezone=True), nullable=True),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('external_subject'),
    sa.UniqueConstraint('name')
    )
    op.create_table('grant',
    sa.Column('id', sa.String(length=36), nullable=False),
    sa.Column('request_id', sa.String(length=36), nullable=False),
    sa.Column('holder', sa.String(length=200), nullable=False),
    sa.Column('cameras', sa.Text(), nullable=False),
    sa.Column('start', sa.DateTime(timezone=True), nullable=False),
    sa.Column('end', sa.DateTime(timezone=True), nullable=False),
    sa.Column('purpose', sa.String(length=64), nullable=False),
    sa.Column('granted_by', sa.String(length=200), nullable=False),
    sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('expires_at', sa.DateTime(timezone=True), nullable=False),
    sa.Column('revoked_at', sa.DateTime(timezone=True), nullable=True),
    sa.Column('revoked_by', sa.String(length=200), nullable=True),
    sa.Column('revoke_reason', sa.String(length=2000), nullable=False),
    sa.ForeignKeyConstraint(['request_id'], ['access_request.id'], ),
    sa.PrimaryKeyConstraint('id')
    )
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_grant_expires_at'), ['expires_at'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_holder'), ['holder'], unique=False)
        batch_op.create_index(batch_op.f('ix_grant_request_id'), ['request_id'], unique=False)

    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.alter_column('seq',
               existing_type=sa.INTEGER(),
               type_=sa.BigInteger(),
               existing_nullable=False)



def downgrade() -> None:
    with op.batch_alter_table('audit_event', schema=None) as batch_op:
        batch_op.alter_column('seq',
               existing_type=sa.BigInteger(),
               type_=sa.INTEGER(),
               existing_nullable=False)

    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_grant_request_id'))
        batch_op.drop_index(batch_op.f('ix_grant_holder'))
        batch_op.drop_index(batch_op.f('ix_grant_expires_at'))

    op.drop_table('grant')
    op.drop_table('principal')
    op.drop_table('audit_checkpoint')
    with op.batch_alter_table('access_request', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_access_request_state'))
        batch_op.drop_index(batch_op.f('ix_access_request_requester'))

    op.drop_table('access_request')
