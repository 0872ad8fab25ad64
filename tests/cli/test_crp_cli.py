"""CRP (``--method crp``) through the installed ``convlens`` script: the shown map, the note
saying which channels it sums, the listing, and a bad channel as one error line."""

from __future__ import annotations

import json
from pathlib import Path

from cli_support import TINY, assert_one_error, photo, run


def test_explain_crp_says_which_channels_it_shows(tmp_path: Path) -> None:
    image, out = photo(tmp_path / "a.png"), tmp_path / "out"
    result = run("explain", str(image), *TINY, "--method", "crp", "--option", "channels=3,7",
                 "--out", str(out))
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    record = json.loads((out / "results.json").read_text())["images"][0]
    assert (out / record["files"]["crp"]).is_file()
    assert record["scales"]["crp"] > 0  # the channels' summed map is not empty
    (note,) = [n for n in record["notes"] if "crp" in n]
    assert "channels 3, 7 of layer 'features'" in note and "epsilon_plus_flat" in note

    top = run("explain", str(image), *TINY, "--method", "crp", "--out", str(tmp_path / "top"))
    assert top.returncode == 0, top.stderr
    notes = json.loads((tmp_path / "top" / "results.json").read_text())["images"][0]["notes"]
    assert any("each image's 4 most relevant channels" in n for n in notes), notes


def test_methods_lists_crp_and_a_bad_channel_is_one_error_line(tmp_path: Path) -> None:
    listing = run("methods")
    assert listing.returncode == 0
    (row,) = [line for line in listing.stdout.splitlines() if " crp " in line]
    assert "concepts" in row
    bad = run("explain", str(photo(tmp_path / "a.png")), *TINY, "--method", "crp",
              "--option", "channels=3,999", "--out", str(tmp_path / "out"))
    assert_one_error(bad, 2, "channel 999 does not exist", "channels (0..")
