"""The training corrections on the planted tag => square net: RR-ClArC and the last layer.

Each is measured as the issue measures a correction: the tag's effect (clean accuracy minus
accuracy on tagged images of the other classes) and clean accuracy on a fresh draw the audit
never saw; the user's network is left as it was, and a killed RR-ClArC run resumes.
"""

from __future__ import annotations

import pytest
import torch

planted_bias = pytest.importorskip("planted_bias")

import convlens as cl  # noqa: E402
from convlens.correction.run import correct  # noqa: E402
from convlens.errors import CorrectionError  # noqa: E402


@pytest.fixture(scope="module")
def audited(tmp_path_factory):
    root = tmp_path_factory.mktemp("training-methods")
    planted = planted_bias.write_planted_folder(root, planted_bias.planted_case(0))
    clf = planted_bias.planted_classifier(planted)
    return clf, cl.audit(clf, planted["data"], out=root / "audit", seed=0), root


def _training_folder(root, seed: int = 0, scale: int = 5):
    """The model's own training recipe (the tag only on squares), one image in ``scale``."""
    from PIL import Image

    counts = {k: v // scale for k, v in planted_bias.training_counts().items()}
    images, labels, tags = planted_bias.make_set(counts, seed=seed + 100)
    folder = root / "train"
    for k, image in enumerate(images):
        target = folder / planted_bias.CLASSES[labels[k]]
        target.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(target / f"{k:04d}{'-tag' if tags[k] else ''}.png")
    return folder, int(tags.sum())


def _effect(module) -> tuple[float, float]:
    images, labels, tagged = planted_bias.make_set(planted_bias.audit_counts(), seed=50)
    x, y = planted_bias.to_tensor(images), torch.as_tensor(labels)
    tag = torch.as_tensor(tagged).bool()
    other = tag & (y != planted_bias.CLASSES.index(planted_bias.TAG_CLASS))
    with torch.no_grad():
        predicted = module.eval()(x).argmax(1)
    clean = (predicted[~tag] == y[~tag]).float().mean().item()
    return clean, clean - (predicted[other] == y[other]).float().mean().item()


def test_last_layer_refit_on_the_training_data_removes_the_tag(audited, snapshot) -> None:
    clf, audit, root = audited
    train, tagged = _training_folder(root)
    watch = snapshot(clf.module)
    fixed = correct(clf, audit, 1, method="last-layer", data=train)
    watch.assert_unchanged()
    assert fixed.data["flagged"] == tagged  # the tagged squares, found along the direction
    clean_before, effect_before = _effect(clf.module)
    clean_after, effect_after = _effect(fixed.classifier.module)
    assert effect_before > 0.5
    assert effect_after <= 0.2 * effect_before and clean_after >= clean_before - 0.01
    assert set(fixed.changed) == {"fc.weight", "fc.bias"}
    chosen = fixed.history[-1]["chosen_alpha"]
    assert chosen in [h["alpha"] for h in fixed.history[:-1]]


def test_rrclarc_turns_the_output_away_from_the_direction(audited, snapshot) -> None:
    clf, audit, _root = audited
    watch = snapshot(clf.module)
    fixed = correct(clf, audit, 1, method="rrclarc", epochs=4, strength=10.0,
                    learning_rate=1e-2)
    watch.assert_unchanged()
    first, last = fixed.history[0], fixed.history[-1]
    assert last["alignment"] < first["alignment"] / 3
    # on a linear head over average pooling the penalty is sum_k (W_k . v)^2: check it
    v = fixed.direction.vector.sum(dim=(1, 2))
    before = (clf.module.fc.weight @ (v / v.norm())).pow(2).sum()
    after = (fixed.classifier.module.fc.weight @ (v / v.norm())).pow(2).sum()
    assert after < before / 3
    assert _effect(fixed.classifier.module)[1] < _effect(clf.module)[1]
    assert all(p.requires_grad for p in fixed.classifier.module.parameters())


def test_a_killed_rrclarc_run_resumes_to_the_same_weights(audited, tmp_path) -> None:
    clf, audit, _root = audited
    whole = correct(clf, audit, 1, method="rrclarc", epochs=3, checkpoint=tmp_path / "a")

    def killer(event) -> None:
        if event.stage == "train" and event.done == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        correct(clf, audit, 1, method="rrclarc", epochs=3, checkpoint=tmp_path / "b",
                progress=killer)
    assert (tmp_path / "b" / "checkpoint.pt").is_file()
    resumed = correct(clf, audit, 1, method="rrclarc", epochs=3, checkpoint=tmp_path / "b")
    assert "resumed from the checkpoint after epoch 2" in resumed.notes
    assert resumed.history == whole.history
    for key, tensor in whole.changed.items():
        torch.testing.assert_close(resumed.changed[key], tensor, rtol=0, atol=1e-6)
    other = correct(clf, audit, 1, method="rrclarc", epochs=3, strength=1.0,
                    checkpoint=tmp_path / "b")  # other settings: starts again, and says so
    assert any("other settings" in note for note in other.notes)


def test_training_data_with_labels_the_model_does_not_know_is_one_clear_error(
        audited, tmp_path) -> None:
    clf, audit, _root = audited
    (tmp_path / "hexagon").mkdir()
    from PIL import Image

    Image.new("RGB", (32, 32)).save(tmp_path / "hexagon" / "a.png")
    with pytest.raises(CorrectionError, match="hexagon are not among the model's 3 labels"):
        correct(clf, audit, 1, method="last-layer", data=tmp_path)
