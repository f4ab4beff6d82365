"""Alembic environment: the engine is handed in by ``vault.db.migrate``."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import vault.models  # noqa: F401  (registers the tables on the metadata)

target_metadata = SQLModel.metadata
engine = context.config.attributes["engine"]

with engine.begin() as connection:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        render_as_batch=connection.dialect.name == "sqlite",
    )
    with context.begin_transaction():
        context.run_migrations()
