"""The default model that ships inside the package: present, small, well-formed, and still accurate."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from wbc.classify import classify_paths
from wbc.data import read_manifest
from wbc.labels import CLASSES
from wbc.model import load_model
from wbc.paths import DEFAULT_MODEL

REPO = Path(__file__).resolve().parents[1]


def test_default_model_ships_with_metadata() -> None:
    assert DEFAULT_MODEL.is_file(), "the default model must be committed in src/wbc/models/default/"
    assert DEFAULT_MODEL.stat().st_size <= 25 * 1024 * 1024
    clf = load_model()
    info = clf.info
    assert clf.classes == list(CLASSES)
    assert info.input_size >= 64 and len(info.mean) == len(info.std) == 3
    assert 0.1 < info.temperature < 10 and 0 <= info.review_threshold < 1
    assert info.model_id and info.training_data and info.version
    assert {"logits", "embedding", "cam"} <= set(clf.outputs)
    assert (DEFAULT_MODEL.with_suffix(".json")).is_file()


def test_analysis_path_imports_no_torch() -> None:
    code = "import sys, wbc, wbc.cli, wbc.classify, wbc.model; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.real_data
def test_default_model_on_held_out_pbc_cells(real_data: Path) -> None:
    """A regression check on 400 test-split cells (the full test-split numbers are in the model card)."""
    manifest = REPO / "runs" / "default" / "manifest.csv"
    samples = read_manifest(manifest, split="test", root=real_data)
    rng = np.random.default_rng(0)
    pick = [samples[i] for i in sorted(rng.choice(len(samples), 400, replace=False))]
    res = classify_paths([s.path for s in pick], load_model())
    assert not res.errors
    acc = np.mean([p.label == s.label for p, s in zip(res.predictions, pick, strict=True)])
    assert acc >= 0.97
    # among in-distribution cells, the review flag marks exactly the low-confidence ones
    conf = np.array([p.confidence for p in res.predictions if not p.ood])
    review = np.array([p.review for p in res.predictions if not p.ood])
    if review.any():
        assert conf[review].max() < conf[~review].min()
    assert np.mean([p.ood for p in res.predictions]) < 0.05  # PBC test cells are in-distribution


@pytest.mark.real_data
def test_shipped_weights_are_the_shipped_model_before_quantisation(real_data: Path) -> None:
    """``wbc_classifier.pt`` (what ``wbc adapt`` fine-tunes) predicts like the int8 ONNX model it came from."""
    pytest.importorskip("torch")
    from wbc.classify import load_cells
    from wbc.train.finetune import load_weights
    from wbc.train.loop import predict_logits

    weights = DEFAULT_MODEL.with_suffix(".pt")
    assert weights.is_file() and weights.stat().st_size <= 25 * 1024 * 1024
    net, info = load_weights(weights)
    clf = load_model()
    assert info.classes == clf.classes and info.input_size == clf.info.input_size
    assert clf.model_id.startswith(info.model_id)
    samples = read_manifest(REPO / "runs" / "default" / "manifest.csv", split="test", root=real_data)[::16]
    cells, ok, _ = load_cells([s.path for s in samples], info.input_size)
    torch_pred = predict_logits(net, cells, info.mean, info.std).argmax(1)
    onnx_pred = clf.predict_proba(cells).argmax(1)
    assert len(ok) > 90 and np.mean(torch_pred == onnx_pred) >= 0.97


def test_sessions_per_core_answer_as_one_session() -> None:
    """`wbc.runtime.SessionGroup` shares a batch's rows among single-thread sessions (a small batch runs as one call
    on all cores): every row, every output and every batch size (one row, a smear field's few, uneven shares) as one
    session gives them."""
    from wbc.runtime import SessionGroup, ort_session

    one = ort_session(DEFAULT_MODEL, 2)
    group = SessionGroup(DEFAULT_MODEL, threads=3)
    assert len(group.sessions) == 3
    x = np.random.default_rng(0).normal(size=(40, 3, 160, 160)).astype(np.float32)
    for n in (1, 2, 11, 40):  # 40 rows: 14 + 13 + 13
        want = one.run(["logits", "embedding"], {group.input_name: x[:n]})
        got = group.run(["logits", "embedding"], x[:n])
        for a, b in zip(want, got, strict=True):
            assert a.shape == b.shape
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4)
    assert load_model(threads=1).sessions._pool is None  # one core: one session, no thread hand-off


def test_sessions_run_their_share_a_few_rows_at_a_time_with_the_same_answers(monkeypatch) -> None:
    """Each single-thread session runs :data:`wbc.runtime.CHUNK_ROWS` rows a call (a few rows' activations stay in
    cache: `wbc classify` about 8 % faster, since wbc 0.30.0), and the answers are those of one call per share."""
    import wbc.runtime
    from wbc.runtime import SessionGroup

    calls: list[int] = []
    group = SessionGroup(DEFAULT_MODEL, threads=2)
    x = np.random.default_rng(1).normal(size=(37, 3, 160, 160)).astype(np.float32)
    monkeypatch.setattr(wbc.runtime, "CHUNK_ROWS", 0)
    whole = group.run(["logits", "embedding"], x)
    monkeypatch.setattr(wbc.runtime, "CHUNK_ROWS", 8)
    for s in group.sessions:  # count the rows of every call the sessions are given
        monkeypatch.setattr(s, "run", lambda names, feed, _run=s.run: calls.append(len(next(iter(feed.values()))))
                            or _run(names, feed))
    chunked = group.run(["logits", "embedding"], x)
    assert sorted(calls) == [2, 3, 8, 8, 8, 8]  # 37 rows: 19 (8 + 8 + 3) and 18 (8 + 8 + 2)
    for a, b in zip(whole, chunked, strict=True):
        np.testing.assert_array_equal(a, b)


def test_predict_cells_holds_blas_to_one_thread() -> None:
    """While a batch is classified, NumPy's BLAS runs on one thread (`wbc.runtime.one_blas_thread`: its idle
    workers spun on the cores the network needs), and the process's own setting is back afterwards."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from wbc.classify import predict_cells

    def blas_threads() -> dict[str, int]:
        return {i["filepath"]: i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    clf = load_model()
    assert clf.info.ood  # the shipped model flags out-of-distribution cells: the products at issue
    seen: list[dict[str, int]] = []
    run = clf.run

    def watched_run(cells: np.ndarray, want: tuple[str, ...] = ("logits",)) -> dict[str, np.ndarray]:
        seen.append(blas_threads())
        return run(cells, want)

    cells = np.random.default_rng(0).integers(0, 255, (8, 160, 160, 3), dtype=np.uint8)
    predict_cells(clf, cells)  # its first call imports what loads SciPy's own BLAS, found from the next call on
    clf.run = watched_run  # type: ignore[method-assign]
    with threadpool_limits(limits=2, user_api="blas"):  # as on a 2-core machine, whatever this one has
        before = blas_threads()
        preds, out = predict_cells(clf, cells)
        after = blas_threads()
    assert before and set(before.values()) == {2}
    assert len(preds) == 8 and out["embedding"].shape[0] == 8
    assert seen and all(set(s.values()) == {1} for s in seen)
    assert after == before


def test_overlapping_one_blas_thread_blocks_restore_the_setting() -> None:
    """Two requests' blocks overlapping in two threads (A enters, B enters, A leaves, B leaves): BLAS stays on one
    thread until the last leaves, then is back as before (B used to restore the 1 it found, for good)."""
    import threading

    from threadpoolctl import threadpool_info

    from wbc.runtime import one_blas_thread

    def blas_threads() -> set[int]:
        return {i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"}

    a_in, b_in, a_out = threading.Event(), threading.Event(), threading.Event()
    seen: dict[str, set[int]] = {}

    def a() -> None:
        with one_blas_thread():
            a_in.set()
            b_in.wait(5)
        a_out.set()

    def b() -> None:
        a_in.wait(5)
        with one_blas_thread():
            b_in.set()
            a_out.wait(5)
            seen["b after a left"] = blas_threads()

    before = blas_threads()  # not set here: a thread holding a limit would keep the others from setting theirs
    if before == {1}:
        pytest.skip("BLAS is on one thread in this process already")
    threads = [threading.Thread(target=a), threading.Thread(target=b)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(10)
    assert seen["b after a left"] == {1} and blas_threads() == before
