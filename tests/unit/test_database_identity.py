"""The database a projector says it writes (its group refuses one writing another): two URLs
naming one database agree, whatever their password or user, and it shows neither."""

from __future__ import annotations

import os
from pathlib import Path

from streams.projection.engine import database_identity


def test_one_sqlite_file_named_two_ways_is_one_database(tmp_path: Path) -> None:
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link").symlink_to(tmp_path)
    direct = database_identity(f"sqlite:///{tmp_path / 'p.sqlite3'}")
    assert database_identity(f"sqlite:///{tmp_path / 'elsewhere' / '..' / 'p.sqlite3'}") == direct
    assert database_identity(f"sqlite:///{tmp_path / 'link' / 'p.sqlite3'}") == direct
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert database_identity("sqlite:///p.sqlite3") == direct
    finally:
        os.chdir(cwd)
    assert database_identity(f"sqlite:///{tmp_path / 'q.sqlite3'}") != direct


def test_a_server_database_is_its_host_port_and_name_not_its_credentials() -> None:
    one = database_identity("postgresql+psycopg://app:secret@DB.example:5432/talk")
    assert database_identity("postgresql+psycopg://reader:other@db.example/talk") == one
    assert database_identity("postgresql://app@db.example/talk") == one
    assert "secret" not in one and "app" not in one
    assert database_identity("postgresql+psycopg://app:secret@db.example/other") != one
    assert database_identity("postgresql+psycopg://app:secret@db.example:5433/talk") != one
    assert database_identity("postgresql+psycopg://app:secret@db2.example/talk") != one
