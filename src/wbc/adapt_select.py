"""Which of a lab's cells to label for ``wbc adapt``: chosen from the images alone, before anyone labels them.

A lab adapting wbc labels 25-100 of its cells. Drawn at random, a few dozen can leave one of its rarer classes out
altogether, and the network is then fine-tuned without ever seeing that class in the lab's colours. On BCCD's
cells, 50 chosen by ``typical`` were named 87.0 % right after fine-tuning against 83.9 % for 50 drawn at random (ten
draws; 25 cells: 83.9 % against 79.5 %; 100: no difference; ``benchmarks/label_choice.py``,
docs/generalisation.md). The rules look only at the model's view of each cell (its pooled embedding and its
answer), never at labels:

- ``random``: a seeded random draw (the reference);
- ``typical``: the cells split into ``n`` groups by k-means on their L2-normalised embeddings, and the cell nearest
  each group's centre taken (TypiClust's idea, Hacohen et al. 2022): every kind of cell in the folder is covered
  once, however rare, and outliers (debris, cut cells) are not chosen;
- ``balanced``: the cells grouped by the class the model names, each group given an equal share of the ``n``
  (:func:`class_quotas`) and its share chosen as ``typical`` chooses, so the classes the model sees are labelled
  about equally often.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from wbc.errors import WbcError
from wbc.model import Classifier

#: The most cells of a folder looked at, a seeded sample of a larger one (as ``wbc adapt --no-labels`` samples):
#: the cells are held in memory and clustered. All 10,986 PBC images through a sample of 2,000: 10 s and 0.77 GB
#: on 2 cores (``wbc pick-cells ../shared/data/pbc``). ``max_cells`` (``--max-cells``) changes it; 0: every cell.
MAX_CELLS = 2000


def _outputs(clf: Classifier, cells: np.ndarray, batch_size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """The pooled embeddings (N, D), L2-normalised, and the named class (N,) of uint8 cells."""
    if "embedding" not in clf.outputs:
        raise WbcError(f"{clf.path}: the model has no 'embedding' output to choose cells by (--rule random needs none)")
    embs, named = [], []
    for i in range(0, len(cells), batch_size):
        out = clf.run(cells[i : i + batch_size], want=("logits", "embedding"))
        embs.append(out["embedding"])
        named.append(out["logits"].argmax(1))
    e = np.concatenate(embs).astype(np.float64)
    return e / np.maximum(np.linalg.norm(e, axis=1, keepdims=True), 1e-12), np.concatenate(named)


def typical_order(embeddings: np.ndarray, n: int, seed: int = 0) -> np.ndarray:
    """Indices of ``n`` rows of ``embeddings``: k-means into ``n`` groups, the row nearest each centre, the
    largest groups' first; when identical rows leave fewer groups than ``n``, other rows in a seeded order after.

    >>> e = np.array([[0., 0.], [0.1, 0.], [5., 5.], [5., 5.2], [9., 0.]])
    >>> sorted(typical_order(e, 3).tolist())
    [0, 2, 4]
    >>> len(typical_order(np.zeros((6, 2)), 4))  # six copies of one cell: still four picks
    4
    """
    import warnings

    from sklearn.cluster import KMeans
    from sklearn.exceptions import ConvergenceWarning

    n = min(n, len(embeddings))
    with warnings.catch_warnings():  # identical rows: fewer distinct groups than asked, handled below
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n, n_init=4, random_state=seed).fit(embeddings)
    dist = km.transform(embeddings)
    sizes = np.bincount(km.labels_, minlength=n)
    picked: list[int] = []
    for c in np.argsort(-sizes, kind="stable"):
        members = np.flatnonzero(km.labels_ == c)
        if len(members):
            picked.append(int(members[np.argmin(dist[members, c])]))
    rest = np.setdiff1d(np.random.default_rng(seed).permutation(len(embeddings)), picked, assume_unique=True)
    return np.array(picked + [int(i) for i in rest[: n - len(picked)]], dtype=int)


def _random(clf: Classifier, cells: np.ndarray, n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).permutation(len(cells))[:n]


def _typical(clf: Classifier, cells: np.ndarray, n: int, seed: int) -> np.ndarray:
    return typical_order(_outputs(clf, cells)[0], n, seed)


def class_quotas(sizes: np.ndarray, n: int) -> np.ndarray:
    """How many of ``n`` picks each group of ``sizes`` gets: as equal as the groups allow, a small group's
    shortfall shared among the others.

    >>> class_quotas(np.array([50, 3, 20, 1]), 20).tolist()
    [8, 3, 8, 1]
    """
    quota = np.zeros(len(sizes), dtype=int)
    while quota.sum() < min(n, sizes.sum()):
        open_ = np.flatnonzero(quota < sizes)
        share = max(1, (n - quota.sum()) // len(open_))
        for g in open_[np.argsort(-sizes[open_], kind="stable")]:
            if quota.sum() < n:
                quota[g] = min(sizes[g], quota[g] + share)
    return quota


def _balanced(clf: Classifier, cells: np.ndarray, n: int, seed: int) -> np.ndarray:
    emb, named = _outputs(clf, cells)
    groups = [np.flatnonzero(named == c) for c in np.unique(named)]
    quotas = class_quotas(np.array([len(g) for g in groups]), n)
    return np.concatenate([g[typical_order(emb[g], int(q), seed)] for g, q in zip(groups, quotas, strict=True)
                           if q > 0])


#: The rules by name: each maps (classifier, uint8 cells, n, seed) to the indices of the cells to label.
RULES: dict[str, Callable[[Classifier, np.ndarray, int, int], np.ndarray]] = {
    "random": _random, "typical": _typical, "balanced": _balanced}


def choose_cells(clf: Classifier, cells: np.ndarray, n: int, rule: str = "typical", seed: int = 0) -> np.ndarray:
    """Indices of the ``n`` cells (of uint8 cells at the model's input size, framed as it frames them) to label
    first, by ``rule`` (:data:`RULES`); all of them when there are ``n`` or fewer."""
    if rule not in RULES:
        raise WbcError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if n <= 0:
        raise WbcError(f"the number of cells to label must be positive, got {n}")
    if len(cells) <= n:
        return np.arange(len(cells))
    return RULES[rule](clf, cells, n, seed)


@dataclass
class PickResult:
    """What :func:`pick_cells` chose: the files to label, in the order chosen, and how."""

    paths: list[str]
    rule: str
    n_files: int  # image files in the folder
    n_sampled: int  # of them, looked at: all, or a seeded sample of a folder over ``max_cells``
    n_read: int  # of those, read (the others are in ``skipped``)
    seconds: float
    skipped: list[str] = field(default_factory=list)  # files that could not be read, one message each
    n_copies: int = 0  # of those read, copies of another read image (same pixels), never chosen

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def pick_cells(
    model: str | os.PathLike[str] | None, data: str | os.PathLike[str], n: int = 50, rule: str = "typical",
    seed: int = 0, threads: int = 2, max_cells: int = MAX_CELLS,
) -> PickResult:
    """The ``n`` cell images of the folder ``data`` to label first for ``wbc adapt``, chosen by ``rule`` from how
    ``model`` sees them (framed and colour-mapped as it frames and maps them, so run it with the model that
    will be adapted, e.g. one adapted with ``--no-labels``). Unreadable files are skipped with a message. A copy of
    an image already read (the same pixels) is never chosen: before wbc 0.34.0 ``balanced`` and ``random`` could
    ask for the same image to be labelled twice (85 cells and 40 copies: ``random`` chose 25 distinct of 30)."""
    import hashlib

    from wbc.classify import load_cells
    from wbc.data import sample_paths
    from wbc.io import iter_image_paths
    from wbc.model import load_model
    from wbc.reframe import framing_stats_of

    if rule not in RULES:
        raise WbcError(f"unknown rule {rule!r}; choose one of {', '.join(RULES)}")
    if max_cells < 0:
        raise WbcError(f"max_cells must be 0 (every cell) or more, got {max_cells}")
    t0 = time.perf_counter()
    clf = load_model(model, threads=threads)
    found = list(iter_image_paths([data]))
    if not found:
        raise WbcError(f"{data}: no images found")
    paths = sample_paths(found, max_cells, seed)
    cells, ok, errors = load_cells(paths, clf.info.input_size, threads, reframe=framing_stats_of(clf))
    if not ok:  # the reasons too (before wbc 0.36.0 they were said only when some image could be read)
        shown = "; ".join(msg for _, msg in errors[:3]) + (f"; and {len(errors) - 3} more" if len(errors) > 3 else "")
        raise WbcError(f"{data}: none of the {len(paths)} images could be read ({shown or 'no reason given'})")
    first: dict[str, int] = {}
    for i, cell in enumerate(cells):  # as wbc.adapt.content_keys (a module of this layer, so not imported)
        first.setdefault(hashlib.sha1(np.ascontiguousarray(cell).tobytes()).hexdigest(), i)
    unique = np.array(sorted(first.values()), dtype=int)
    picked = unique[choose_cells(clf, cells[unique], n, rule, seed)]
    return PickResult([str(Path(paths[ok[i]]).resolve()) for i in picked], rule, len(found), len(paths), len(ok),
                      time.perf_counter() - t0, [msg for _, msg in errors], len(ok) - len(unique))
