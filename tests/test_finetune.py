"""`wbc adapt --method finetune`: fine-tune a real (small) network on a new lab's cells, export, check.

The network is the registry's ``small_cnn`` exported by the real ``wbc export`` path, with its PyTorch
weights beside the ONNX file as the shipped model has them; the "new lab" is synthetic cells whose class
is their colour, which the untrained network cannot tell apart.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

sys.path.insert(0, str(Path(__file__).parent))
from conftest import needs_torch
from test_ood import CLASSES3, TRAIN_COLOURS, cells_like, fake_embed
from wbc.errors import WbcError
from wbc.io import write_image
from wbc.labels import CLASSES
from wbc.model import ModelInfo, load_model
from wbc.ood import add_reference, fit_ood, ood_scores

pytestmark = needs_torch
SIZE = 32
LAB = {"neutrophil": (200, 90, 120), "lymphocyte": (90, 100, 210), "monocyte": (120, 200, 110)}


def lab_cells(n: int, seed: int) -> tuple[np.ndarray, list[str]]:
    rng = np.random.default_rng(seed)
    labels = [c for c in LAB for _ in range(n)]
    cells = [np.clip(np.asarray(LAB[c], np.float32) + rng.normal(0, 10, 3) + rng.normal(0, 6, (SIZE, SIZE, 3)),
                     0, 255).astype(np.uint8) for c in labels]
    return np.stack(cells), labels


def write_lab(root: Path, n: int, seed: int) -> Path:
    cells, labels = lab_cells(n, seed)
    for i, (cell, label) in enumerate(zip(cells, labels, strict=True)):
        (root / label).mkdir(parents=True, exist_ok=True)
        write_image(root / label / f"{i}.png", cell)
    return root


def make_small_model(path: Path, input_size: int = SIZE, centre_crop: int = 0, trained: bool = False) -> Path:
    """A small_cnn as ONNX (``wbc export``'s path) with its ``.pt`` weights beside it: untrained, or
    (``trained``) fine-tuned on cells of another draw of the lab, as a shipped model starts out."""
    import torch

    from wbc.train.export import export_model
    from wbc.train.finetune import finetune, save_weights
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    if trained:
        cells, labels = lab_cells(10, seed=11)
        net = finetune(net, cells, [CLASSES.index(c) for c in labels], [0.5] * 3, [0.25] * 3, epochs=20,
                       batch_size=8)
    info = ModelInfo(classes=list(CLASSES), input_size=input_size, centre_crop=centre_crop, mean=[0.5] * 3,
                     std=[0.25] * 3, model_id="tiny-cnn", review_threshold=0.5, architecture="small_cnn")
    side = info.network_size
    export_model(net, info, path, torch.rand(2, 3, side, side))
    save_weights(net, "small_cnn", info, path.with_suffix(".pt"))
    return path


@pytest.fixture()
def small_model(tmp_path: Path) -> Path:
    return make_small_model(tmp_path / "orig.onnx")


def accuracy(model: Path, seed: int = 99) -> float:
    cells, labels = lab_cells(15, seed)
    clf = load_model(model)
    pred = [clf.classes[i] for i in clf.predict_proba(cells).argmax(1)]
    return float(np.mean(np.asarray(pred) == np.asarray(labels)))


def test_finetune_learns_the_new_lab_is_seeded_and_leaves_the_original_alone() -> None:
    import torch

    from wbc.train.finetune import finetune
    from wbc.train.loop import predict_logits
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    cells, labels = lab_cells(10, seed=1)
    y = [CLASSES.index(c) for c in labels]
    a = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, epochs=20, batch_size=8, seed=3)
    b = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, epochs=20, batch_size=8, seed=3)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # original untouched
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())  # same seed, same net
    test, test_labels = lab_cells(15, seed=2)
    want = np.array([CLASSES.index(c) for c in test_labels])
    acc_before = (predict_logits(net, test, [0.5] * 3, [0.25] * 3).argmax(1) == want).mean()
    acc_after = (predict_logits(a, test, [0.5] * 3, [0.25] * 3).argmax(1) == want).mean()
    assert acc_after >= 0.95 > acc_before
    with pytest.raises(WbcError, match="at least 2"):
        finetune(net, cells[:1], y[:1], [0.5] * 3, [0.25] * 3)


def test_finetune_keeps_frozen_weights_and_tunes_the_rest() -> None:
    import torch

    from wbc.train.finetune import finetune
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    cells, labels = lab_cells(6, seed=1)
    y = [CLASSES.index(c) for c in labels]
    names = [n for n, _ in net.named_parameters()]
    first = names[0].rsplit(".", 1)[0]  # the first layer's weight and bias
    tuned = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, epochs=3, batch_size=8, frozen=[first])
    old, new = dict(net.named_parameters()), dict(tuned.named_parameters())
    assert all(torch.equal(old[n], new[n]) == n.startswith(first) for n in names)
    with pytest.raises(WbcError, match="leaves no weight to tune"):
        finetune(net, cells, y, [0.5] * 3, [0.25] * 3, epochs=1, frozen=[""])


def test_unlabelled_cells_add_a_consistency_term_that_is_seeded() -> None:
    """``finetune(unlabelled=...)``: the lab's unlabelled cells change what is learnt, reproducibly."""
    import torch

    from wbc.train.finetune import finetune, strong_augment
    from wbc.train.loop import predict_logits
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    cells, labels = lab_cells(4, seed=1)
    y = [CLASSES.index(c) for c in labels]
    pool, _ = lab_cells(20, seed=4)
    info = ModelInfo(classes=list(CLASSES), input_size=SIZE, mean=[0.5] * 3, std=[0.25] * 3)
    strong = strong_augment(info)  # no training config in it: TrainConfig's augmentation
    kw = {"epochs": 15, "batch_size": 4, "seed": 3, "unlabelled": pool, "strong": strong}
    a, b = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, **kw), finetune(net, cells, y, [0.5] * 3, [0.25] * 3, **kw)
    assert all(torch.equal(v, b.state_dict()[k]) for k, v in a.state_dict().items())  # same seed, same net
    # the same random draws, but no cell confident enough to pseudo-label: the term, not the draws, made a differ
    inert = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, **{**kw, "unlabelled_threshold": 1 - 1e-9})
    assert not all(torch.equal(v, inert.state_dict()[k]) for k, v in a.state_dict().items())
    test, test_labels = lab_cells(15, seed=2)
    want = np.array([CLASSES.index(c) for c in test_labels])
    assert (predict_logits(a, test, [0.5] * 3, [0.25] * 3).argmax(1) == want).mean() >= 0.9
    with pytest.raises(WbcError, match="strong augmentation"):
        finetune(net, cells, y, [0.5] * 3, [0.25] * 3, unlabelled=pool)


def test_unlabelled_pool_leaves_out_labelled_images_and_caps_its_size(tmp_path: Path, small_model: Path) -> None:
    import shutil

    from wbc.train.finetune import unlabelled_pool

    labelled = write_lab(tmp_path / "lab", n=2, seed=1)
    folder = write_lab(tmp_path / "slides", n=10, seed=3)
    shutil.copytree(labelled, folder / "copies")
    files = [str(f) for f in sorted(labelled.rglob("*.png"))]
    clf = load_model(small_model)
    assert len(unlabelled_pool(clf, folder, files)) == 30  # the 6 copies of labelled images left out
    five = unlabelled_pool(clf, folder, files, limit=5, seed=1)
    assert five.shape == (5, SIZE, SIZE, 3)
    np.testing.assert_array_equal(five, unlabelled_pool(clf, folder, files, limit=5, seed=1))
    with pytest.raises(WbcError, match="no readable unlabelled"):
        unlabelled_pool(clf, labelled, files)


def test_mean_view_logits_average_the_rotations() -> None:
    import torch

    from wbc.preprocess import dihedral_view
    from wbc.train.finetune import mean_view_logits
    from wbc.train.loop import predict_logits
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    cells = np.random.default_rng(0).integers(0, 255, (3, SIZE, SIZE, 3), dtype=np.uint8)
    one = predict_logits(net, cells, [0.5] * 3, [0.25] * 3)
    np.testing.assert_allclose(mean_view_logits(net, cells, [0.5] * 3, [0.25] * 3, 1), one, rtol=1e-5, atol=1e-6)
    four = np.mean([predict_logits(net, dihedral_view(cells, k), [0.5] * 3, [0.25] * 3) for k in range(4)], axis=0)
    np.testing.assert_allclose(mean_view_logits(net, cells, [0.5] * 3, [0.25] * 3, 4), four, rtol=1e-5, atol=1e-6)
    assert not np.allclose(four, one)


def test_weights_round_trip_in_half_precision_and_bad_files_are_named(tmp_path: Path, small_model: Path) -> None:
    import torch

    from wbc.train.finetune import load_weights

    net, info = load_weights(small_model.with_suffix(".pt"))
    assert info.model_id == "tiny-cnn" and next(net.parameters()).dtype == torch.float32
    x = torch.rand(3, 3, SIZE, SIZE)
    onnx_logits = load_model(small_model).run((x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8))["logits"]
    assert onnx_logits.shape == (3, len(CLASSES))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(WbcError, match=r"bad\.pt: not a wbc checkpoint"):
        load_weights(bad)
    with pytest.raises(WbcError, match=r"nope\.pt: PyTorch weights not found"):
        load_weights(tmp_path / "nope.pt")


def test_a_run_s_model_is_fine_tuned_from_the_run_s_best_weights_by_default(tmp_path: Path) -> None:
    """`wbc adapt --model RUN/model.onnx` looked for RUN/model.pt, which a run never writes, and stopped after reading
    the cells ("pass --checkpoint RUN/best.pt"), though the help named RUN/best.pt as the default. A run's model is
    now fine-tuned from the run's best.pt (ensemble.pt); any other model from the .pt beside it."""
    from wbc.train.finetune import default_weights

    run = tmp_path / "run"
    run.mkdir()
    for name in ("model.onnx", "best.pt", "config.json"):
        (run / name).write_bytes(b"")
    assert default_weights(run / "model.onnx") == run / "best.pt"
    (run / "ensemble.pt").write_bytes(b"")
    assert default_weights(run / "model.onnx") == run / "ensemble.pt"
    (run / "model.pt").write_bytes(b"")
    assert default_weights(run / "model.onnx") == run / "model.pt"
    (tmp_path / "lab.onnx").write_bytes(b"")  # not a run's model: the .pt beside it, found or not
    assert default_weights(tmp_path / "lab.onnx") == tmp_path / "lab.pt"


def test_a_linked_model_is_fine_tuned_from_its_own_weights_or_refused(tmp_path: Path, small_model: Path) -> None:
    """wbc 0.36.0 wrote a linked model's tuned weights beside the link (current.pt) and left the earlier network's
    beside its target (models/lab_v3.pt), which wbc 0.37.0 then fine-tuned from without a word, scoring "before" with
    the newer network. The weights' model id is now compared with the model's: those beside the link are taken when
    they are its own, and when neither file is, it is refused in one line naming both. The shipped int8 model's float
    weights are still its own."""
    import shutil

    from wbc.adapt import write_model_copy
    from wbc.paths import DEFAULT_MODEL
    from wbc.train.finetune import adapt_finetune, default_weights, load_weights, save_weights

    models = tmp_path / "models"
    models.mkdir()
    info = load_model(small_model).info
    info.model_id = "tiny-cnn+finetune-0123abcd"  # the network fine-tuned through the link by wbc 0.36.0
    write_model_copy(small_model, models / "lab_v3.onnx", info)
    shutil.copy(small_model.with_suffix(".pt"), models / "lab_v3.pt")  # the earlier network's, left there
    link = tmp_path / "current.onnx"
    link.symlink_to(models / "lab_v3.onnx")
    net, _ = load_weights(small_model.with_suffix(".pt"))
    save_weights(net, "small_cnn", info, tmp_path / "current.pt")  # the tuned weights, beside the link
    lab = write_lab(tmp_path / "lab", n=4, seed=1)
    adapt_finetune(link, lab, tmp_path / "v4.onnx", epochs=1, cross_validate=False, tta=1)
    assert load_model(tmp_path / "v4.onnx").info.extra["adapt"]["checkpoint"] == str(tmp_path / "current.pt")
    shutil.copy(small_model.with_suffix(".pt"), tmp_path / "current.pt")  # another network's there too
    with pytest.raises(WbcError, match=r"^\S*models/lab_v3\.pt holds tiny-cnn; \S*current\.pt holds tiny-cnn, not "
                                       r"\S*current\.onnx's tiny-cnn\+finetune-0123abcd: give --checkpoint"):
        adapt_finetune(link, lab, tmp_path / "v5.onnx", epochs=1, cross_validate=False, tta=1)
    assert not (tmp_path / "v5.onnx").exists()
    first = tmp_path / "first"  # a link's first fine-tune by wbc 0.36.0: the weights beside the link alone
    (first / "models").mkdir(parents=True)
    write_model_copy(small_model, first / "models" / "lab.onnx", info)
    (first / "current.onnx").symlink_to(first / "models" / "lab.onnx")
    save_weights(net, "small_cnn", info, first / "current.pt")
    assert default_weights(first / "current.onnx", info.model_id) == first / "current.pt"
    shipped = load_model().info.model_id
    assert shipped.endswith("-int8")
    assert default_weights(DEFAULT_MODEL, shipped) == DEFAULT_MODEL.with_suffix(".pt")


@pytest.mark.slow
def test_wbc_adapt_finetunes_exports_and_reports_a_held_out_check(tmp_path: Path, small_model: Path) -> None:
    from wbc.cli import app

    data = write_lab(tmp_path / "lab", n=10, seed=1)
    (data / "neutrophil" / "broken.png").write_bytes(b"not an image")  # skipped, never fatal
    original = small_model.read_bytes()
    out = tmp_path / "tuned.onnx"
    res = CliRunner().invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o", str(out),
                                   "--epochs", "60", "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "held-out check (5-fold cross-validation, each of the 30 cells" in res.output  # the default
    assert "broken.png" in res.output
    assert small_model.read_bytes() == original
    tuned = load_model(out)
    assert re.fullmatch(r"tiny-cnn\+finetune-[0-9a-f]{8}", tuned.info.model_id) and not tuned.info.head
    assert tuned.info.extra["adapt"]["method"] == "finetune" and tuned.info.extra["adapt"]["n_cells"] == 30
    # the adapted model answers with the mean of the four rotations, and its calibration was fitted so
    assert tuned.info.extra["tta_views"] == 4 and tuned.tta_views() == 4
    assert "each cell averaged over 4 flips/rotations" in res.output
    assert accuracy(out) >= 0.9 > accuracy(small_model)
    # held-out cells all right fit no temperature: the original model's is kept, and the metadata says so
    fit = tuned.info.extra["adapt"]
    assert fit["heldout_acc_after"] == 1.0 and "temperature kept at the base model's" in " ".join(res.output.split())
    assert tuned.info.temperature == load_model(small_model).info.temperature > fit["fitted_temperature"]
    again = CliRunner().invoke(app, ["adapt", "-m", str(out), "--data", str(data), "-o", str(tmp_path / "t2.onnx"),
                                     "--epochs", "5", "--no-cross-validate", "--tta", "1"])  # weights beside it
    assert again.exit_code == 0, again.output
    t2 = load_model(tmp_path / "t2.onnx").info
    assert re.fullmatch(r"tiny-cnn(\+finetune-[0-9a-f]{8}){2}", t2.model_id) and t2.extra["tta_views"] == 1
    # --no-cross-validate: one stratified fifth (6 of the 30 cells) is the held-out check
    assert "6 cells kept out of a first fine-tuning" in again.output
    assert t2.extra["adapt"]["heldout_n"] == 6 and not t2.extra["adapt"]["settings"]["cross_validate"]
    assert tuned.info.extra["adapt"]["heldout_n"] == 30 and tuned.info.extra["adapt"]["settings"]["cross_validate"]


@pytest.mark.slow
def test_adapt_members_ships_an_ensemble_that_can_be_adapted_again(tmp_path: Path, small_model: Path) -> None:
    """``--members 2``: two fine-tuned copies, one ONNX graph whose probabilities are their mean."""
    import torch

    from wbc.cli import app
    from wbc.model import softmax
    from wbc.train.finetune import load_weights
    from wbc.train.models import Ensemble

    data = write_lab(tmp_path / "lab", n=10, seed=1)
    out = tmp_path / "ens.onnx"
    res = CliRunner().invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o", str(out),
                                   "--epochs", "40", "--members", "2"])
    assert res.exit_code == 0, res.output
    tuned = load_model(out)
    assert re.fullmatch(r"tiny-cnn\+finetunex2-[0-9a-f]{8}", tuned.info.model_id)
    assert tuned.info.architecture == "ensemble of 2 x small_cnn"
    assert tuned.info.extra["adapt"]["settings"]["members"] == 2
    assert accuracy(out) >= 0.9 > accuracy(small_model)
    net, _ = load_weights(out.with_suffix(".pt"))  # the members' weights beside it, in one file
    assert isinstance(net, Ensemble) and len(net.members) == 2
    cells, _ = lab_cells(4, seed=5)
    x = torch.from_numpy(((cells / 255.0 - 0.5) / 0.25).astype(np.float32)).permute(0, 3, 1, 2)
    with torch.no_grad():
        mean_p = torch.stack([m(x).softmax(1) for m in net.members]).mean(0).numpy()
    np.testing.assert_allclose(softmax(tuned.run(cells)["logits"]), mean_p, atol=2e-3)  # weights stored in fp16
    again = CliRunner().invoke(app, ["adapt", "-m", str(out), "--data", str(data), "-o", str(tmp_path / "e2.onnx"),
                                     "--epochs", "3"])  # an ensemble is fine-tuned again as one network
    assert again.exit_code == 0, again.output
    twice = CliRunner().invoke(app, ["adapt", "-m", str(out), "--data", str(data), "-o", str(tmp_path / "e3.onnx"),
                                     "--members", "2"])
    assert twice.exit_code == 1 and "already an ensemble" in str(twice.exception or twice.output)
    head = CliRunner().invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o",
                                    str(tmp_path / "h.onnx"), "--method", "head", "--members", "2"])
    assert head.exit_code == 1 and "need --method finetune" in str(head.exception or head.output)


@pytest.mark.slow
def test_wbc_adapt_learns_from_the_labs_unlabelled_cells_too(tmp_path: Path, small_model: Path) -> None:
    """``--unlabelled``: the folder's cells join, minus images that are labelled cells (never held out twice).

    The network starts trained, as a shipped model does: pseudo-labels from an untrained one are noise."""
    import shutil

    from wbc.cli import app

    trained = make_small_model(tmp_path / "trained.onnx", trained=True)

    data = write_lab(tmp_path / "lab", n=6, seed=1)
    extra = write_lab(tmp_path / "slides", n=8, seed=7)
    shutil.copytree(data, extra / "labelled_copy")  # the labelled images themselves, found again in the folder
    (extra / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "semi.onnx"
    res = CliRunner().invoke(app, ["adapt", "-m", str(trained), "--data", str(data), "-o", str(out),
                                   "--epochs", "40", "--unlabelled", str(extra)])
    assert res.exit_code == 0, res.output
    settings = load_model(out).info.extra["adapt"]["settings"]
    assert settings["unlabelled"] == {"data": str(extra), "cells": 24}  # 24 new cells; the 18 copies left out
    assert accuracy(out) >= 0.9 > accuracy(small_model)
    for bad in (["--method", "head"], ["--no-labels"]):
        r = CliRunner().invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o",
                                     str(tmp_path / "x.onnx"), "--unlabelled", str(extra), *bad])
        assert r.exit_code == 1 and "--unlabelled" in str(r.exception or r.output)
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.slow
def test_finetuning_a_centre_crop_model_trains_on_what_the_network_sees(tmp_path: Path) -> None:
    from wbc.cli import app

    model = make_small_model(tmp_path / "crop.onnx", input_size=40, centre_crop=32)
    data = write_lab(tmp_path / "lab", n=10, seed=1)
    out = tmp_path / "tuned.onnx"
    res = CliRunner().invoke(app, ["adapt", "-m", str(model), "--data", str(data), "-o", str(out), "--epochs", "60"])
    assert res.exit_code == 0, res.output
    tuned = load_model(out)
    assert (tuned.info.input_size, tuned.info.centre_crop) == (40, 32)
    assert tuned.session.get_inputs()[0].shape[2:] == [32, 32]
    cells, labels = lab_cells(15, seed=99)
    from wbc.preprocess import resize_square

    big = np.stack([resize_square(c, 40) for c in cells])
    pred = [tuned.classes[i] for i in tuned.predict_proba(big).argmax(1)]
    assert np.mean(np.asarray(pred) == np.asarray(labels)) >= 0.9


def test_each_fine_tuned_model_has_its_own_id_and_the_same_fine_tuning_the_same(tmp_path: Path,
                                                                                small_model: Path) -> None:
    """Every fine-tuned model was "<base>+finetune", so results and reports could not tell two apart; the id now ends
    in a hash of the model's metadata and weights: another draw of cells another id, the same cells and seed the same.
    """
    from wbc.train.finetune import adapt_finetune

    ids = []
    for name, seed in (("a", 1), ("again", 1), ("other", 2)):
        data = write_lab(tmp_path / f"lab{seed}", n=4, seed=seed)
        adapt_finetune(small_model, data, tmp_path / f"{name}.onnx", epochs=1, cross_validate=False, tta=1)
        ids.append(load_model(tmp_path / f"{name}.onnx").model_id)
    assert re.fullmatch(r"tiny-cnn\+finetune-[0-9a-f]{8}", ids[0]) and ids[0] == ids[1] != ids[2], ids


def test_a_fine_tuned_model_is_float_and_carries_no_quantisation_record(tmp_path: Path, small_model: Path) -> None:
    """`wbc adapt` fine-tunes the shipped int8 model into a float32 network, whose metadata (and its .pt's) kept the
    base's ``extra["quantization"]``: it described a quantisation the file does not have."""
    from wbc.model import update_metadata
    from wbc.train.finetune import adapt_finetune, load_weights

    update_metadata(small_model, extra={"quantization": {"method": "onnxruntime static int8, QDQ"}})
    out = tmp_path / "tuned.onnx"
    adapt_finetune(small_model, write_lab(tmp_path / "lab", n=4, seed=1), out, epochs=1, cross_validate=False, tta=1)
    assert "quantization" not in load_model(out).info.extra
    assert "quantization" not in load_weights(out.with_suffix(".pt"))[1].extra


def test_fine_tuning_logged_to_a_file_shows_its_progress(tmp_path: Path, small_model: Path) -> None:
    """`wbc adapt > adapt.log 2>&1` printed nothing for 17 minutes: the progress bar is for terminals only. Off a
    terminal (CliRunner's streams, a log file) it prints a line at each tenth of the steps."""
    from wbc.cli import app

    data = write_lab(tmp_path / "lab", n=4, seed=1)
    res = CliRunner().invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o", str(tmp_path / "t.onnx"),
                                   "--epochs", "2", "--no-cross-validate", "--tta", "1"])
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.output.splitlines() if ln.startswith("fine-tuning: ")]
    assert lines and all("steps) after 0 min" in ln for ln in lines), res.output  # at most one per tenth
    assert len(lines) <= 10 and lines[-1].startswith("fine-tuning: 100% ("), res.output


def test_finetune_refuses_missing_or_mismatched_weights(tmp_path: Path, small_model: Path) -> None:
    from wbc.cli import app
    from wbc.train.finetune import load_weights, save_weights

    data = write_lab(tmp_path / "lab", n=3, seed=2)
    runner = CliRunner()
    missing = runner.invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o",
                                  str(tmp_path / "a.onnx"), "--checkpoint", str(tmp_path / "none.pt")])
    assert missing.exit_code == 1 and "PyTorch weights not found" in str(missing.exception or missing.output)
    net, info = load_weights(small_model.with_suffix(".pt"))
    info.input_size = 64
    save_weights(net, "small_cnn", info, tmp_path / "other.pt")
    other = runner.invoke(app, ["adapt", "-m", str(small_model), "--data", str(data), "-o",
                                str(tmp_path / "b.onnx"), "--checkpoint", str(tmp_path / "other.pt")])
    assert other.exit_code == 1 and "do not belong to" in str(other.exception or other.output)
    assert not (tmp_path / "a.onnx").exists() and not (tmp_path / "b.onnx").exists()


def test_new_feature_reference_replaces_the_old_and_accepts_its_own_cells() -> None:
    tc, tl = cells_like(TRAIN_COLOURS, 40, seed=0)
    vc, _ = cells_like(TRAIN_COLOURS, 40, seed=1)
    ood = fit_ood(tc, fake_embed(tc), tl, vc, fake_embed(vc), CLASSES3)
    lab_c, lab_l = cells_like(TRAIN_COLOURS, 20, seed=5)
    moved = fake_embed(lab_c) * 3.0 + 1.0  # a fine-tuned network: same cells, different features
    assert (ood_scores(None, moved, ood)["feature"] > 1).mean() > 0.9
    new = add_reference(ood, lab_c, moved, lab_l, CLASSES3, name="adapt:lab", new_features=True)
    assert [r["name"] for r in new["references"]] == ["adapt:lab"]
    assert (ood_scores(None, moved, new)["feature"] <= 1).all()
    far = fake_embed(np.full_like(lab_c[:3], 20)) * 3.0 + 1.0
    assert (ood_scores(None, far, new)["feature"] > 1).all()


@needs_torch
def test_the_command_line_fine_tunes_with_the_library_recipe() -> None:
    """`wbc adapt --epochs` defaults to the recipe's epochs (the CLI module cannot import torch to read them)."""
    import inspect

    from wbc.cli.adapt import adapt
    from wbc.train.finetune import DEFAULTS

    assert inspect.signature(adapt).parameters["epochs"].default == DEFAULTS["epochs"] == 60


def test_a_label_free_adapted_model_can_be_fine_tuned_and_keeps_its_framing(tmp_path: Path, small_model: Path) -> None:
    """`wbc adapt --no-labels` leaves the network as it is and writes its weights beside the output, so a lab can
    later fine-tune that model on labelled cells; the fine-tuned model keeps the framing chosen for the lab."""
    from wbc.adapt_unlabelled import adapt_unlabelled
    from wbc.train.finetune import adapt_finetune

    lab = write_lab(tmp_path / "lab", 4, seed=5)
    adapt_unlabelled(small_model, lab, tmp_path / "free.onnx", framing="all", prior=False, threads=1)
    assert (tmp_path / "free.pt").read_bytes() == small_model.with_suffix(".pt").read_bytes()
    free = load_model(tmp_path / "free.onnx")
    assert free.info.extra["reframe"]["low"] == free.info.extra["reframe"]["high"]  # every cell re-framed
    adapt_finetune(tmp_path / "free.onnx", lab, tmp_path / "tuned.onnx", epochs=2, cross_validate=False, threads=1)
    assert load_model(tmp_path / "tuned.onnx").info.extra["reframe"] == free.info.extra["reframe"]


def test_fine_tuning_refuses_one_class_and_a_checkpoint_it_would_replace(tmp_path: Path, small_model: Path) -> None:
    """Fine-tuned on 8 neutrophils, the model named other cells neutrophil with a "50 % -> 100 %" held-out check, and
    `--checkpoint RUN/best.pt --output RUN/best.onnx` wrote the tuned weights over the checkpoint it started from
    (wbc 0.31.0). Both are refused before any fine-tuning."""
    import shutil

    from wbc.train.finetune import adapt_finetune

    lab = write_lab(tmp_path / "lab", n=4, seed=1)
    for other in ("lymphocyte", "monocyte"):
        shutil.rmtree(lab / other)
    with pytest.raises(WbcError, match=r"lab: every labelled cell is neutrophil \(4 cells\); label cells of at least "
                                       r"2 classes"):
        adapt_finetune(small_model, lab, tmp_path / "one.onnx", epochs=1, cross_validate=False)
    assert not (tmp_path / "one.onnx").exists()
    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(small_model.with_suffix(".pt"), run / "best.pt")
    shutil.copy(small_model, run / "best.onnx")  # exported beside it: the .pt is no adaptation's weights either
    before = (run / "best.pt").read_bytes()
    with pytest.raises(WbcError, match=r"best\.pt: --checkpoint would be replaced by the adapted model's weights"):
        adapt_finetune(small_model, write_lab(tmp_path / "lab3", n=4, seed=1), run / "best.onnx",
                       checkpoint=run / "best.pt", epochs=1, cross_validate=False)
    assert (run / "best.pt").read_bytes() == before


@pytest.mark.parametrize(("epochs", "n"), [(10, 10), (5, 40), (2, 80)])
def test_finetune_runs_for_any_number_of_steps(epochs: int, n: int) -> None:
    """epochs * (n // 16) == 10 made OneCycleLR divide by zero: `--epochs 10` on 25-39 labelled cells, `--epochs 2`
    on 100 under 5-fold cross-validation died with a ZeroDivisionError traceback (wbc 0.33.0)."""
    import torch

    from wbc.train.finetune import finetune
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    cells = np.random.default_rng(0).integers(0, 255, (n, 32, 32, 3), dtype=np.uint8)
    finetune(net, cells, [i % 2 for i in range(n)], [0.5] * 3, [0.25] * 3, epochs=epochs, batch_size=16)


def test_fine_tuning_names_classes_without_labelled_cells(tmp_path: Path, small_model: Path) -> None:
    """Fine-tuned without monocytes, the shipped model named 0 of 12 BCCD monocytes monocyte (9 as shipped), and
    nothing said so (wbc 0.33.0): the run now names such classes. `trained` (measured for them and not adopted,
    benchmarks/absent_class.py) keeps a class's logit out of the loss."""
    import torch

    from wbc.train.finetune import adapt_finetune, finetune
    from wbc.train.models import create_model

    torch.manual_seed(0)
    net = create_model("small_cnn", len(CLASSES), pretrained=False, dropout=0.0).eval()
    cells, labels = lab_cells(4, seed=1)
    y = [CLASSES.index(c) for c in labels]
    free = finetune(net, cells, y, [0.5] * 3, [0.25] * 3, epochs=3, batch_size=4, trained=[4, 5, 6])
    head = [name for name, _ in free.named_parameters()][-2]  # the last layer's weight
    rows = [CLASSES.index(c) for c in CLASSES if c not in ("lymphocyte", "monocyte", "neutrophil")]
    before, after = (dict(m.named_parameters())[head][rows].detach() for m in (net, free))
    assert torch.allclose(before, after, atol=1e-3 * float(before.abs().max()))  # only AdamW's weight decay
    res = adapt_finetune(small_model, write_lab(tmp_path / "lab", 4, seed=1), tmp_path / "f.onnx", epochs=1,
                         cross_validate=False, tta=1)
    assert res.absent == ["basophil", "eosinophil"] and res.notes[0].startswith("no labelled cell of basophil, "
                                                                                 "eosinophil: the adapted model")
    assert load_model(tmp_path / "f.onnx").info.extra["adapt"]["absent"] == res.absent


def test_fine_tuning_scores_before_as_the_original_model_whatever_stain_is_stored(tmp_path: Path) -> None:
    """With --stain, "before" was the original network behind the new colour mapping, one "before" per mapping for
    one and the same original model (BCCD val: 71.8 % without, 82.4 % reinhard, 65.9 % macenko; wbc 0.33.0); and the
    adapted model kept the base's PBC validation `metrics` (0.990 where `wbc quantize` measured 0.629)."""
    from wbc.model import write_model
    from wbc.train.finetune import adapt_finetune

    model = make_small_model(tmp_path / "orig.onnx", trained=True)
    info = load_model(model).info
    info.colour_reference = {"reinhard": {"mean": [40.0, 30.0, -30.0], "std": [8.0, 4.0, 4.0]}}
    info.metrics = {"accuracy": 0.99, "n": 1648}
    write_model(model, model.read_bytes(), info)
    lab = write_lab(tmp_path / "lab", 6, seed=1)
    plain = adapt_finetune(model, lab, tmp_path / "a.onnx", epochs=1, cross_validate=False, tta=1)
    mapped = adapt_finetune(model, lab, tmp_path / "b.onnx", epochs=1, cross_validate=False, tta=1, stain="reinhard")
    assert mapped.heldout_acc_before == plain.heldout_acc_before
    tuned = load_model(tmp_path / "a.onnx").info
    assert tuned.metrics["accuracy"] == plain.heldout_acc_after and tuned.metrics["n"] == plain.heldout_n
    assert tuned.extra["adapt"]["base"]["metrics"] == info.metrics


@pytest.mark.slow
def test_fine_tuning_through_a_linked_output_keeps_the_weights_beside_the_linked_model(tmp_path: Path,
                                                                                       small_model: Path) -> None:
    """`--output current.onnx` (a link to models/lab_v3.onnx) wrote the .onnx and .json through the link but the tuned
    weights to current.pt beside the link, leaving models/lab_v3.pt the earlier network, which the next
    `wbc adapt --model models/lab_v3.onnx` fine-tuned from without a word (wbc 0.37.0). The weights now go beside the
    file the link points to, as the head refit's and `--no-labels`' do, and the default weights of a linked model are
    read from there."""
    import shutil

    from wbc.train.finetune import adapt_finetune, default_weights, load_weights

    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".onnx", ".json", ".pt"):
        shutil.copy(small_model.with_suffix(suffix), (models / "lab_v3").with_suffix(suffix))
    link = tmp_path / "current.onnx"
    link.symlink_to(models / "lab_v3.onnx")
    assert default_weights(link) == models / "lab_v3.pt"
    lab = write_lab(tmp_path / "lab", n=4, seed=1)
    with pytest.raises(WbcError, match=r"lab_v3\.pt: --checkpoint would be replaced by the adapted model's weights"):
        adapt_finetune(small_model, lab, link, checkpoint=models / "lab_v3.pt", epochs=1, cross_validate=False)
    adapt_finetune(small_model, lab, link, epochs=1, cross_validate=False)
    assert link.is_symlink() and not (tmp_path / "current.pt").exists()
    tuned = load_model(models / "lab_v3.onnx").info.model_id
    assert tuned.startswith("tiny-cnn+finetune-") and load_weights(models / "lab_v3.pt")[1].model_id == tuned
