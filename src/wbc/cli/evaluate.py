"""``wbc evaluate``: score a classifier on labelled cells; the work is in :mod:`wbc.evaluate`.

Light to import: scikit-learn, matplotlib and ONNX Runtime load only when the command runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from wbc.cli._app import app
from wbc.cli._common import (
    ClassesOpt,
    DataRootOpt,
    ReframeOpt,
    ThreadsOpt,
    TtaOpt,
    progress,
    say,
    warn,
    warn_skipped,
)
from wbc.errors import WbcError


@app.command()
def evaluate(
    data: Annotated[
        Path | None,
        typer.Argument(
            help="Class-per-folder dataset, a split manifest CSV (path,label,split,fold,sha1) or a run "
            "folder. A name like 'pbc' is looked up under the data root."
        ),
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option(
            "--model",
            "-m",
            help="ONNX model or run folder (default: the run's model for a run manifest, "
            "else the model shipped with wbc).",
        ),
    ] = None,
    output: Annotated[
        Path, typer.Option("--output", "-o", help="Folder for metrics.json, predictions.csv, report.html.")
    ] = Path("evaluation"),
    split: Annotated[
        str, typer.Option(help="Manifest split to evaluate ('all' for every row; a folder has none).")
    ] = "test",
    mapping: Annotated[
        list[str] | None, typer.Option("--map", help="Rename a label in DATA: OLD=NEW (repeatable).")
    ] = None,
    compare: Annotated[
        tuple[Path, Path] | None,
        typer.Option("--compare", help="Compare two models/run folders on the same images: --compare A B."),
    ] = None,
    data_root: DataRootOpt = None,
    refit_temperature: Annotated[
        bool,
        typer.Option(
            "--refit-temperature",
            help="Also fit a temperature on the manifest's val split and report its ECE.",
        ),
    ] = False,
    bootstrap: Annotated[
        int, typer.Option(help="Bootstrap resamples for the macro-F1 interval (accuracy, sensitivity and "
                          "precision have exact binomial intervals).", min=100)
    ] = 1000,
    seed: Annotated[int, typer.Option(help="Seed of the bootstrap.")] = 0,
    batch_size: Annotated[int, typer.Option(min=1)] = 64,
    threads: ThreadsOpt = 2,
    classes: ClassesOpt = None,
    tta: TtaOpt = None,
    reframe: ReframeOpt = True,
) -> None:
    """Score a classifier on labelled cells: metrics.json, predictions.csv and a readable report.html."""
    from collections import Counter

    from wbc.data import manifest_data_root
    from wbc.evaluate import (
        default_model_for,
        in_sample_note,
        is_run_manifest,
        load_eval_data,
        recorded_calls_text,
        repeated_note,
        resolve_data_path,
        resolve_model_path,
    )
    from wbc.evaluate import (
        evaluate as run_evaluate,
    )
    from wbc.io import check_output_file
    from wbc.labels import parse_mapping
    from wbc.model import load_model
    from wbc.paths import data_root as default_root

    try:
        maps = parse_mapping(mapping)
    except ValueError as exc:
        raise WbcError(str(exc)) from None
    root = default_root(data_root)
    if compare and model is not None:
        raise WbcError("--model has no effect with --compare; name both models there (--compare A B)")
    if data is None:
        # A's run: A itself, or the folder of A's model file (before wbc 0.33.0 only a folder, though the docs said any)
        run_a = None if not compare else Path(compare[0]).parent if Path(compare[0]).is_file() else Path(compare[0])
        if run_a is not None and (run_a / "manifest.csv").is_file():
            data = run_a / "manifest.csv"
            say(f"no DATA: comparing on {data} (A's run's manifest, --split {split})")
        else:
            raise WbcError("give DATA: a class-per-folder dataset, a manifest CSV or a run folder"
                           + (f" (no manifest.csv beside A, {compare[0]}, to take)" if compare else ""))
    check_output_file(output / ("comparison.json" if compare else "metrics.json"))  # before any work, in one line
    # a manifest's relative paths: under --data-root when given, else beside the manifest first (a `wbc cases export`:
    # before wbc 0.37.0 only under the data root, so the export's manifest was refused), then under the data root
    rows_root = root if data_root is not None else None
    if data_root is None and (source := resolve_data_path(data, root)).is_file():
        root, moved = manifest_data_root(source)  # a run trained with --data-root: its images under that root
        if moved:
            say(moved)
            rows_root = root
    ed = load_eval_data(data, split, maps, rows_root)
    if note := repeated_note(ed.repeated):
        where = "comparison.json" if compare else "metrics.json"
        warn(f"{ed.source}: {note[0].lower()}{note[1:]}; e.g. {ed.repeated[0][0]}; all listed in {output}/{where}",
             "note:")
    splits = Counter(x.split for x in ed.samples) if ed.is_manifest else Counter()
    cross_validation = any(x.fold >= 0 for x in ed.samples)
    if not is_run_manifest(ed.source) and not cross_validation:
        splits.pop("val", None)  # "val" rows of a manifest outside a run folder calibrated no model known here
    # a run folder without its model (runs/default in a checkout) is scored with the shipped model, whose temperature
    # and review threshold the PBC split's val rows fitted: those rows are noted too (before wbc 0.33.0 they were not)
    shipped = not compare and model is None and default_model_for(ed.source) is None
    if note := in_sample_note(splits, cross_validation, shipped):
        warn(f"{ed.source}: {note}: these numbers are not held-out accuracy (--split test is)", "note:")

    if compare:
        from wbc.evaluate.compare import compare as run_compare

        # both answer as wbc classify would with the same options (--classes, --tta, --no-reframe)
        clf_a = load_model(resolve_model_path(compare[0]), threads=threads).with_classes(classes).with_tta(tta)
        clf_b = load_model(resolve_model_path(compare[1]), threads=threads).with_classes(classes).with_tta(tta)
        say(
            f"comparing {clf_a.model_id} and {clf_b.model_id} on {len(ed.samples)} images ...")
        res = run_compare(
            ed, clf_a, clf_b, output, batch_size=batch_size, workers=threads, reframe=reframe, root=rows_root,
        )
        d, mc = res["accuracy_difference"], res["mcnemar"]
        say(
            f"{res['n']} cells: A {res['model_a']['accuracy']:.4f}  B {res['model_b']['accuracy']:.4f}  "
            f"A-B {d['difference']:+.4f} [{d['ci'][0]:+.4f}, {d['ci'][1]:+.4f}]  McNemar "
            f"p={mc['p_value']:.3g}")
        for who, text in res["caution"].items():  # as each model alone would be cautioned (since wbc 0.36.0)
            if text:
                warn(f"model {who.upper()} ({res[f'model_{who}']['path']}): {text}", "note:")
        if res["recorded_calls"]:  # a `wbc cases export`: how the lab's cells were answered in use
            warn(f"{ed.source}: {recorded_calls_text(res['recorded_calls'], any(res['adapted_on'].values()))}",
                 "note:")
        if res["not_scored"]:
            warn(f"{sum(res['not_scored'].values())} cells with labels that the two models do not both answer among "
                 f"(not scored): {res['not_scored']}; --map OLD=CLASS names them", "note:")
        warn_skipped((msg for _, msg in res["unreadable"]), f"{output}/comparison.json")
        say(f"wrote {output / 'comparison.html'}, comparison.json, comparison.csv")
        return

    model_path = resolve_model_path(model) if model else default_model_for(ed.source)
    clf = load_model(model_path, threads=threads).with_classes(classes).with_tta(tta)
    if model is None and model_path is not None:
        say(f"using the run's own model {model_path}")
    elif model is None and ed.is_manifest and ed.source.name == "manifest.csv":
        say(f"no model.onnx beside {ed.source}: scoring with the model shipped with wbc (--model names another)")
    with progress("classifying", len(ed.samples)) as update:
        m = run_evaluate(
            ed,
            clf,
            output,
            mapping=maps,
            root=rows_root,
            batch_size=batch_size,
            workers=threads,
            n_boot=bootstrap,
            seed=seed,
            refit_temperature=refit_temperature,
            run_dir=model.parent if model and model.is_file() else model,
            progress=update,
            reframe=reframe,
        )
    ci = m["ci"]["accuracy"]
    say(
        f"{m['n']} cells scored with {m['model_id']}: accuracy {m['accuracy']:.4f} "
        f"[{ci[0]:.4f}, {ci[1]:.4f}]  macro-F1 {m['macro_f1']:.4f}  "
        f"ECE {m['ece']['raw']:.4f} -> {m['ece']['calibrated']:.4f}")
    if m.get("adapted_on"):  # the export the model learnt from (since wbc 0.37.0's release: before, no word)
        warn(f"{ed.source}: {m['model_id']} was adapted (`wbc adapt`) on this very manifest (SHA-1 "
             f"{m['adapted_on'][:12]}): every cell scored trained it, so these numbers are in-sample, not how it "
             "answers other cells (its held-out check, or cells of other cases, say that)")
    if recorded := m.get("recorded_calls"):  # a `wbc cases export`: how the lab's cells were answered in use
        warn(f"{ed.source}: {recorded_calls_text(recorded, bool(m.get('adapted_on')))}", "note:")
    if m["unknown_labels"]["count"]:
        outside = "outside the classes chosen with --classes" if m["classes_chosen"] else "the model does not know"
        warn(f"{m['unknown_labels']['count']} cells with labels {outside} (not scored): "
             f"{m['unknown_labels']['labels']}; --map OLD=CLASS names them", "note:")
    warn_skipped((msg for _, msg in m["unreadable"]), f"{output}/metrics.json")
    say(f"wrote {output}/metrics.json, predictions.csv, report.html")
