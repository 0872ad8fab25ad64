"""Fixtures for the app tests (helpers in serve_helpers.py, a name no other folder uses)."""

from __future__ import annotations

import pytest

pytest.importorskip("fastapi")

from serve_helpers import LiveServer, make_audit, tiny_classifier  # noqa: E402


@pytest.fixture
def classifier():
    return tiny_classifier()


@pytest.fixture
def audit_folder(tmp_path):
    return make_audit(tmp_path / "audit-out")


@pytest.fixture
def live_server(classifier, audit_folder):
    from convlens.app.server import ServeSettings, create_app

    app = create_app(classifier, audits=[audit_folder],
                     settings=ServeSettings(max_upload_bytes=200_000))
    server = LiveServer(app)
    yield server
    server.close()
