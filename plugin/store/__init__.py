"""The plugin's database (SQLite by default, PostgreSQL by URL; migrations with Alembic):
results, CDS feedback, the audit trail, and the used CDS token ids."""

__all__: list[str] = []
