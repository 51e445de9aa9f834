"""`tether label serve`: the admin token goes to a 0600 file (not the log), the database is private, options reach the app."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
import uvicorn

from tether.feedback.cli import main
from tether.storage import FeedbackStore


@pytest.fixture
def served(monkeypatch) -> list[uvicorn.Config]:
    """`serve` runs up to the point of serving, and the uvicorn configuration it would serve is kept."""
    configs: list[uvicorn.Config] = []
    monkeypatch.setattr(uvicorn.Server, "run", lambda server, *a, **k: configs.append(server.config))
    monkeypatch.delenv("TETHER_ADMIN_TOKEN", raising=False)
    return configs


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


def test_first_start_writes_the_admin_token_to_a_private_file(tmp_path, served, capsys):
    db = tmp_path / "feedback.db"
    assert main(["serve", "--db", f"sqlite:///{db}"]) == 0
    token_file = Path(f"{db}.admin-token")
    token = token_file.read_text().strip()
    assert _mode(token_file) == 0o600
    out = capsys.readouterr().out
    assert token not in out and str(token_file) in out  # the terminal (and any log of it) says only where it is
    assert FeedbackStore(f"sqlite:///{db}").is_admin_token(token)
    # the next start keeps the token and writes nothing
    token_file.unlink()
    assert main(["serve", "--db", f"sqlite:///{db}"]) == 0
    out = capsys.readouterr().out
    assert not token_file.exists() and "set earlier" in out and token not in out


def test_admin_token_file_option_and_command(tmp_path, served, capsys):
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    chosen = tmp_path / "secrets" / "admin"
    chosen.parent.mkdir()
    chosen.write_text("stale")
    os.chmod(chosen, 0o644)
    assert main(["serve", "--db", db_url, "--admin-token-file", str(chosen)]) == 0
    first = chosen.read_text().strip()
    assert first != "stale" and _mode(chosen) == 0o600 and first not in capsys.readouterr().out
    assert main(["admin-token", "--db", db_url, "--admin-token-file", str(chosen)]) == 0
    second = chosen.read_text().strip()
    assert second != first and second not in capsys.readouterr().out and _mode(chosen) == 0o600
    store = FeedbackStore(db_url)
    assert store.is_admin_token(second) and not store.is_admin_token(first)
    assert main(["serve", "--db", db_url, "--admin-token-file", str(tmp_path / "missing" / "admin")]) == 0  # a token exists: nothing to write


def test_unwritable_token_file_is_a_one_line_error_and_sets_no_token(tmp_path, served, capsys):
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    assert main(["serve", "--db", db_url, "--admin-token-file", str(tmp_path / "missing" / "admin")]) == 1
    err = capsys.readouterr().err
    assert "--admin-token-file" in err and err.count("\n") == 1
    assert not FeedbackStore(db_url).has_admin_token() and served == []


def test_sqlite_files_are_private(tmp_path, served):
    db = tmp_path / "feedback.db"
    old_umask = os.umask(0o022)
    try:
        assert main(["serve", "--db", f"sqlite:///{db}", "--admin-token", "t"]) == 0
        store = FeedbackStore(f"sqlite:///{db}")
        store.add_labeler("ann")  # writes: the -wal and -shm files exist while a connection is open
        for path in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            assert path.exists() and _mode(path) == 0o600, path
        store.close()
    finally:
        os.umask(old_umask)


def test_serve_options_reach_the_app(tmp_path, served):
    db_url = f"sqlite:///{tmp_path / 'feedback.db'}"
    argv = ["serve", "--db", db_url, "--admin-token", "t", "--assignment-timeout", "5", "--secure-cookies", "--forwarded-allow-ips", "10.0.0.2"]
    assert main(argv) == 0
    [config] = served
    app = config.app
    assert app.state.store.assignment_timeout_s == 300 and app.state.secure_cookies is True
    assert config.proxy_headers and config.forwarded_allow_ips == "10.0.0.2"
    assert main(["serve", "--db", db_url, "--admin-token", "t", "--assignment-timeout", "0"]) == 0
    assert served[-1].app.state.store.assignment_timeout_s is None
    assert main(["serve", "--db", db_url, "--assignment-timeout", "-1"]) == 1
