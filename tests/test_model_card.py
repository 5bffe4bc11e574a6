"""What docs/model_card.md says about the shipped model is what the shipped files and its results files hold."""

from __future__ import annotations

import json
import re
from pathlib import Path

from conftest import needs_torch
from wbc.paths import DEFAULT_MODEL

ROOT = Path(__file__).resolve().parents[1]
CARD = (ROOT / "docs" / "model_card.md").read_text(encoding="utf-8")
INFO = json.loads(DEFAULT_MODEL.with_suffix(".json").read_text())


def _row(table: str, name: str) -> list[str]:
    """The cells after the first of the Markdown row called ``name`` in ``table``."""
    for line in table.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if cells[0] == name:
            return cells[1:]
    raise AssertionError(f"no row {name!r}")


def _pct(value: str) -> str:
    return f"{100 * float(value):.1f} %"


def test_other_labs_gives_the_shipped_models_bccd_figures() -> None:
    """"Other labs" credited the shipped model (1.4.0) with 1.3.0's figures and pointed to 1.3.0's tables:
    82.7 % / 84.5 % / 88.4 % where 1.4.0's results file has 82.4 % / 84.2 % / 88.7 % (wbc 0.32.0)."""
    name = f"cross_dataset_v{INFO['version']}.md"
    results = (ROOT / "benchmarks" / "results" / name).read_text(encoding="utf-8")
    section = " ".join(CARD.split("## Other labs", 1)[1].split("\n## ", 1)[0].split())
    assert f"Full tables: `benchmarks/results/{name}`" in section
    assert f"the shipped model is right on {_pct(_row(results, 'none')[0])} of cells as they are" in section
    label_free = _pct(_row(results, "none+tta+prior (EM)")[0])
    assert f"and on {label_free} with what `wbc adapt --no-labels` chooses" in section
    finetune = _row(results.split("Few-shot fine-tuning", 1)[1], "none/100")
    draws = re.fullmatch(r"([\d.]+) \[([\d.]+)-([\d.]+)\]", finetune[0])  # mean [min-max]
    assert draws is not None
    mean, lo, hi = draws.groups()
    assert (f"reaches {_pct(mean)} (3 draws, {100 * float(lo):.1f}-{_pct(hi)}), {_pct(finetune[-1])} with the four "
            "rotations") in section


#: Each data set a shipped model can name (its folder under the data root): how the docs name it, and the words of
#: its citation in the model card (the data root's README.md asks every source cited there, with its licence).
DATASETS = {"pbc": ("PBC", "Acevedo A, Merino A", "CC BY 4.0"),
            "bccd": ("BCCD", "BCCD (MIT", "MIT"),
            "txl_pbc": ("TXL-PBC", "Gan L, Li X (2024)", "MIT"),
            "wbcatt": ("WBCAtt", "Tsutsui S", "MIT")}


def _datasets_learnt_from() -> set[str]:
    """The data sets the shipped classifier's and detector's metadata say they learnt from."""
    import onnxruntime as ort

    from wbc.paths import DEFAULT_DETECTOR

    config = INFO["extra"]["config"]
    named = {INFO["training_data"].split(":", 1)[0], config["data"]}
    if ":" in config.get("unlabelled", ""):  # "txl_pbc:bcd"; a plain folder is a lab's own images
        named.add(config["unlabelled"].split(":", 1)[0])
    if config.get("attributes"):
        named.add(config["attributes"])
    meta = ort.InferenceSession(str(DEFAULT_DETECTOR), providers=["CPUExecutionProvider"]).get_modelmeta()
    val = json.loads(meta.custom_metadata_map["val"])
    named |= {"bccd"} if any(k.startswith("bccd_") for k in val) else set()
    named |= {"txl_pbc"} if any(k.startswith(("bcd_", "pbc_")) for k in val) else set()  # TXL-PBC's origins
    return named


def test_every_data_set_a_shipped_model_learnt_from_is_cited_with_its_licence() -> None:
    """TXL-PBC, whose BCD cells the classifier learnt from without labels and whose fields train the detector, was
    cited and licensed nowhere (wbc 0.32.0)."""
    named = _datasets_learnt_from()
    assert {"pbc", "txl_pbc", "bccd"} <= named <= set(DATASETS)
    card = " ".join(CARD.split("## Licences and citations", 1)[1].split("\n## ", 1)[0].split())
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    readme = " ".join(readme.split("## Data and licences", 1)[1].split("\n## ", 1)[0].split())
    for key in sorted(named):
        name, citation, licence = DATASETS[key]
        assert citation in card and re.search(rf"{re.escape(name)}\b[^.]*{re.escape(licence)}", card), key
        assert re.search(rf"{re.escape(name)} \([^)]*{re.escape(licence)}", readme), key


@needs_torch
def test_parameter_counts_in_the_docs_are_the_networks() -> None:
    """The card said 4.0M parameters for the shipped network (its .pt holds 3.38M) and docs/training.md 0.4M for
    small_cnn (0.83M), typed in and never counted (wbc 0.32.0)."""
    import torch

    from wbc.train.models import create_model

    state = torch.load(DEFAULT_MODEL.with_suffix(".pt"), map_location="cpu", weights_only=False)
    net = create_model(state["arch"], len(INFO["classes"]), pretrained=False)
    net.load_state_dict(state["model"])  # the shipped weights fit the network counted
    shipped = sum(p.numel() for p in net.parameters())
    said = re.search(r"EfficientNet-Lite0 \(([\d.]+)M parameters", CARD)
    assert state["arch"] == "efficientnet_lite0" and said is not None and said[1] == f"{shipped / 1e6:.1f}"
    training = " ".join((ROOT / "docs" / "training.md").read_text(encoding="utf-8").split())
    for name in ("efficientnet_lite0", "small_cnn"):
        said = re.search(rf"`{name}` \(([\d.]+)M parameters", training)
        count = sum(p.numel() for p in create_model(name, 8, pretrained=False).parameters())
        assert said is not None and said[1] == f"{count / 1e6:.2f}", name


def test_the_reproduce_recipe_writes_every_metadata_field_the_shipped_model_has() -> None:
    """The 1.4.0 recipe (export -> quantize -> ood fit) wrote neither the cytoplasm colours nor the split hash the
    shipped file carries, so the model it made answered smears without the cytoplasm evidence and `wbc evaluate` did
    not know its own split: each field is written by a documented step that exists and parses."""
    import ast
    import shlex

    recipe = CARD[CARD.index("1.4.0 is that epoch"):CARD.index("## Metrics on the PBC test split")]
    commands = [line for line in recipe.split("```bash", 1)[1].split("```", 1)[0].splitlines()
                if line and not line.startswith("#")]
    assert "cytoplasm_eosin" in INFO["colour_reference"] and "split_hash" in INFO["extra"]
    script = next(c for c in commands if "fit_cytoplasm_colours" in c)
    argv = shlex.split(script)
    source = (ROOT / argv[1]).read_text(encoding="utf-8")
    assert all(f'"{a}"' in source for a in argv[2:] if a.startswith("--"))
    code = next(c for c in commands if "split_hash" in c)
    ast.parse(shlex.split(code)[2])
    copy = next(i for i, c in enumerate(commands) if c.startswith("cp "))
    assert commands.index(script) < commands.index(code) < copy
    assert "0.967 instead of the shipped 0.986" in " ".join(recipe.split())
