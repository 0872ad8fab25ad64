"""Concept atlas folders in ``convlens serve``: channels listed, patches cut on demand as the
library cuts them, ids only, another model refused."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image
from serve_helpers import png_bytes, tiny_classifier

import convlens as cl
from convlens.app.server import ServeSettings, create_app
from convlens.concepts.patches import crop_patch, patch_box
from convlens.concepts.references import ReferenceSetError

fastapi_testclient = pytest.importorskip("fastapi.testclient")
LAYER = "features.6"


@pytest.fixture
def atlas_folder(tmp_path, classifier):
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(6):
        (photos / f"p{i}.png").write_bytes(png_bytes(48, 40, seed=i))
    cl.reference_sets(classifier, photos, LAYER, k=2, out=tmp_path / "atlas")
    return tmp_path / "atlas"


def client_for(classifier, atlas_folder):
    app = create_app(classifier, atlases=[atlas_folder], settings=ServeSettings(
        allowed_hosts=("testserver", "127.0.0.1", "localhost")))
    return fastapi_testclient.TestClient(app)


def test_atlas_channels_and_patches_are_the_library_s(classifier, atlas_folder):
    client = client_for(classifier, atlas_folder)
    assert client.get("/api/info").json()["atlases"] == [
        {"id": 0, "name": "atlas", "layer": LAYER}]
    summary = client.get("/api/atlases/0", params={"limit": 5}).json()
    assert summary["layer"] == LAYER and summary["k"] == 2 and summary["channels"] == 16
    totals = [c["total"] for c in summary["ranked"]]
    assert len(totals) == 5 and totals == sorted(totals, reverse=True)
    channel = summary["ranked"][0]["channel"]
    entry = client.get(f"/api/atlases/0/channels/{channel}").json()
    assert [r["rank"] for r in entry["activation"]] == [0, 1]
    response = client.get(f"/api/atlases/0/patches/{channel}/activation/0")
    assert response.status_code == 200 and response.headers["content-type"] == "image/png"
    served = np.asarray(Image.open(io.BytesIO(response.content)))
    # the same patch, cut by the library
    sets = cl.ReferenceSets.load_folder(atlas_folder, classifier)
    (top, *_rest) = sets.top(channel, "activation", boxes=False)
    x, geometry, photo = classifier.preprocessing.load_file(top.path, keep_photo=True)
    box = patch_box(classifier, x[None], LAYER, channel, top.position, "activation")
    expected = crop_patch(photo, geometry, box, (32, 32)).convert("RGB")
    expected.thumbnail((128, 128))
    np.testing.assert_array_equal(served, np.asarray(expected))


def test_atlas_ids_out_of_range_are_404_with_one_line(classifier, atlas_folder):
    client = client_for(classifier, atlas_folder)
    for path, words in [("/api/atlases/1", "no atlas 1"),
                        ("/api/atlases/0/channels/16", "no channel 16"),
                        ("/api/atlases/0/patches/0/relevance/2", "no rank 2"),
                        ("/api/atlases/0/patches/0/gradient/0", "no mode 'gradient'")]:
        response = client.get(path)
        assert response.status_code == 404, path
        assert words in response.json()["error"] and "\n" not in response.json()["error"]


def test_a_crafted_references_json_cannot_reach_other_files(classifier, atlas_folder):
    path = atlas_folder / "references.json"
    meta = json.loads(path.read_text())
    for image in meta["images"]:
        image["path"] = "../../../../../../etc/passwd"
    path.write_text(json.dumps(meta))
    client = client_for(classifier, atlas_folder)
    response = client.get("/api/atlases/0/patches/0/relevance/0")
    assert response.status_code == 404 and "not inside" in response.json()["error"]


def test_an_atlas_of_another_model_is_refused_at_start(atlas_folder):
    other = tiny_classifier()
    with torch_no_grad():
        next(other.module.parameters()).add_(1.0)
    with pytest.raises(ReferenceSetError, match="another model"):
        create_app(other, atlases=[atlas_folder])


def torch_no_grad():
    import torch

    return torch.no_grad()
