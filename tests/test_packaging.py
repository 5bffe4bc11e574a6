"""What the package ships and says about itself: install hints, licences, build requirements, version."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_install_hints_never_name_a_pypi_wbc() -> None:
    """wbc is installed from its checkout (``pip install -e '.[extra]'``) and is not on PyPI: before wbc 0.34.0 two
    messages and docs/scale_out.md said ``pip install 'wbc[...]'``, which fails today and would install a stranger's
    package (on every Ray worker) if anyone registered the name."""
    said = []
    for p in [*ROOT.joinpath("src/wbc").rglob("*.py"), ROOT / "README.md", *ROOT.joinpath("docs").glob("*.md")]:
        for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1):
            if re.search(r"pip install [\"']?wbc\b", line):
                said.append(f"{p.relative_to(ROOT)}:{i}")
    assert not said, said
