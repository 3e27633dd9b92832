"""Alembic environment for the results database; run by study.record.results.migrate on every open."""

from alembic import context

from study.record.results import VERSION_TABLE, Base

config = context.config
connection = config.attributes.get("connection")
if connection is None:  # `alembic -x url=...` from a shell
    from sqlalchemy import create_engine

    connection = create_engine(context.get_x_argument(as_dictionary=True)["url"]).connect()

context.configure(
    connection=connection,
    target_metadata=Base.metadata,
    # Optuna's RDB storage keeps its own `alembic_version` table in the same database.
    version_table=VERSION_TABLE,
    render_as_batch=True,
)
with context.begin_transaction():
    context.run_migrations()
