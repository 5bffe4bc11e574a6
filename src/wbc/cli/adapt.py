"""``wbc adapt``: adapt a classifier to a new lab (few-shot fine-tuning, a head refit, or label-free)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import typer

from wbc.cli._app import app, console
from wbc.cli._common import ClassesOpt, ModelOpt, ThreadsOpt, note_foreign_images, say, warn, warn_skipped
from wbc.data import ACCEPTED_AT_SIGN_OFF as ACCEPTED  # the label_source of a call accepted at sign-off
from wbc.errors import WbcError


def progress_lines(what: str) -> Callable[[int, int], None]:
    """Progress as plain lines, for a log file or a scheduled job (a terminal gets a bar instead): one at each tenth
    of the work, with the steps done and the time taken."""
    t0, shown = time.perf_counter(), [0]

    def update(done: int, total: int) -> None:
        tenth = 10 * done // max(total, 1)
        if tenth > shown[0]:
            shown[0] = tenth
            seconds = time.perf_counter() - t0
            say(f"{what}: {10 * tenth}% ({done}/{total} steps) after {int(seconds // 60)} min {seconds % 60:.0f} s")

    return update


#: ``--epochs``'s default, the fine-tuning recipe's (``wbc.train.finetune.DEFAULTS``: torch is not imported here).
EPOCHS = 60


def both_scored(res: Any) -> str:
    """How the held-out check scored each cell, before and after alike (before wbc 0.32.0 the original model saw one
    view and the adapted one the mean of its rotations, whose gain was then counted as the adaptation's); for the
    cells of a `wbc cases export`, "before" is the calls the cases recorded (:func:`wbc.adapt.recorded_calls`)."""
    views = res.settings.get("tta_views", 1)
    each = f"each cell's mean over {views} flips/rotations" if views > 1 else "one view of each cell"
    recorded = res.settings.get("before")
    if recorded:
        models = recorded.get("by_model") or ({recorded["model_id"]: 0} if recorded.get("model_id") else {})
        if len(models) > 1:  # cases analysed by two models (a round of review after an adapted model): both named
            by = " by " + " and ".join(f"{m or 'a model not recorded'} ({k} cells)" for m, k in models.items())
        else:
            by = f" by {recorded['model_id']}" if recorded.get("model_id") else ""
        return (f"; before: the calls `wbc analyze` recorded in the cases{by} (the original model on the exported "
                f"crops, as they are: {recorded['original_on_crops']:.1%}); after: on {each}")
    return f", both on {each}"




def export_line(export: dict[str, Any] | None) -> str:
    """Where the labels of a `wbc cases export` came from, as the adapted model records them
    (``settings["export"]``: :meth:`wbc.data.RecordedCalls.provenance`); "" for other data.

    >>> export_line({"cases": [{"name": "S-A", "id": "1", "cells": 12}], "stores": ["/lab/cases.sqlite"],
    ...              "manifest_sha1": "0123456789abcdef0123"})
    'labels from case S-A (id 1, 12 cells) of /lab/cases.sqlite; manifest SHA-1 0123456789ab (recorded in the model)'
    """
    if not export:
        return ""
    cases = ", ".join(f"{c['name']} (id {c['id']}, {c['cells']} cells)" for c in export.get("cases", []))
    stores = ", ".join(export.get("stores", [])) or "a store not recorded"
    return (f"labels from case{'s' * (len(export.get('cases', [])) != 1)} {cases} of {stores}; manifest SHA-1 "
            f"{export.get('manifest_sha1', '')[:12]} (recorded in the model)")


@app.command()
def adapt(
    data: Annotated[Path, typer.Option("--dataset", "--data", help="Labelled cells of the new lab: <class>/<image> "
                                       "folders or a manifest CSV (path,label). About 25-100 cells. "
                                       "With --no-labels: any folder of the lab's cell images.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="Adapted ONNX model to write.")],
    model: ModelOpt = None,
    stain: Annotated[str | None, typer.Option(
        help="Stain normalisation to store: reinhard | macenko | histogram (this lab's colours -> the "
             "training colours), none (remove), default: keep the model's.")] = None,
    label_map: Annotated[list[str] | None, typer.Option("--map", help="Rename labels: old=new.")] = None,
    seed: Annotated[int, typer.Option(help="Seed for the held-out split, the folds and fine-tuning.")] = 0,
    threads: ThreadsOpt = 2,
    report: Annotated[Path | None, typer.Option(help="Also write the adaptation summary as JSON (another file than "
                                                "the output and the .json and .pt written beside it).")] = None,
    no_labels: Annotated[bool, typer.Option("--no-labels", help="No labels needed: choose the colour mapping "
                                            "(none or reinhard) and the framing that make the model most "
                                            "consistent and confident on this lab's cells, and report why "
                                            "(--stain METHOD: that mapping, reinhard, macenko or histogram, no "
                                            "choice); the head is kept.")
                         ] = False,
    classes: ClassesOpt = None,
    prior: Annotated[bool, typer.Option("--prior/--no-prior", help="With --no-labels: also estimate the lab's "
                                        "class frequencies from its unlabelled cells (EM) and re-weight the "
                                        "probabilities to them (training balanced the classes).")] = True,
    framing: Annotated[str, typer.Option(help="With --no-labels (not with --stain): how the lab's cells are framed "
                                         "for the model. auto: the model's framing unless another makes it "
                                         "clearly more consistent and confident on these cells; band: re-frame "
                                         "only cells far from the training framing; all: re-frame every cell "
                                         "(cells small in wide fields); lab: one magnification for all the lab's "
                                         "cells, set from their median nucleus (keeps their relative "
                                         "sizes).")] = "auto",
    max_cells: Annotated[int, typer.Option(
        min=0, help="With --no-labels (not with --stain): score at most this many of the folder's cells, a random "
        "sample of a larger folder, the same each run (0: every one). The adapted model answers every cell either "
        "way.")] = 2000,
    method: Annotated[str, typer.Option(help="finetune: every weight, in PyTorch (more accurate, needs the "
                                        "network's .pt weights); head: refit the last layer only (seconds, "
                                        "no PyTorch).")] = "finetune",
    checkpoint: Annotated[Path | None, typer.Option(help="PyTorch weights for --method finetune (default: "
                                                    "the model's own .pt beside it; for a run's model.onnx, the run's "
                                                    "best.pt).")] = None,
    epochs: Annotated[int, typer.Option(min=1, help="Fine-tuning epochs over the labelled cells.")] = EPOCHS,
    members: Annotated[int, typer.Option(min=1, help="Fine-tune this many copies (other seeds) and ship their "
                                         "ensemble: more accurate, K times the fitting time and inference "
                                         "cost.")] = 1,
    cross_validate: Annotated[bool, typer.Option(
        "--cross-validate/--no-cross-validate", help="Fit the held-out check, temperature and review threshold "
        "on every cell by 5-fold cross-validation (default), or on one held-out fifth (--no-cross-validate: "
        "about 1/3 of the time, a coarser review threshold).")] = True,
    tta: Annotated[int, typer.Option(
        "--tta", min=1, max=8, help="Flips/rotations the adapted model averages per cell (default 4, the "
        "rotations: more accurate on other labs' cells; 1: one network pass per cell). Not with --stain and "
        "--no-labels (a colour mapping only).")] = 4,
    unlabelled: Annotated[Path | None, typer.Option(
        help="With --method finetune: a folder of the lab's cell images without labels (e.g. the slides to "
             "be counted), learnt from by consistency alongside the labelled cells (2-3x "
             "the fitting time; on BCCD no reliable gain, see docs/generalisation.md).")] = None,
    review_target: Annotated[float | None, typer.Option(
        min=0.5, max=0.9999, help="Accuracy the cells left unflagged must be shown to reach on the held-out "
        "labelled cells (95 % lower bound); default: the model's (0.995). Fewer cells show less: 25 all right "
        "show 0.887, about 600 show 0.995. Where no threshold shows it, every cell is flagged.")] = None,
) -> None:
    """Adapt a classifier to a new lab from a few labelled cells (fine-tunes the network; minutes on a CPU)."""
    from wbc.adapt import MAX_CELLS_WARN, adapt_model, adapt_stain, few_cells_warning
    from wbc.calibration import cells_to_show
    from wbc.io import atomic_write_text, check_output_file
    from wbc.labels import parse_mapping
    from wbc.model import beside_model

    if no_labels and unlabelled is not None:
        raise WbcError("--unlabelled goes with labelled cells; with --no-labels, --data is the unlabelled folder")
    for path in (output, beside_model(output, ".json"), report):  # before any work: a bad path fails at once
        if path is not None:
            check_output_file(path)
    beside = (output, beside_model(output, ".json"), beside_model(output, ".pt"))  # what write_model, the weights write
    if report is not None and report.resolve() in {p.resolve() for p in beside}:  # written last, it would replace it
        raise WbcError(f"{report}: --report would overwrite the adapted model or a file written beside it "
                       f"({', '.join(p.name for p in beside)}): choose another name")
    # nor what the run reads: a labelled CSV given as --report was replaced by JSON (before wbc 0.32.0)
    read = [(data, "--data"), (unlabelled, "--unlabelled"), (checkpoint, "--checkpoint")]
    if model is not None:
        read += [(Path(model), "--model"), (beside_model(model, ".json"), "--model's .json"),
                 (beside_model(model, ".pt"), "--model's .pt")]
    for path, what in read:
        if report is not None and path is not None and path.is_file() and report.resolve() == path.resolve():
            raise WbcError(f"{report}: --report would overwrite {what}: choose another name")
    if not no_labels:  # options of the label-free adaptation, which the labelled one never read (wbc 0.31.0)
        from wbc.adapt_unlabelled import MAX_CELLS

        unused = [name for name, given in (("--classes", classes is not None), ("--framing", framing != "auto"),
                                           ("--max-cells", max_cells != MAX_CELLS), ("--no-prior", not prior))
                  if given]
        if unused:
            raise WbcError(f"{', '.join(unused)}: only with --no-labels; the labelled adaptation fits the model to the "
                           "labels given (classify with --classes CLASSES to restrict its answers)")
    if no_labels:  # options of the labelled adaptation, which the label-free one never read (before wbc 0.34.0)
        unused = [name for name, given in (
            ("--method", method != "finetune"), ("--epochs", epochs != EPOCHS), ("--members", members != 1),
            ("--checkpoint", checkpoint is not None), ("--no-cross-validate", not cross_validate),
            ("--map", bool(label_map)), ("--review-target", review_target is not None), ("--seed", seed != 0))
            if given]
        if unused:
            raise WbcError(f"{', '.join(unused)}: not with --no-labels, which fits no head, network or review "
                           "threshold (it chooses a colour mapping, a framing and class frequencies from unlabelled "
                           "cells, a sample of a large folder the same each run)")
    if no_labels and stain is not None:  # a colour mapping only: nothing is chosen, framed, sampled or estimated
        from wbc.adapt_unlabelled import MAX_CELLS
        from wbc.model import ADAPTED_TTA_VIEWS

        unused = [name for name, given in (("--classes", classes is not None), ("--framing", framing != "auto"),
                                           ("--max-cells", max_cells != MAX_CELLS), ("--tta", tta != ADAPTED_TTA_VIEWS))
                  if given]
        if unused:
            raise WbcError(f"{', '.join(unused)}: not with --no-labels --stain {stain}, which stores that colour "
                           "mapping only; drop --stain to have the mapping, framing and class frequencies chosen")
    note_foreign_images([data] if unlabelled is None else [data, unlabelled])
    if no_labels and stain is None:
        from wbc.adapt_unlabelled import adapt_unlabelled, summary_lines

        free = adapt_unlabelled(model, data, output, classes=classes, threads=threads, prior=prior,
                                framing=framing, tta=tta, max_cells=max_cells)
        warn_skipped(free.skipped)
        for line in summary_lines(free):
            say(line)
        say(f"scored on {free.n_cells} unlabelled cells over {', '.join(free.classes)} in "
            f"{free.seconds:.0f} s -> {free.output}")
        if report:
            atomic_write_text(report, json.dumps(free.to_dict(), indent=2) + "\n")
        return
    if no_labels and stain is not None:  # (stain is None was handled above)
        out = adapt_stain(model, data, output, stain=stain, threads=threads)
        warn_skipped(out["skipped"])
        say(f"{out['stain']} colour mapping fitted on {out['n_cells']} cells in {out['seconds']:.0f} s "
            f"-> {out['output']} (head, calibration and OOD flags unchanged: validate locally)")
        if report:
            atomic_write_text(report, json.dumps(out, indent=2) + "\n")
        return
    try:
        mapping = parse_mapping(label_map or []) or None
    except ValueError as exc:
        raise WbcError(str(exc)) from None
    finetune_only = [name for name, given in (("--members", members != 1), ("--unlabelled", unlabelled is not None),
                                              ("--checkpoint", checkpoint is not None), ("--epochs", epochs != EPOCHS),
                                              ("--no-cross-validate", not cross_validate)) if given]
    if method == "head" and finetune_only:
        raise WbcError(f"{', '.join(finetune_only)}: need --method finetune (--method head refits the last layer only, "
                       "cross-validated)")
    if method in ("head", "finetune") and (few := few_cells_warning(data, mapping)):
        warn(few)
    if method == "head":
        res = adapt_model(model, data, output, stain=stain, seed=seed, threads=threads, mapping=mapping, tta=tta,
                          review_target_accuracy=review_target)
    elif method == "finetune":
        from rich.progress import BarColumn, Progress, TimeRemainingColumn

        if members > 1 and cross_validate:
            console.print(f"[yellow]note:[/] --members {members} with cross-validation fine-tunes {members} "
                          f"networks per fold and {members} on all cells: {members}x the time of one "
                          "(--no-cross-validate takes about a third of that)", highlight=False)

        lines = None if console.is_terminal else progress_lines("fine-tuning")  # a log file: a line per tenth
        with Progress("fine-tuning", BarColumn(), "{task.completed}/{task.total} steps", TimeRemainingColumn(),
                      console=console, transient=True, disable=lines is not None) as bar:
            task = bar.add_task("steps", total=None)
            try:  # the torch half, imported only when used
                from wbc.train.finetune import adapt_finetune
            except ImportError as exc:
                raise WbcError(f"--method finetune needs PyTorch ({exc}): pip install -e '.[train]', or use "
                               "--method head") from None

            res = adapt_finetune(model, data, output, checkpoint=checkpoint, stain=stain, seed=seed,
                                 threads=threads, mapping=mapping, epochs=epochs, members=members,
                                 cross_validate=cross_validate, unlabelled=unlabelled, tta=tta,
                                 review_target_accuracy=review_target,
                                 progress=lines or (lambda done, total: bar.update(task, completed=done,
                                                                                    total=total)))
    else:
        raise WbcError(f"--method {method!r}: choose finetune or head")
    if res.n_cells > MAX_CELLS_WARN:
        console.print(f"[yellow]note:[/] {res.n_cells} cells: with this many, training on the lab's cells "
                      "with `wbc train` may do better than few-shot adaptation", highlight=False)
    warn_skipped(res.skipped)
    for note in res.notes:
        warn(note)
    say(f"adapted on {res.n_cells} cells ({', '.join(f'{k} {v}' for k, v in res.counts.items())})"
        f" in {res.seconds:.0f} s -> {res.output}")
    if line := export_line(res.settings.get("export")):
        say(line)
    if accepted := (res.settings.get("export") or {}).get("label_sources", {}).get(ACCEPTED):
        warn(f"{accepted} of the {res.n_cells} labels are the model's own calls accepted at sign-off (nobody reviewed "
             "them; manifest.csv's label_source): they teach the model its own answers, and \"before\" counts them "
             "right")
    if res.method == "head":
        say(f"held-out check ({res.folds}-fold cross-validation, every cell predicted by a head "
            f"that never saw it): accuracy {res.heldout_acc_before:.1%} before -> "
            f"{res.heldout_acc_after:.1%} after{both_scored(res)}")
        say(f"regularisation {res.lam:g}; temperature {res.temperature:.2f}; review below "
            f"confidence {res.review_threshold:.2f}; each cell averaged over "
            f"{res.settings.get('tta_views', 1)} flips/rotations")
    else:
        how = (f"{res.folds}-fold cross-validation, each of the {res.heldout_n} cells predicted by a fine-tuning "
               "that never saw it") if res.settings.get("cross_validate") else (
               f"{res.heldout_n} cells kept out of a first fine-tuning")
        say(f"held-out check ({how}): accuracy "
            f"{res.heldout_acc_before:.1%} before -> {res.heldout_acc_after:.1%} after{both_scored(res)}")
        views = res.settings.get("tta_views", 1)
        say(f"temperature {res.temperature:.2f}; review below confidence {res.review_threshold:.2f}; "
            f"each cell averaged over {views} flips/rotations; the output is float32 ONNX")
    if res.temperature_note:  # held-out cells all right fit no temperature: the base model's was kept
        say(res.temperature_note)
    if res.shown_accuracy is not None and res.review_threshold >= 1.0:
        console.print(
            f"[yellow]every cell will be flagged for review:[/] {res.heldout_n} held-out cells show at most "
            f"{res.shown_accuracy:.1%} accuracy among the cells they accept (95 % lower bound), short of the review "
            f"target {res.review_target_accuracy:.1%}. Label more cells (about "
            f"{cells_to_show(res.review_target_accuracy or 0.995)} right in a row show it), or choose a target "
            "they show with --review-target", highlight=False)
    if res.heldout_acc_after + 1e-9 < res.heldout_acc_before:
        than = "the calls recorded in the cases" if res.settings.get("before") else "the original"
        console.print(f"[yellow]warning:[/] the adapted model did worse on held-out cells than {than}; "
                      "check the labels or add cells", highlight=False)
    if report:
        atomic_write_text(report, json.dumps(res.to_dict(), indent=2) + "\n")
