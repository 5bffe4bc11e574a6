from __future__ import annotations

from pathlib import Path

import pytest

from wbc.config import TrainConfig, load_config
from wbc.errors import ConfigError


def test_toml_then_flags_override(tmp_path: Path) -> None:
    p = tmp_path / "c.toml"
    p.write_text('[train]\nepochs = 3\nmodel = "small_cnn"\nscale = [0.8, 1.2]\n')
    cfg = load_config(p, {"epochs": 5, "lr": None})
    assert (cfg.epochs, cfg.model, cfg.scale, cfg.lr) == (5, "small_cnn", (0.8, 1.2), TrainConfig().lr)


@pytest.mark.parametrize(("text", "msg"), [
    ("epochs = 'many'", "not a valid int"),
    ("epoch = 3", "unknown training option 'epoch'"),
    ("balance = 'magic'", "balance must be"),
    ("folds = 1", "folds must be"),
    ("device = 'tpu'", "device must be cpu, cuda or auto"),
    ("progressive_size = 16", "progressive_size must be"),
    ("epochs = 3\nprogressive_size = 112\nprogressive_epochs = 3", "leave at least one epoch at full size"),
    ("num_workers = -1", "num_workers must be"),
    # accepted, and no epoch was smaller, before wbc 0.33.0:
    ("progressive_size = 112", "progressive_size and progressive_epochs go together"),
    ("progressive_epochs = 4", "progressive_size and progressive_epochs go together"),
    ("epochs = [", "not valid TOML"),
    # accepted without a word by wbc 0.26.0:
    ("epochs = 3\nlr_typo = 1\n[train]\nlr = 0.01", "epochs, lr_typo outside the .train. table"),
    ("review_target_accuracy = 99.5", "review_target_accuracy is a fraction"),
    ("ema = 1.5", "ema and dropout must be in"),
    ("dropout = 1.5", "ema and dropout must be in"),
    ("patience = -3", "must be >= 0: .'patience': -3"),
    ("weight_decay = -1.0", "must be >= 0"),
    ("split = [0.5, 0.6, -0.1]", "split is three fractions"),
    # a traceback in the first batch, after the whole dataset was decoded, or taken silently, until wbc 0.28.0:
    ("hue = 0.7", "hue must be in .0, 0.5."),
    ("scale = [0.3, 1.0]", "scale must be two factors"),
    ("scale = [1.2, 0.8]", "scale must be two factors"),
    ("brightness = -0.1", "brightness: must be >= 0"),
    ("blur_sigma = 0.0", "blur_sigma must be > 0.1"),
    ("reframe_p = 3.0", "reframe_p: a probability"),
    ("jpeg_p = -1", "jpeg_p: a probability"),
    ("translate = 0.9", "translate in .0, 0.5."),
    ("lowres_min = 1.5\nlowres_p = 1", "lowres_min"),
    # an AttributeError traceback until wbc 0.31.0:
    ("train = 3", "train must be a .train. table of options, not 3"),
    ("train = 'configs/default.toml'", "train must be a .train. table of options, not 'configs/default.toml'"),
    # refused by numpy only after the whole dataset was decoded, until wbc 0.31.0:
    ("seed = -1", "seed and split_seed must be in 0..2..32 - 1"),
    ("split_seed = -1", "seed and split_seed must be in 0..2..32 - 1"),
])
def test_bad_config_names_file_and_problem(tmp_path: Path, text: str, msg: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(text)
    with pytest.raises(ConfigError, match=msg) as info:
        load_config(p)
    assert "bad.toml" in str(info.value)


def test_missing_config_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "none.toml")


def test_unreadable_config_file_is_one_line(tmp_path: Path) -> None:
    """A TOML file saved as UTF-16 (Notepad's "Unicode"), or a folder given as --config: one line, no traceback."""
    utf16 = tmp_path / "c.toml"
    utf16.write_bytes("epochs = 1\n".encode("utf-16"))
    with pytest.raises(ConfigError, match=r"c\.toml: not UTF-8 text"):
        load_config(utf16)
    with pytest.raises(ConfigError, match="is a folder, not a TOML config file"):
        load_config(tmp_path)
    accented = tmp_path / "u.toml"
    accented.write_text('data = "données"\n', encoding="utf-8")  # read as UTF-8 whatever the locale says
    assert load_config(accented).data == "données"


def test_shipped_default_config_loads() -> None:
    cfg = load_config(Path(__file__).parents[1] / "configs" / "default.toml")
    assert cfg.model == "efficientnet_lite0" and cfg.pretrained


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_every_shipped_config_loads(path: Path) -> None:
    cfg = load_config(path)
    assert cfg.data == "pbc" and cfg.epochs >= 1


def _coerce_by_hand(cfg: TrainConfig, changes: dict) -> TrainConfig:
    """The hand-written coercion pydantic replaced (for valid input), to show the results are the same."""
    import dataclasses

    clean = {}
    for key, value in changes.items():
        default = getattr(cfg, key)
        if isinstance(default, tuple):
            value = tuple(type(default[0])(v) for v in value) if default else tuple(value)
        elif isinstance(default, int | float) and not isinstance(default, bool):
            value = type(default)(value)
        elif isinstance(default, str):
            value = str(value)
        clean[key] = value
    return dataclasses.replace(cfg, **clean)


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.name)
def test_pydantic_coercion_gives_what_the_hand_coercion_gave(path: Path) -> None:
    import tomllib

    data = tomllib.loads(path.read_text())
    data = data.get("train", data)
    assert load_config(path) == _coerce_by_hand(TrainConfig(), data)


def test_coercion_of_saved_json_and_of_bad_values(tmp_path: Path) -> None:
    import json

    cfg = TrainConfig().updated({"epochs": 3, "scale": (0.8, 1.2), "classes": ("neutrophil", "basophil")})
    again = TrainConfig().updated(json.loads(json.dumps(cfg.to_dict())))  # run folders store config.json
    assert again == cfg and again.scale == (0.8, 1.2) and again.classes == ("neutrophil", "basophil")
    assert TrainConfig().updated({"lr": 1, "epochs": "4", "version": 2.0}) == TrainConfig(lr=1.0, epochs=4,
                                                                                        version="2.0")
    for bad in ({"epochs": 3.5}, {"scale": [1.0]}, {"split": [0.5, 0.5]}, {"pretrained": "maybe"}):
        with pytest.raises(ConfigError, match=f"option '{next(iter(bad))}'"):
            TrainConfig().updated(bad)


@pytest.mark.parametrize(("value", "want"), [
    (["basophil", "eosinophils", "Lymphocytes"], ("basophil", "eosinophil", "lymphocyte")),
    (["NEUTROPHIL", "neutrophil", "IG"], ("neutrophil", "ig")),
    ("5part", ("basophil", "eosinophil", "lymphocyte", "monocyte", "neutrophil")),
    ("neutrophil, lymph", ("neutrophil", "lymphocyte")),
    ([], ()),
])
def test_classes_are_read_in_any_known_spelling(tmp_path: Path, value: object, want: tuple[str, ...]) -> None:
    """Training compares ``classes`` with the canonical folder labels: a plural or an alias must not drop its
    class (``"lymphocytes"`` left lymphocytes out of the run without a word)."""
    import json

    p = tmp_path / "c.toml"
    p.write_text(f"classes = {json.dumps(value)}\n")
    assert load_config(p).classes == want


@pytest.mark.parametrize(("value", "msg"), [
    ('["basophil", "eosinofil"]', "classes: 'eosinofil' is not a class"),
    ('["lymphocytes"]', "only 'lymphocyte'; a classifier needs at least two classes"),
    ('["Basophils", "basophil"]', "only 'basophil'"),
])
def test_unknown_or_single_classes_are_refused(tmp_path: Path, value: str, msg: str) -> None:
    p = tmp_path / "bad.toml"
    p.write_text(f"classes = {value}\n")
    with pytest.raises(ConfigError, match=msg) as info:
        load_config(p)
    assert "bad.toml" in str(info.value)


@pytest.mark.parametrize("body", ["lr = nan", "lr = inf", "warmup_epochs = nan", "weight_decay = nan",
                                  "blur_sigma = nan", "unlabelled_weight = nan", "attribute_weight = inf",
                                  "scale = [0.9, nan]"])
def test_non_finite_config_values_are_refused_naming_the_file_and_key(tmp_path: Path, body: str) -> None:
    """Every range check compares, and a comparison with NaN is False: `lr = nan` passed, then stopped with a
    traceback after the whole dataset was decoded (`lr = inf` trained a NaN model)."""
    (tmp_path / "c.toml").write_text(f"[train]\n{body}\n")
    key = body.split()[0]
    with pytest.raises(ConfigError, match=rf"c\.toml: {key}: must be finite numbers \(no nan or inf\)"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=rf"^{key}: must be finite"):  # as a flag (--lr nan)
        TrainConfig().updated({key: float("nan")} if key != "scale" else {key: (0.9, float("inf"))})


def test_a_config_saved_with_a_byte_order_mark_is_read(tmp_path: Path) -> None:
    """Windows editors' "UTF-8 with BOM" (and PowerShell 5's Out-File) was "not valid TOML" at line 1."""
    (tmp_path / "bom.toml").write_text("\ufeff[train]\nepochs = 1\n", encoding="utf-8")
    assert load_config(tmp_path / "bom.toml").epochs == 1
