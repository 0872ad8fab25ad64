"""Bad input from a new user's shell: one ``error:`` line, exit 2 (1 for bad files in a batch).

Every case goes through the installed ``convlens`` script with stderr piped, NO_COLOR unset
and FORCE_COLOR set (see cli_support.run), so a traceback, a framed Typer panel or a raw
escape code anywhere in the path fails the test.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cli_support import FACTORY, LABELS, TINY, assert_one_error, photo, run
from PIL import Image

# ------------------------------------------------------------------ Typer's own usage errors


@pytest.mark.parametrize("args,needles", [
    (["predict", "--bogus"], ["No such option: --bogus", "see 'convlens predict --help'"]),
    (["predict"], ["Missing argument", "see 'convlens predict --help'"]),
    (["predic"], ["No such command 'predic'", "Did you mean 'predict'?"]),
    (["predict", "x.png", "--top", "many"], ["Invalid value for '--top'"]),
    (["predict", "x.png", "--input-size", "0"], ["'--input-size'", "greater than or equal to 1"]),
    (["predict", "x.png", "--input-size", "-3"], ["'--input-size'"]),
    (["visualize", "--class", "1", "--steps", "-1"], ["'--steps'"]),
    (["visualize", "--class", "1", "--size", "4"], ["'--size'", "8"]),
    (["visualize", "--class", "1", "--seed", "-1"], ["'--seed'"]),
    (["visualize", "--class", "1", "--seed", "x"], ["'--seed'"]),
    (["methods", "extra"], ["unexpected extra argument"]),
    # inf passes a min= bound: float options refuse it (and nan) themselves
    (["serve", "--max-upload-mb", "inf"], ["'--max-upload-mb'", "finite number"]),
    (["audit", "x", "--engine", "ray", "--gpus-per-actor", "inf"],
     ["'--gpus-per-actor'", "finite number"]),
])
def test_usage_errors_are_one_line_with_exit_2(args: list[str], needles: list[str]) -> None:
    assert_one_error(run(*args), 2, *needles)


# ---------------------------------------------------- model options against model sources


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    text = tmp_path / "notes.txt"
    text.write_text("my notes about the model\n")
    two = tmp_path / "two_labels.txt"
    two.write_text("ant\nbee\n")
    whole = tmp_path / "whole.pt"
    from tiny_models import TinyVGG  # tests/ is on sys.path (tests/conftest.py)

    torch.save(TinyVGG(classes=4), whole)
    (tmp_path / "folder").mkdir()
    return {"photo": photo(tmp_path / "p.png"), "text": text, "two": two, "whole": whole,
            "folder": tmp_path / "folder", "out_file": text, "tmp": tmp_path}


FACTORY_ONLY = ["--model", FACTORY, "--input-size", "32", "--device", "cpu"]


@pytest.mark.parametrize("args,needles", [
    # the bundled model ships its weights: --weights / --trust-model cannot apply
    (["--weights", "{text}"], ["--weights", "cannot apply", "bundled model"]),
    (["--trust-model"], ["--trust-model", "cannot apply", "drop the flag"]),
    # a factory: weights are sniffed, not guessed from the name
    ([*FACTORY_ONLY, "--weights", "{text}"],
     ["notes.txt is a text file, not weights", ".safetensors"]),
    ([*FACTORY_ONLY, "--weights", "{folder}"], ["is a folder", ".safetensors"]),
    ([*FACTORY_ONLY, "--weights", "{photo}"], ["is an image"]),
    ([*FACTORY_ONLY, "--weights", "{tmp}/missing.safetensors"], ["weights file not found"]),
    ([*FACTORY_ONLY, "--trust-model"], ["--trust-model", "cannot apply", "no weights file"]),
    ([*FACTORY_ONLY, "--weights", "{whole}"], ["not a plain state dict", "--trust-model"]),
    (["--model", "torchvision:resnet18", "--device", "cpu"], ["local weights file"]),
    (["--model", "{folder}"], ["is a folder"]),
    (["--model", "{text}"], ["is a text file", "TorchScript"]),
    (["--model", "{tmp}/nothing.pt"], ["cannot find model"]),
    # labels
    ([*TINY, "--labels", "{tmp}/missing.txt"], ["labels file not found"]),
    ([*TINY, "--labels", "{two}"], ["2 labels in", "the model has 4 outputs"]),
    ([*TINY, "--labels", "{folder}"], ["is a folder"]),
    ([*TINY, "--labels", "{photo}"], ["not UTF-8 text"]),
    # preprocessing values
    ([*TINY, "--mean", "abc"], ["--mean takes comma-separated finite numbers"]),
    ([*TINY, "--mean", "0.5", "--std", "0.5"], ["first convolution takes 3 channels"]),
    ([*TINY, "--std", "0,1,1"], ["std > 0"]),
    ([*TINY, "--std", "nan,1,1"], ["--std takes comma-separated finite numbers"]),
    ([*TINY, "--mean", "1e999,0,0"], ["--mean takes comma-separated finite numbers"]),
    ([*TINY, "--resize", "sideways"], ["unknown resize mode 'sideways'", "center_crop"]),
    ([*TINY[:-2], "--input-size", "1"], ["fails on a 3x1x1 input"]),  # the last value wins
    # an input above the photo pixel cap: refused before the model is built, not an
    # allocation traceback
    ([*TINY[:-2], "--input-size", "60000"], ["input_size 60000x60000", "above the limit of "
                                             "64,000,000", "(CLI: --input-size)"]),
    # devices
    ([*TINY[:-2], "--device", "gpu9"], ["unknown device 'gpu9'"]),
])
def test_bad_model_options_are_one_line_with_exit_2(files, args: list[str],
                                                    needles: list[str]) -> None:
    args = [a.format(**files) for a in args]
    assert_one_error(run("predict", str(files["photo"]), *args), 2, *needles)


@pytest.mark.parametrize("option,name,content,kind", [
    ("--weights", ".env", b"SECRET=hunter2\n", "is a text file"),
    ("--weights", "id_ed25519", b"-----BEGIN hunter2 PRIVATE KEY-----\n", "text file"),
    ("--weights", "w.pt", b"SECRET=hunter2\x01\x02", "not a recognised weights format"),
    ("--weights", "w.safetensors", b'\x16\0\0\0\0\0\0\0{"hunter2": "hunter2"', "safetensors"),
    ("--weights", "w.zip", None, "is a ZIP archive"),
    ("--model", ".env", b"SECRET=hunter2\n", "is a text file"),
])
def test_a_file_given_as_weights_or_model_is_named_never_quoted(
        files, option: str, name: str, content: bytes | None, kind: str) -> None:
    # a .env or a key file passed by mistake: its content must never reach a CI log
    path = files["tmp"] / name
    if content is None:
        import zipfile

        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("hunter2.txt", "SECRET=hunter2")
    else:
        path.write_bytes(content)
    model = [] if option == "--model" else FACTORY_ONLY
    result = run("predict", str(files["photo"]), *model, option, str(path), "--device", "cpu")
    assert_one_error(result, 2, str(path), kind)
    assert "hunter2" not in result.stdout + result.stderr


def test_the_weights_only_refusal_carries_no_escape_codes(files) -> None:
    # torch's own message wraps words in ANSI bold codes; they must not reach stderr
    line = assert_one_error(run("predict", str(files["photo"]), "--model", str(files["whole"])),
                            2, "Weights only load failed", "state_dict")
    assert "[1m" not in line


def test_control_characters_in_a_path_are_shown_not_sent(tmp_path: Path) -> None:
    line = assert_one_error(run("layers", "--model", f"{tmp_path}/\x1b[31mred.pt"), 2,
                            "cannot find model")
    assert "\\x1b[31mred.pt" in line


@pytest.mark.parametrize("source,needles", [
    # a factory that raises: the spec, the exception's type and message; never a traceback
    ("json:JSONDecodeError", ["'json:JSONDecodeError' raised TypeError",
                              "missing 3 required positional arguments"]),
    # exit() in a factory used to end the command with exit code 0, silently
    ("builtins:exit", ["'builtins:exit' raised SystemExit", "must return an nn.Module"]),
    ("builtins:dict", ["returned dict, not an nn.Module"]),
    ("{tmp}/exits.py:build", ["importing", "exits.py", "SystemExit", "exit(3)"]),
    ("{tmp}/raises.py:build", ["importing", "raises.py", "RuntimeError: boom"]),
])
def test_a_failing_model_factory_is_one_line_with_exit_2(files, source: str,
                                                        needles: list[str]) -> None:
    (files["tmp"] / "exits.py").write_text("import sys\nsys.exit(3)\n")
    (files["tmp"] / "raises.py").write_text("raise RuntimeError('boom')\n")
    result = run("predict", str(files["photo"]), "--model", source.format(**files),
                 "--device", "cpu")
    assert_one_error(result, 2, *needles)


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_on_a_cpu_machine(files) -> None:
    assert_one_error(run("predict", str(files["photo"]), *TINY[:-2], "--device", "cuda"), 2,
                     "CUDA is not available", "--device cpu")


def test_preprocessing_overrides_apply_to_the_bundled_model(files) -> None:
    # --input-size/--resize/--mean/--std replace the bundled model's ImageNet settings
    result = run("predict", str(files["photo"]), "--input-size", "64", "--resize", "pad",
                 "--device", "cpu", "--top", "1")
    assert result.returncode == 0, result.stderr


# ---------------------------------------------------------------------------- images


def test_a_missing_image_in_a_batch_exits_1(files) -> None:
    result = run("predict", str(files["photo"]), str(files["tmp"] / "nope.png"), *TINY)
    assert_one_error(result, 1, "nope.png", "not found")
    assert "p.png" in result.stdout  # the good one was done


def test_pixel_cap_hint_names_an_option_that_exists(tmp_path: Path) -> None:
    big = photo(tmp_path / "big.png", (60, 50))  # 3,000 pixels
    result = run("predict", str(big), *TINY, "--max-pixels", "2000")
    line = assert_one_error(result, 1, "60x50 = 3,000 pixels", "above the limit of 2,000 pixels",
                            "--max-pixels")
    assert "max_pixels=" in line  # the API spelling is named as such
    assert run("predict", str(big), *TINY, "--max-pixels", "3000").returncode == 0
    for command in ("predict", "activations", "visualize"):
        assert "--max-pixels" in run(command, "--help", FORCE_COLOR=None).stdout


def test_the_cli_and_library_caps_agree() -> None:
    from convlens.cli._common import DEFAULT_MAX_PIXELS as cli_default
    from convlens.io.images import DEFAULT_MAX_PIXELS

    assert cli_default == DEFAULT_MAX_PIXELS
    from convlens.preprocessing import MAX_INPUT_PIXELS  # the input size's cap

    assert MAX_INPUT_PIXELS == DEFAULT_MAX_PIXELS
    help_text = run("predict", "--help", FORCE_COLOR=None).stdout
    assert f"{DEFAULT_MAX_PIXELS:,}" in " ".join(help_text.split())


def test_max_pixels_above_what_pillow_decodes_is_refused(files) -> None:
    assert_one_error(run("predict", str(files["photo"]), *TINY, "--max-pixels", str(10**12)), 2,
                     "--max-pixels can be at most")


# --------------------------------------------------------------- visualize, activations


VIS = ["visualize", "--class", "1", "--steps", "1", "--size", "8", *TINY]


@pytest.mark.parametrize("extra,needles", [
    (["--lr", "-1"], ["lr must be a number > 0", "-1"]),
    (["--lr", "0"], ["lr must be a number > 0"]),
    (["--lr", "nan"], ["lr must be a number > 0"]),
    (["--resize", "squash"], ["--resize", "--deepdream"]),
    (["--max-pixels", "100"], ["--max-pixels", "--deepdream"]),
    (["--deepdream", "{tmp}/missing.png"], ["missing.png", "not found"]),
])
def test_visualize_values(files, extra: list[str], needles: list[str]) -> None:
    extra = [a.format(**files) for a in extra]
    assert_one_error(run(*VIS, "--out", str(files["tmp"] / "vis"), *extra), 2, *needles)


def test_visualize_unknown_class_gets_did_you_mean(files) -> None:
    args = ["visualize", "--class", "cta", "--steps", "1", "--size", "8", *TINY]
    assert_one_error(run(*args, "--out", str(files["tmp"] / "v")), 2,
                     "unknown class name 'cta'", "did you mean 'cat'?")


@pytest.mark.parametrize("command", ["visualize", "activations"])
def test_out_must_be_a_writable_folder(files, command: str) -> None:
    args = VIS if command == "visualize" else ["activations", str(files["photo"]), *TINY]
    line = assert_one_error(run(*args, "--out", str(files["out_file"])), 2,
                            f"--out: cannot write {files['out_file']}", "is a file, not a folder")
    assert "choose another output folder" in line
    assert files["out_file"].read_text() == "my notes about the model\n"  # untouched
    assert_one_error(run(*args, "--out", str(files["out_file"] / "sub")), 2, "--out: ",
                     "a part of the path is a file, not a folder")


@pytest.mark.parametrize("command", ["visualize", "activations"])
def test_out_in_a_read_only_folder(files, monkeypatch, command: str) -> None:
    """An existing folder nobody may write into is refused before the model loads.

    chmod 500 is what a user meets, but root ignores it (the tests may run as root), so
    creating a file in the folder is refused here the way the kernel would refuse it.
    In-process (CliRunner), so that the patch reaches the command."""
    import errno
    import os

    from typer.testing import CliRunner

    from convlens.cli.app import app

    locked = files["tmp"] / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    real_open = os.open

    def kernel_open(path, flags, *args, **kwargs):
        if Path(path).parent == locked and flags & os.O_CREAT:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real_open(path, flags, *args, **kwargs)

    def no_model(self):
        raise AssertionError("the model was loaded before --out was checked")

    monkeypatch.setattr(os, "open", kernel_open)
    monkeypatch.setattr("convlens.cli._common.ModelOptions.load", no_model)
    args = VIS if command == "visualize" else ["activations", str(files["photo"]), *TINY]
    try:
        result = CliRunner().invoke(app, [*args, "--out", str(locked)])
    finally:
        locked.chmod(0o700)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output + result.stderr
    assert len(lines) == 1 and "Traceback" not in result.output + result.stderr, result.stderr
    assert lines[0] == (f"error: --out: cannot write {locked}: permission denied; choose a "
                        "folder you can write to"), lines[0]
    assert list(locked.iterdir()) == []  # no probe left behind


def test_activations_missing_image_is_an_error(files) -> None:
    assert_one_error(run("activations", str(files["tmp"] / "nope.png"), *TINY), 2, "not found")


def _only_finished_files(folder: Path) -> list[str]:
    """The folder's files, after checking that no temporary is left (convlens's own marker,
    manifest and lock file aside)."""
    names = sorted(path.name for path in folder.iterdir() if path.name not in _FOLDER_FILES)
    assert not [name for name in names if name.startswith(".") or name.endswith(".tmp")], names
    return names


_FOLDER_FILES = (".convlens-output", ".convlens-manifest", ".convlens-lock")


def test_visualize_writes_atomically_and_replaces_old_files(files) -> None:
    out = files["tmp"] / "vis"
    assert run(*VIS, "--out", str(out)).returncode == 0
    first = (out / "results.json").read_text()
    result = run(*VIS, "--out", str(out), "--seed", "1")
    assert result.returncode == 0, result.stderr
    assert (out / "results.json").read_text() != first
    names = _only_finished_files(out)
    assert "grid.png" in names and "results.json" in names
    record = json.loads((out / "results.json").read_text())
    for image in record["images"]:
        assert (out / image["file"]).is_file()


def test_activations_honours_resize(tmp_path: Path) -> None:
    wide = tmp_path / "wide.png"
    left = Image.new("RGB", (96, 32), (0, 0, 0))
    left.paste(Image.new("RGB", (32, 32), (255, 255, 255)), (0, 0))  # white only at the left
    left.save(wide)
    grids = {}
    for mode in ("center_crop", "squash", "pad"):
        out = tmp_path / mode
        result = run("activations", str(wide), *TINY, "--resize", mode, "--out", str(out))
        assert result.returncode == 0, result.stderr
        (png,) = [name for name in _only_finished_files(out) if name.endswith(".png")]
        grids[mode] = (out / png).read_bytes()
    # the centre crop never sees the white square; squash and pad do, differently
    assert len(set(grids.values())) == 3


def test_visualize_deepdream_honours_resize(files) -> None:
    wide = photo(files["tmp"] / "wide.png", (64, 32))
    sizes = {}
    for mode in (None, "squash"):
        out = files["tmp"] / f"dream-{mode}"
        extra = ["--resize", mode] if mode else []
        result = run("visualize", "--layer", "features", "--deepdream", str(wide), "--steps", "1",
                     *TINY, *extra, "--out", str(out))
        assert result.returncode == 0, result.stderr
        sizes[mode] = json.loads((out / "results.json").read_text())["size"]
    assert sizes[None] == [32, 64]      # aspect kept, shorter side at --input-size
    assert sizes["squash"] == [32, 32]  # as the model sees it


def test_labels_fixture_is_what_the_tests_assume() -> None:
    assert LABELS.read_text().split() == ["ant", "bee", "cat", "dog"]
