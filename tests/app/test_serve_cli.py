"""``convlens serve``: options reach uvicorn and the app; bad input is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("uvicorn")

from convlens.cli.app import app  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_model.py") + ":build"


@pytest.fixture
def served(monkeypatch):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda application, **kw: calls.append((application, kw)))
    return calls


def test_serve_listens_on_loopback_by_default(served, audit_folder):
    result = CliRunner().invoke(app, ["serve", "--model", TINY, "--input-size", "32",
                                      "--audit", str(audit_folder)])
    assert result.exit_code == 0, result.output
    ((application, options),) = served
    assert options["host"] == "127.0.0.1" and options["port"] == 8000
    settings = application.state.convlens.settings
    assert "127.0.0.1" in settings.allowed_hosts and "0.0.0.0" not in settings.allowed_hosts
    assert len(application.state.convlens.audits) == 1
    assert "http://127.0.0.1:8000/" in result.output


def test_serve_options(served):
    result = CliRunner().invoke(app, ["serve", "--model", TINY, "--host", "0.0.0.0", "--port",
                                      "9001", "--allow-host", "box.lan", "--max-upload-mb", "1",
                                      "--max-pixels", "5000"])
    assert result.exit_code == 0, result.output
    ((application, options),) = served
    assert (options["host"], options["port"]) == ("0.0.0.0", 9001)
    settings = application.state.convlens.settings
    assert "box.lan" in settings.allowed_hosts and "0.0.0.0" not in settings.allowed_hosts
    assert settings.max_upload_bytes == 2**20 and settings.max_pixels == 5000


def test_serve_bad_audit_folder_is_one_error_line(served, tmp_path):
    result = CliRunner().invoke(app, ["serve", "--model", TINY, "--audit", str(tmp_path)])
    assert result.exit_code == 2 and not served
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:") and "no audit.json" in lines[0]
