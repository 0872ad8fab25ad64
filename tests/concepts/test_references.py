"""Reference sets: the streaming top-k against a brute-force one, resuming a killed run, the
Ray engine against the local one, and ``convlens concepts atlas`` end to end."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
from cli_support import TINY, assert_one_error, run
from PIL import Image
from tiny_models import TinyVGG, seeded

import convlens as cl
from convlens.concepts import references
from convlens.concepts.references import ReferenceSets

LAYER = "features.6"
K = 3


def _classifier() -> cl.Classifier:
    return cl.Classifier(seeded(TinyVGG(classes=4), dtype=torch.float32),
                         labels=["ant", "bee", "cat", "dog"], input_size=32, device="cpu")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("refs") / "photos"
    root.mkdir()
    rng = np.random.default_rng(3)
    for i in range(11):
        array = rng.integers(0, 255, (40, 36, 3), dtype=np.uint8)
        array[rng.integers(0, 20):, rng.integers(0, 20):] //= np.uint8(rng.integers(1, 4))
        Image.fromarray(array).save(root / f"img{i:02d}.png")
    (root / "broken.png").write_bytes(b"not a picture")
    return root


def _brute_force(clf, folder, rule="auto"):
    """Every image at once: activations by a hook, relevances by cl.concept_relevance."""
    files = sorted(p for p in folder.iterdir() if p.name != "broken.png")
    x = torch.stack([clf.preprocessing.load_file(p)[0] for p in files])
    captured = []
    handle = clf.module.get_submodule(LAYER).register_forward_hook(
        lambda _m, _i, out: captured.append(out.detach().clone()))
    with torch.no_grad():
        clf.module(x)
    handle.remove()
    activation = captured[0].double()
    relevance = cl.concept_relevance(clf, x, LAYER, spatial=True, rule=rule).double()
    width = activation.shape[3]
    result = {}
    for mode, values in (("relevance", relevance.flatten(2).sum(2)),
                         ("activation", activation.flatten(2).amax(2))):
        hot = (relevance if mode == "relevance" else activation).flatten(2).argmax(2)
        top = []
        for channel in range(values.shape[1]):
            order = np.argsort(-values[:, channel].numpy(), kind="stable")[:K]
            top.append([(files[i].name, float(values[i, channel]),
                         (int(hot[i, channel]) // width, int(hot[i, channel]) % width))
                        for i in order])
        result[mode] = top
    return result, relevance.flatten(2).sum(2).sum(0).numpy()


def _as_lists(sets: ReferenceSets):
    return {mode: [[(r.relpath, r.score, r.position) for r in sets.top(c, mode, boxes=False)]
                   for c in range(sets.channels)] for mode in references.MODES}


def _same(got, expected):
    for mode in references.MODES:
        for channel, (mine, theirs) in enumerate(zip(got[mode], expected[mode])):
            assert [m[0] for m in mine] == [t[0] for t in theirs], (mode, channel)
            assert [m[2] for m in mine] == [t[2] for t in theirs], (mode, channel)
            np.testing.assert_allclose([m[1] for m in mine], [t[1] for t in theirs],
                                       rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("rule", ["auto", "gradient"])
def test_the_streaming_top_k_equals_a_brute_force_top_k_over_all_images(folder, tmp_path, rule):
    clf = _classifier()
    sets = cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "out", batch_size=4,
                             rule=rule)
    expected, total = _brute_force(clf, folder, rule)
    _same(_as_lists(sets), expected)
    np.testing.assert_allclose(sets.relevance_total, total, rtol=1e-5, atol=1e-6)
    meta = json.loads((tmp_path / "out" / "references.json").read_text())
    assert meta["layer"] == LAYER and meta["k"] == K
    assert meta["rule"] == ("lrp:epsilon_plus_flat" if rule == "auto" else "gradient_x_activation")
    assert meta["errors"] == [{"path": "broken.png", "reason": meta["errors"][0]["reason"]}]
    assert meta["count"] == 11 and len(meta["model_fingerprint"]) == 16
    # stored memory is C x k per shard, not per image
    store = references.ResultStore.open(tmp_path / "out" / "store")
    shard = store.shards()[0]
    assert store.read_array(shard, "relevance_score").shape == (16, K)


def test_a_reference_set_refuses_another_model(folder, tmp_path):
    cl.reference_sets(_classifier(), folder, LAYER, k=1, out=tmp_path / "out")
    other = cl.Classifier(seeded(TinyVGG(classes=4), seed=1, dtype=torch.float32),
                          labels=["ant", "bee", "cat", "dog"], input_size=32, device="cpu")
    with pytest.raises(references.ReferenceSetError, match="another model"):
        ReferenceSets.load_folder(tmp_path / "out", other)


def test_patch_boxes_come_back_for_the_top_images(folder, tmp_path):
    sets = cl.reference_sets(_classifier(), folder, LAYER, k=2, out=tmp_path / "out")
    channel = sets.ranked_channels()[0]
    (first, second) = sets.top(channel, "activation")
    for ref in (first, second):
        left, top, right, bottom = ref.box
        assert 0 <= left < right <= 32 and 0 <= top < bottom <= 32
        assert ref.path.is_file()


def test_a_killed_run_resumes_to_the_same_reference_set(folder, tmp_path, monkeypatch):
    clf = _classifier()
    whole = cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "whole", batch_size=4)
    real = references.ReferenceWorker.__call__
    calls = []

    def dies_on_the_second_unit(self, batch):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user's Ctrl-C in the middle of the pass
        return real(self, batch)

    monkeypatch.setattr(references.ReferenceWorker, "__call__", dies_on_the_second_unit)
    with pytest.raises(KeyboardInterrupt):
        cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "killed", batch_size=4)
    monkeypatch.setattr(references.ReferenceWorker, "__call__", real)
    killed = references.ResultStore.open(tmp_path / "killed" / "store")
    assert len(killed.shards()) == 1
    stored = len(killed.done_keys())
    assert stored >= 3
    resumed_calls = []
    monkeypatch.setattr(references.ReferenceWorker, "__call__",
                        lambda self, batch: resumed_calls.append(len(batch.items))
                        or real(self, batch))
    resumed = cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "killed", batch_size=4)
    assert sum(resumed_calls) == 11 - stored  # the first unit's images were not recomputed
    for mode in references.MODES:
        assert _as_lists(resumed)[mode] == _as_lists(whole)[mode]
    np.testing.assert_array_equal(resumed.relevance_total, whole.relevance_total)


@pytest.mark.xdist_group("ray")  # one Ray instance per test process, as in tests/engines
def test_the_ray_engine_gives_the_local_engine_s_reference_set(folder, tmp_path):
    if os.environ.get("CONVLENS_REQUIRE_RAY") != "1":
        pytest.importorskip("ray.data", reason="Ray is not installed: pip install "
                                               "'convlens[ray]'")
    import ray

    clf = _classifier()
    local = cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "local", batch_size=4)
    if ray.is_initialized():
        ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             object_store_memory=120 * 1024 * 1024, logging_level="warning")
    try:
        remote = cl.reference_sets(clf, folder, LAYER, k=K, out=tmp_path / "ray", batch_size=4,
                                   engine="ray", engine_options={"actors": 1})
    finally:
        ray.shutdown()
    assert _as_lists(remote) == _as_lists(local)
    local_json = json.loads((tmp_path / "local" / "references.json").read_text())
    ray_json = json.loads((tmp_path / "ray" / "references.json").read_text())
    assert ray_json["images"] == local_json["images"]
    assert ray_json["errors"] == local_json["errors"]


def test_cli_atlas_writes_the_references_and_the_page(folder, tmp_path):
    out = tmp_path / "atlas"
    result = run("concepts", "atlas", str(folder), "--layer", LAYER, "--k", "2",
                 "--top-channels", "3", "--out", str(out), *TINY)
    # the unreadable file is one error line and exit code 1 (the rest was done), as for audit
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().startswith("error: broken.png: "), result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    page = (out / "atlas.html").read_text(encoding="utf-8")
    meta = json.loads((out / "references.json").read_text())
    assert meta["layer"] == LAYER and meta["k"] == 2
    assert page.count('class="channel"') == 3
    shown = [name for name in os.listdir(out / "atlas") if name.endswith(".png")]
    assert len(shown) >= 3 * 2 * 2  # relevance and activation patches of 3 channels
    for name in shown:
        assert f"atlas/{name}" in page
    assert "broken.png" in page  # the unreadable file is listed, not fatal


def test_cli_atlas_bad_layer_is_one_error_line(folder, tmp_path):
    result = run("concepts", "atlas", str(folder), "--layer", "features.99", "--out",
                 str(tmp_path / "atlas"), *TINY)
    assert_one_error(result, 2, "unknown layer 'features.99'", "Valid layers")


def test_cli_atlas_bad_channels_is_one_error_line(folder, tmp_path):
    result = run("concepts", "atlas", str(folder), "--layer", LAYER, "--channels", "0,99",
                 "--out", str(tmp_path / "atlas"), *TINY)
    assert_one_error(result, 2, "channel 99", "0..15")
