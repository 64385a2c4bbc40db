"""The SQL projection of the lifecycle topic (SQLAlchemy 2.0; SQLite or PostgreSQL)."""
