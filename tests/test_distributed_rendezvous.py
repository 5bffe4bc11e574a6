"""The rendezvous of multi-process training (wbc.train.distributed), checked without starting a process group: fast,
unlike tests/test_scale_out.py's runs."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")


def test_a_launcher_without_master_addr_is_one_line_at_once(monkeypatch) -> None:
    """RANK, WORLD_SIZE and MASTER_PORT set, MASTER_ADDR not: each rank but 0 waited the whole rendezvous timeout
    (120 s) for host "?" and then blamed the network (before wbc 0.34.0's last mend); torch alone says at once."""
    import time

    from wbc.errors import WbcError
    from wbc.train.distributed import DistInfo, _rendezvous

    monkeypatch.delenv("MASTER_ADDR", raising=False)
    monkeypatch.setenv("MASTER_PORT", "29511")
    start = time.monotonic()
    with pytest.raises(WbcError, match=r"^process 1 of 2: MASTER_ADDR not set; a launcher") as exc:
        _rendezvous(DistInfo(1, 2, 0))
    assert time.monotonic() - start < 5 and "\n" not in str(exc.value)
