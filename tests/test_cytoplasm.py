"""`wbc classify`'s cytoplasm evidence (:func:`wbc.cytoplasm.single_cell_evidence`) reads the statistics fitted the
way it measures a single-cell image, not the smear fields' (the two measures differ by about a standard deviation)."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

import wbc.cytoplasm as cytoplasm

FIELD = {"lymphocyte": [0.05, 0.39], "erythroblast": [0.69, 0.42]}
SINGLE = {"lymphocyte": [-0.12, 0.33], "erythroblast": [0.28, 0.46]}


def _odds(reference: dict[str, dict[str, list[float]]], monkeypatch: pytest.MonkeyPatch) -> float:
    """The odds (lymphocyte against erythroblast) the evidence gives a cell whose cytoplasm measures 0.28."""
    monkeypatch.setattr(cytoplasm, "central_cytoplasm_eosin", lambda cell, segmenter: 0.28)
    monkeypatch.setattr(cytoplasm, "_single_cell_segmenter", lambda: None)
    clf = NS(classes=["erythroblast", "lymphocyte"], info=NS(colour_reference=reference, ood={"colour": 1}))
    evidence = cytoplasm.single_cell_evidence(np.zeros((1, 8, 8, 3), np.uint8), clf)
    assert evidence is not None
    return evidence.odds_of(np.array([[0.6, 0.4]]), np.array([2.0]))[0]


def test_single_cell_evidence_reads_the_statistics_fitted_as_it_measures(monkeypatch: pytest.MonkeyPatch) -> None:
    """With ``cytoplasm_eosin_single`` in the model, a PBC-typical erythroblast measure (0.28 on the network's view)
    favours erythroblast; under the smear fields' statistics it favoured lymphocyte (before wbc 0.29.0)."""
    odds = _odds({"cytoplasm_eosin": FIELD, "cytoplasm_eosin_single": SINGLE}, monkeypatch)
    assert odds == pytest.approx(cytoplasm.pair_odds(0.28, SINGLE["lymphocyte"], SINGLE["erythroblast"]))
    assert odds < 1  # erythroblast favoured


def test_a_model_without_single_cell_statistics_keeps_the_field_statistics(monkeypatch: pytest.MonkeyPatch) -> None:
    """A model fitted before wbc 0.29.0 answers as validated then: the smear fields' statistics."""
    odds = _odds({"cytoplasm_eosin": FIELD}, monkeypatch)
    assert odds == pytest.approx(cytoplasm.pair_odds(0.28, FIELD["lymphocyte"], FIELD["erythroblast"]))
