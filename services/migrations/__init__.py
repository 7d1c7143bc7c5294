"""Alembic migrations of the metadata database (see services/common/db.py)."""
