"""The example fields shipped in the package: the quick start needs nothing but the clone."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from wbc.errors import WbcError
from wbc.examples import EXAMPLES_DIR, LICENCE_NAME, copy_examples, example_fields
from wbc.io import read_image


def test_a_handful_of_small_licensed_fields_ship_with_the_package() -> None:
    fields = example_fields()
    assert 5 <= len(fields) <= 8
    assert sum(p.stat().st_size for p in fields) < 1_000_000
    assert "MIT License" in (EXAMPLES_DIR / LICENCE_NAME).read_text()
    for p in fields:
        assert read_image(p).shape == (480, 640, 3)


def test_copy_examples_keeps_existing_files_and_checks_the_target(tmp_path: Path) -> None:
    out = tmp_path / "raw"
    out.mkdir()
    (out / example_fields()[0].name).write_bytes(b"mine")
    copied = copy_examples(out)
    assert [p.name for p in copied] == [p.name for p in example_fields()[1:]]  # not counted as an example field
    assert (out / example_fields()[0].name).read_bytes() == b"mine"  # never overwritten
    assert (out / LICENCE_NAME).is_file()
    assert len(copy_examples(tmp_path / "two", n=2)) == 2
    (tmp_path / "file").write_text("x")
    with pytest.raises(WbcError, match="not a folder"):
        copy_examples(tmp_path / "file")


def test_wbc_examples_works_without_any_data_root(tmp_path: Path) -> None:
    env = dict(os.environ, WBC_DATA_DIR=str(tmp_path / "no-such-data"), COLUMNS="200")
    out = subprocess.run([sys.executable, "-m", "wbc", "examples"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert len(list((tmp_path / "data" / "raw_images").glob("*.jpg"))) == len(example_fields())


@pytest.mark.real_data
def test_the_example_fields_table_gives_each_field_s_bccd_labels(real_data: Path) -> None:
    """The table read "(two cells, no single label)" for BloodImage_00031, whose BCCD label is "NEUTROPHIL,NEUTROPHIL":
    beside `wbc analyze`'s two eosinophils, nothing showed that both cells are named wrongly (wbc 0.35.0)."""
    import csv

    rows = {r["Image"]: r["Category"] for r in csv.DictReader((real_data / "bccd" / "labels.csv").open())}
    table = {}
    for line in (EXAMPLES_DIR / "README.md").read_text(encoding="utf-8").splitlines():
        cols = [c.strip() for c in line.strip("|").split("|")]
        if len(cols) == 3 and cols[0].startswith("BloodImage_"):
            table[cols[0]] = cols[2]
    assert sorted(table) == sorted(p.name for p in example_fields())
    for name, shown in table.items():
        bccd = rows[str(int(name.removesuffix(".jpg").split("_")[1]))]
        assert shown == ", ".join(c.strip().lower() for c in bccd.split(",")), name


def test_a_copy_of_the_examples_cut_short_leaves_no_truncated_field(tmp_path: Path) -> None:
    """`wbc examples` copied in place: a copy cut short (a full disk; here a file-size limit) left a truncated
    BloodImage_*.jpg, which every later `wbc examples` kept and counted among the six, and `wbc analyze` then skipped
    as a truncated JPEG (before wbc 0.36.0). Now each file is written whole or not at all, and a field holding the
    beginning of the shipped one only (as such a copy left it) is copied again."""
    out = tmp_path / "raw"
    limited = ("import resource, sys; resource.setrlimit(resource.RLIMIT_FSIZE, (10240, 10240)); "
               "from wbc.cli import main; sys.argv = ['wbc', 'examples', '-o', sys.argv[1]]; main()")
    r = subprocess.run([sys.executable, "-c", limited, str(out)], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, WBC_NO_REEXEC="1", COLUMNS="200"))
    assert r.returncode == 1 and "cannot write the examples there (File too large)" in r.stderr, r.stderr
    assert [p.name for p in out.iterdir()] == []  # no field cut short, no temporary file
    first = example_fields()[0]
    (out / first.name).write_bytes(first.read_bytes()[:10240])  # as wbc 0.35.0 left it
    again = subprocess.run([sys.executable, "-m", "wbc", "examples", "-o", str(out)], capture_output=True, text=True,
                           timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert again.returncode == 0 and f"{len(example_fields())} example smear fields" in again.stderr, again.stderr
    for src in [*example_fields(), EXAMPLES_DIR / LICENCE_NAME]:
        assert (out / src.name).read_bytes() == src.read_bytes(), src.name


def test_wbc_examples_names_a_file_of_its_own_it_kept_and_does_not_count_it(tmp_path: Path) -> None:
    """A user's own file named as an example field was kept (rightly) but counted among "6 example smear fields"."""
    out = tmp_path / "raw"
    out.mkdir()
    first = example_fields()[0]
    (out / first.name).write_bytes(b"my own field")
    r = subprocess.run([sys.executable, "-m", "wbc", "examples", "-o", str(out)], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, COLUMNS="200"))
    assert r.returncode == 0, r.stderr
    assert f"note: {out / first.name}: kept, your own file (not the shipped example field)" in r.stderr
    assert f"{len(example_fields()) - 1} example smear fields" in r.stderr
    assert (out / first.name).read_bytes() == b"my own field"


def test_wbc_examples_keeps_a_field_it_cannot_read_names_it_and_copies_the_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A same-named field another user owns (mode 600 in a shared data/raw_images/) was read whole to compare it: the
    PermissionError stopped the copy as "cannot write the examples there (Permission denied)", no other field and no
    licence copied (wbc 0.36.0's first cut; before, it was kept unread). It is kept unread and named."""
    from typer.testing import CliRunner

    from wbc.cli import app

    out = tmp_path / "raw"
    out.mkdir()
    first = example_fields()[0]
    theirs = out / first.name
    theirs.write_bytes(first.read_bytes())
    read_bytes = Path.read_bytes

    def unreadable(self: Path) -> bytes:
        if self == theirs:
            raise PermissionError(13, "Permission denied", str(self))
        return read_bytes(self)

    monkeypatch.setattr(Path, "read_bytes", unreadable)
    copied = copy_examples(out)
    assert [p.name for p in copied] == [p.name for p in example_fields()[1:]]
    assert (out / LICENCE_NAME).is_file()
    kept: dict[Path, str] = {}
    copy_examples(out, kept=kept)
    assert kept == {theirs: "cannot be read to compare with the shipped field (Permission denied)"}
    r = CliRunner().invoke(app, ["examples", "-o", str(out)], env={"COLUMNS": "300"})
    assert r.exit_code == 0, r.output
    said = " ".join(r.output.split())
    assert f"note: {theirs}: kept, cannot be read to compare with the shipped field (Permission denied)" in said
    assert f"{len(example_fields()) - 1} example smear fields" in said
