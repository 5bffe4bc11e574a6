"""Alembic environment for the wbc case store.

Run programmatically by :func:`wbc.cases.store.migrate`, which passes an open connection in
``config.attributes["connection"]``; the ``alembic`` command line works too (``-x url=...`` or
``sqlalchemy.url`` in an ini file).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import engine_from_config, pool
from sqlalchemy.engine import Connection

from wbc.cases.store import VERSION_TABLE, Base, legacy_version_sql

config = context.config
target_metadata = Base.metadata


def run(connection: Connection) -> None:
    # wbc's own version table: a database shared with another application's Alembic keeps that one's alembic_version
    context.configure(connection=connection, target_metadata=target_metadata, render_as_batch=True,
                      version_table=VERSION_TABLE)
    with context.begin_transaction():
        context.run_migrations()


connection = config.attributes.get("connection")
url = context.get_x_argument(as_dictionary=True).get("url")
if url:
    config.set_main_option("sqlalchemy.url", url)
if connection is not None:
    run(connection)
elif context.is_offline_mode():  # `--sql`: the DDL for a DBA to run, for any dialect, without a database
    context.configure(url=config.get_main_option("sqlalchemy.url"), target_metadata=target_metadata,
                      literal_binds=True, version_table=VERSION_TABLE)
    with context.begin_transaction():
        # from a store a wbc before 0.31.0 wrote ("0006:head"): its revision moved to wbc's table first, as
        # wbc.cases.store.adopt_legacy_version does when such a store is opened
        start = context.get_starting_revision_argument()  # "0006" of "0006:head"; None without a range
        for statement in legacy_version_sql(start if isinstance(start, str) else None,
                                            context.get_context().dialect.name):
            context.execute(statement)
        context.run_migrations()
else:
    engine = engine_from_config(config.get_section(config.config_ini_section, {}), prefix="sqlalchemy.",
                                poolclass=pool.NullPool)
    with engine.connect() as conn:
        run(conn)
