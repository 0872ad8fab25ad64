"""What the audit keeps per image: compact columns, image rows streamed to audit.json, the
strategy search on a capped sample (BENCHMARKS.md, "peak RSS growth of a whole cl.audit")."""

from __future__ import annotations

import gc
import json

import numpy as np
import pytest
import torch
from PIL import Image
from planted_bias import CLASSES, PlantedNet, draw

import convlens as cl
import convlens.auditing.analysis as analysis
from convlens.auditing import strategies
from convlens.auditing.analysis import MapReader, StoredImage, build_audit, stored_images
from convlens.files import LazyList, finite_json, write_json_atomic
from convlens.store import ResultStore


def _dict_writer_bytes(content: dict) -> bytes:
    """audit.json as written before the rows were streamed: the whole dict at once."""
    whole = {k: list(v) if isinstance(v, LazyList) else v for k, v in content.items()}
    text = json.dumps(finite_json(whole), indent=2, ensure_ascii=False, allow_nan=False)
    return (text + "\n").encode("utf-8")


def _synthetic_store(folder, count: int = 90) -> list[str]:
    """A store as the pass writes it (3 shards, labels with gaps, metrics with gaps, features)."""
    rng = np.random.default_rng(0)
    store = ResultStore(folder, {"test": "memory"})
    classes = ["cat", "dög", "emu"]
    keys = []
    for start in range(0, count, 30):
        records, wrong = [], []
        for r in range(30):
            k = start + r
            label = None if k % 11 == 0 else classes[k % 3]
            predicted = classes[(k * 7) % 3] if k % 4 else classes[k % 3]
            correct = None if label is None else label == predicted
            if correct is False:
                wrong.append(r)
            records.append({
                "key": f"key{k}", "path": f"{classes[k % 3]}/{count - k:05d}.png",
                "label": label, "predicted": predicted, "predicted_index": classes.index(
                    predicted), "probability": round(float(rng.random()), 6),
                "top5": [[c, round(float(rng.random()), 6)] for c in classes[::-1]],
                "correct": correct, "row": r, "true_row": wrong.index(r) if r in wrong else None,
                "metrics": {"deletion": None if k % 5 == 0 else round(float(rng.random()), 6)},
            })
            keys.append(f"key{k}")
        maps = rng.random((30, 8, 8)).astype(np.float16)
        features = rng.normal(size=(30, 6)).astype(np.float16)
        store.append(records, {"maps": maps, "truemaps": maps[:len(wrong)],
                               "features": features})
    store.append([{"key": "check-x", "kind": "check", "flip_rate": 0.5}])
    return keys


def test_compact_records_write_the_same_audit_json_as_the_record_dicts(tmp_path):
    keys = _synthetic_store(tmp_path / "store")
    store = ResultStore.open(tmp_path / "store")
    found = {}
    for shard in store.shards():  # what stored_images kept before: every record dict
        for record in store.shard_records(shard):
            if record.get("key") in keys:
                found[record["key"]] = StoredImage(record, shard.name, record["row"],
                                                   record["true_row"])
    dicts = sorted(found.values(), key=lambda s: (s.record["path"], s.record["key"]))
    compact = stored_images(store, keys)
    assert [dict(i.record) for i in compact] == [i.record for i in dicts]

    cards = {"deletion": {"metric": "deletion"}}
    kwargs = {"header": {"model": "m", "feature_layer": "features"},
              "errors": [{"path": "bad.png", "reason": "not an image"}],
              "metric_cards": cards, "spray_options": {"max_maps": None}}
    before = build_audit(dicts, MapReader(store), **kwargs)
    after = build_audit(compact, MapReader(store), **kwargs)
    assert isinstance(after["images"], LazyList)
    written = write_json_atomic(tmp_path / "audit.json", after).read_bytes()
    assert written == _dict_writer_bytes(before)
    assert "dög" in written.decode("utf-8") and b'"metrics"' in written


@pytest.mark.parametrize("rows", [[], [{"a": [1, 2.5]}, {"b": float("nan"), "é": {}}]])
def test_a_lazy_list_is_written_with_the_bytes_of_its_list(tmp_path, rows):
    data = {"head": 1, "images": LazyList(len(rows), rows.__getitem__),
            "nested": {"more": LazyList(2, lambda k: [k, "x"])}, "tail": [1, {"c": None}]}
    plain = {"head": 1, "images": rows, "nested": {"more": [[0, "x"], [1, "x"]]},
             "tail": [1, {"c": None}]}
    written = write_json_atomic(tmp_path / "a.json", data).read_bytes()
    assert written == _dict_writer_bytes(plain) == write_json_atomic(tmp_path / "b.json",
                                                                      plain).read_bytes()


def _planted_folder(root, count: int = 60):
    rng = np.random.default_rng(0)
    for k in range(count):
        kind = CLASSES[k % 3]
        (root / kind).mkdir(parents=True, exist_ok=True)
        Image.fromarray(draw(kind, bool(rng.random() < 0.2), rng)).save(root / kind / f"{k}.png")
    torch.manual_seed(0)
    return cl.Classifier(PlantedNet(), labels=CLASSES, input_size=32, mean=(0, 0, 0),
                         std=(1, 1, 1), resize="squash", device="cpu")


def test_the_audit_keeps_no_record_dicts_and_a_rerun_writes_the_same_file(tmp_path,
                                                                          monkeypatch):
    clf = _planted_folder(tmp_path / "data")
    alive = []
    clustering = analysis.cluster_groups

    def spy(*args, **kwargs):
        gc.collect()  # the pass's record dicts, if anything still holds them; only they
        # have "predicted_index" (audit.json's image rows, which another test's fixture may
        # hold in this process under xdist, have "top5" too)
        alive.append(sum(1 for o in gc.get_objects()
                         if type(o) is dict and "top5" in o and "predicted_index" in o))
        return clustering(*args, **kwargs)

    monkeypatch.setattr(analysis, "cluster_groups", spy)
    result = cl.audit(clf, tmp_path / "data", out=tmp_path / "out", batch_size=16)
    assert alive == [0]
    first = (tmp_path / "out" / "audit.json").read_bytes()
    assert result.data == json.loads(first) and len(result.images) == 60
    again = cl.audit(clf, tmp_path / "data", out=tmp_path / "out", batch_size=16)
    assert (tmp_path / "out" / "audit.json").read_bytes() == first
    assert again.images == result.images


def _tagged_features(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    features = rng.normal(size=(n, 12)).astype(np.float32)
    tag = rng.random(n) < 0.15
    features[tag, :3] += 3.0
    wrong = (tag & (rng.random(n) < 0.8)) | (rng.random(n) < 0.03)
    correct = [None if k % 40 == 0 else not w for k, w in enumerate(wrong.tolist())]
    return features, correct, tag


def test_the_strategy_search_fits_on_at_most_the_cap_and_scores_everyone(monkeypatch):
    features, correct, tag = _tagged_features(900)
    uncapped = strategies.mistake_directions(features, correct, seed=0, max_images=None)
    same = strategies.mistake_directions(features, correct, seed=0, max_images=900)
    assert [d.members.tolist() for d in same.directions] == \
        [d.members.tolist() for d in uncapped.directions]

    fitted = []
    classifier = strategies._classifier

    def counting(seed):
        model = classifier(seed)
        fit = model.fit

        def fit_counted(x, y):
            fitted.append(len(x))
            return fit(x, y)

        model.fit = fit_counted
        return model

    monkeypatch.setattr(strategies, "_classifier", counting)
    capped = strategies.mistake_directions(features, correct, seed=0, max_images=300)
    assert fitted and max(fitted) <= 300
    top = capped.directions[0]
    assert len(top.scores) == 900            # every image scored, the sample's and the rest
    members = np.zeros(900, dtype=bool)
    members[top.members] = True
    assert top.auc >= 0.8 and (members & tag).sum() >= 0.8 * tag.sum()
    assert (members & tag).sum() >= 0.8 * members.sum()
    outside = np.ones(900, dtype=bool)
    outside[strategies.search_sample(correct, 300, 0)] = False
    assert (members & outside & tag).sum() >= 0.8 * (outside & tag).sum()  # scored, not fitted
