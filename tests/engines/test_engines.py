"""Engines without a Ray cluster: choosing one, the local engine, the Ray engine's pieces
called directly (decoding, the actor, the plan), and the message when Ray is missing."""

from __future__ import annotations

import pickle
import sys

import numpy as np
import pytest
from planted_bias import planted_classifier, planted_folder_with_a_broken_file

import convlens as cl
from convlens.auditing.passes import PassSettings, audit_batch
from convlens.engines import EngineError, WorkerFactory, get_engine
from convlens.engines.local import LocalEngine
from convlens.engines.ray import RayEngine, UnitActor, decode_units, ship_code_by_value
from convlens.io.datasets import batches, read_dataset


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return planted_folder_with_a_broken_file(tmp_path_factory.mktemp("engines"), every=10)


@pytest.fixture(scope="module")
def classifier(folder):
    return planted_classifier(folder)


def test_get_engine_names_objects_and_refusals():
    assert isinstance(get_engine(None), LocalEngine)
    assert get_engine("local", workers=2).workers == 2
    engine = RayEngine(actors=3)
    assert get_engine(engine) is engine
    with pytest.raises(EngineError, match="unknown engine 'spark'.*local, ray"):
        get_engine("spark")
    with pytest.raises(EngineError, match="LocalEngine.*actors"):
        get_engine("local", actors=2)
    with pytest.raises(EngineError, match="actors must be a positive integer"):
        RayEngine(actors=0)


def test_missing_ray_names_the_extra(monkeypatch, folder, classifier):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(EngineError, match=r"pip install 'convlens\[ray\]'.*--engine local"):
        cl.audit(classifier, folder["data"], out=folder["root"] / "no-ray", engine="ray")


class _Cluster:
    def __init__(self, **resources):
        self.resources = resources

    def cluster_resources(self):
        return self.resources


def test_plan_uses_gpus_when_the_cluster_has_them():
    assert RayEngine().plan(_Cluster(CPU=16.0, GPU=4.0)) == (4, 1, 1.0)
    assert RayEngine().plan(_Cluster(CPU=8.0)) == (8, 1, 0.0)
    assert RayEngine(cpus_per_actor=2).plan(_Cluster(CPU=8.0)) == (4, 2, 0.0)
    assert RayEngine(gpus_per_actor=0.5).plan(_Cluster(CPU=8.0, GPU=2.0)) == (4, 1, 0.5)
    with pytest.raises(EngineError, match="need 3 GPUs; the cluster has 2"):
        RayEngine(actors=3).plan(_Cluster(CPU=8.0, GPU=2.0))
    # Ray would wait forever for CPUs it does not have: refused with the numbers
    with pytest.raises(EngineError, match="4 actor.* need 4 CPUs; the cluster has 2"):
        RayEngine(actors=4).plan(_Cluster(CPU=2.0))
    with pytest.raises(EngineError, match="x 2 CPU plus 1 to decode need 5 CPUs"):
        RayEngine(actors=2, cpus_per_actor=2).plan(_Cluster(CPU=4.0, GPU=2.0))
    assert RayEngine().plan(_Cluster(CPU=4.0, GPU=8.0)) == (3, 1, 1.0)  # a CPU left to decode


def test_decoding_and_the_actor_give_the_local_batches_and_results(folder, classifier):
    """The Ray pipeline's two functions, called here without Ray, reproduce the local
    engine's batches and the worker's output exactly (same items, same bytes)."""
    dataset = read_dataset(folder["data"])
    settings = PassSettings(method="gradcam", layer=classifier.default_layer(), batch_size=4)
    factory = WorkerFactory(audit_batch, classifier, settings=settings)
    local = list(LocalEngine().map_units(dataset.entries, classifier.preprocessing, factory,
                                         batch_size=4, salt="s"))
    entries = dataset.entries
    rows = {"unit": np.arange(len(local)), "start": np.arange(0, len(entries), 4),
            "entries": np.array([pickle.dumps(entries[s:s + 4])
                                 for s in range(0, len(entries), 4)], dtype=object)}
    decoded = decode_units(rows, preprocessing=classifier.preprocessing, salt="s",
                           skip=frozenset(), max_pixels=None)
    out = UnitActor(pickle.loads(pickle.dumps(factory)))(decoded)
    ray = sys.modules.get("ray")
    assert ray is None or not ray.is_initialized()  # the actor never starts Ray by itself
    assert len(out["unit"]) == len(local)
    for unit, meta, blob, expected in zip(out["unit"], out["meta"], out["result"], local):
        batch = pickle.loads(meta)
        assert unit == expected.unit
        assert [(i.index, i.key) for i in batch.items] == [
            (i.index, i.key) for i in expected.batch.items]
        assert [p.reason for p in batch.problems] == [p.reason for p in expected.batch.problems]
        result = pickle.loads(blob)
        if expected.result is None:
            assert result is None
            continue
        assert result[0] == expected.result[0]
        for name in ("maps", "truemaps"):
            np.testing.assert_array_equal(result[1][name], expected.result[1][name])
    assert sum(len(pickle.loads(m).problems) for m in out["meta"]) == 1  # broken.png


def test_local_engine_is_the_batches_of_io(folder, classifier):
    entries = read_dataset(folder["data"]).entries
    seen = []

    class Factory:
        def build(self, device=None):
            return lambda batch: seen.append(batch.x.shape[0]) or batch.x.shape[0]

    units = list(LocalEngine().map_units(entries, classifier.preprocessing, Factory(),
                                         batch_size=7))
    expected = [b.x.shape[0] for b in batches(entries, classifier.preprocessing, batch_size=7)
                if b.x is not None]
    assert seen == expected and [u.result for u in units if u.result] == expected
    assert all(u.batch.x is None for u in units)


def test_model_code_from_local_files_travels_by_value(classifier):
    registered = []

    class FakeCloudpickle:
        def register_pickle_by_value(self, module):
            registered.append(module.__name__)

    class FakeRay:
        cloudpickle = FakeCloudpickle()

    factory = WorkerFactory(audit_batch, classifier, settings=PassSettings())
    names = ship_code_by_value(FakeRay(), factory)
    assert names == ["planted_bias"] == registered  # tests/planted_bias.py, not torch.nn


def test_a_foreign_error_in_a_worker_becomes_one_line_naming_it():
    from convlens.engines.ray import _worker_error

    text = ("ray::MapWorker.submit() (pid=1)\n  File \"x.py\", line 3, in f\n"
            "ray.exceptions.UserCodeException: UDF failed\n"
            "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n")
    error = _worker_error(Exception(text))
    assert isinstance(error, EngineError)
    assert str(error) == ("a Ray worker failed: RuntimeError: CUDA out of memory. Tried to "
                          "allocate 2.00 GiB")


@pytest.mark.parametrize("command", ["explain", "audit", "evaluate"])
@pytest.mark.parametrize(("flags", "message"), [
    (["--engine", "spark"], "--engine must be one of local, ray; got 'spark'"),
    (["--actors", "2"], "--actors only apply with --engine ray"),
    (["--ray-address", "auto", "--gpus-per-actor", "1"],
     "--ray-address, --gpus-per-actor only apply with --engine ray"),
])
def test_cli_engine_options_are_checked_before_anything_runs(tmp_path, command, flags, message):
    from typer.testing import CliRunner

    from convlens.cli.app import app

    result = CliRunner().invoke(app, [command, str(tmp_path), *flags])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_the_cli_mirrors_the_library_defaults():
    """The CLI spells these out to keep --help free of torch; they must not drift."""
    import inspect

    from convlens.auditing.run import MAX_CLUSTER_MAPS
    from convlens.cli.audit import audit
    from convlens.engines import ENGINES, engine_names

    assert ENGINES == engine_names() == ("local", "ray")  # the CLI reads engine_names()
    assert inspect.signature(audit).parameters["max_cluster_maps"].default.default == \
        MAX_CLUSTER_MAPS


def test_an_address_that_does_not_answer_fails_in_one_line(monkeypatch):
    import socket

    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr("ray.is_initialized", lambda: False)
    with pytest.raises(EngineError, match=rf"could not reach the Ray cluster at 127.0.0.1:{port} "
                                          r"\(Connection refused\); check --ray-address"):
        RayEngine(address=f"127.0.0.1:{port}").connect()
