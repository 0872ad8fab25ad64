"""``convlens serve``: options reach uvicorn and the app; bad input is one error line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("uvicorn")

from convlens.cli.app import app  # noqa: E402

TINY = str(Path(__file__).resolve().parents[1] / "fixtures" / "tiny_model.py") + ":build"


class _Listening:
    """Stands for the socket convlens.app.runner.bind would open (no real port is taken)."""

    def __init__(self, host: str, port: int) -> None:
        self.address = (host, port)

    def getsockname(self):
        return self.address

    def close(self) -> None:
        pass


@pytest.fixture
def served(monkeypatch):
    from convlens.app import runner

    calls = []
    monkeypatch.setattr(runner, "bind", _Listening)
    monkeypatch.setattr(runner, "serve_app", lambda application, sock: calls.append(
        (application, dict(zip(("host", "port"), sock.getsockname())))))
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


def test_a_busy_port_is_one_error_line_before_serving(monkeypatch):
    import socket

    from convlens.app import runner

    served = []
    monkeypatch.setattr(runner, "serve_app", lambda *args: served.append(args))
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        port = taken.getsockname()[1]
        result = CliRunner().invoke(app, ["serve", "--model", TINY, "--input-size", "32",
                                          "--port", str(port)])
    assert result.exit_code == 2 and not served
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert f"port {port}" in lines[0] and "already in use" in lines[0] and "--port" in lines[0]
    assert "serving" not in result.output


def test_a_malformed_audit_json_is_one_error_line(served, audit_folder):
    import json

    audit = json.loads((audit_folder / "audit.json").read_text())
    audit["classes"][0]["clusters"][1]["suspicion"] = "very"
    (audit_folder / "audit.json").write_text(json.dumps(audit))
    result = CliRunner().invoke(app, ["serve", "--model", TINY, "--audit", str(audit_folder)])
    assert result.exit_code == 2 and not served
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and "classes[0].clusters" in lines[0] and "rerun" in lines[0]
