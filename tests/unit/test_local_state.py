"""What an app id keeps under ``DATA_DIR`` is its own: the worker's table store and the default
SQLite projection (the default app id's file keeps the name it always had), so a second app id
run from the same directory neither recovers another app's table nor projects into its file."""

from __future__ import annotations

from pathlib import Path

from streams.settings import Settings
from streams.tabledir import table_dir


def settings(data_dir: Path, **values: object) -> Settings:
    given = {"data_dir": data_dir, "database_url": None, "worker_name": "worker", **values}
    return Settings(**given)  # type: ignore[arg-type]


def test_each_app_id_has_its_own_table_store(tmp_path: Path) -> None:
    assert table_dir(settings(tmp_path, app_id="prod")) == tmp_path / "worker" / "prod" / "worker"
    assert table_dir(settings(tmp_path, app_id="staging", worker_name="w2")) == (
        tmp_path / "worker" / "staging" / "w2"
    )


def test_each_app_id_has_its_own_default_projection(tmp_path: Path) -> None:
    default = settings(tmp_path, app_id="talkstream").resolved_database_url
    assert default == f"sqlite:///{tmp_path / 'talkstream.sqlite3'}"
    assert settings(tmp_path, app_id="staging").resolved_database_url == (
        f"sqlite:///{tmp_path / 'staging.sqlite3'}"
    )
    # a URL that is set is the one used, whatever the app id
    given = "postgresql+psycopg://talkstream@db/talkstream"
    assert settings(tmp_path, app_id="staging", database_url=given).resolved_database_url == given
