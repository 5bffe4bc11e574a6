"""Few-shot fine-tuning with the lab's unlabelled cells as well (FixMatch consistency), against the plain recipe.

An experiment, not a `wbc adapt` option yet: ``n`` random cells of a labelled folder are the lab's labelled
cells, the rest are scored (5-part); every cell of the folder is also given without its label. Each step adds,
to the labelled loss of :func:`wbc.train.finetune.finetune`'s recipe, a batch of unlabelled cells whose answer on
a flip/rotation (at least ``--threshold`` confident) the network must give on a strongly augmented copy (the
augmentation of ``configs/second_epoch.toml``), weighted ``--weight`` (0: the plain recipe).

    python benchmarks/bccd_cells.py --split trainval --n 0 --output /tmp/bccd_trainval
    python benchmarks/semi_finetune.py --folder /tmp/bccd_trainval --weight 0 --seed 0
    python benchmarks/semi_finetune.py --folder /tmp/bccd_trainval --weight 1 --seed 0
"""

from __future__ import annotations

import argparse
import copy
import time
import tomllib
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--folder", type=Path, required=True, help="<class>/<cell> images of one lab")
    ap.add_argument("--n", type=int, default=100, help="labelled cells (the rest are scored)")
    ap.add_argument("--weight", type=float, default=1.0)
    ap.add_argument("--threshold", type=float, default=0.75)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--config", type=Path, default=Path("configs/second_epoch.toml"))
    args = ap.parse_args(argv)

    import numpy as np
    import torch
    import torch.nn.functional as F

    from wbc.classify import load_cells
    from wbc.config import TrainConfig
    from wbc.io import iter_image_paths
    from wbc.labels import parse_class_set, restrict_probabilities
    from wbc.model import load_model
    from wbc.reframe import framing_stats_of
    from wbc.train.finetune import DEFAULTS, _dihedral, load_weights
    from wbc.train.transforms import build_augment, cells_to_batch, normalise

    torch.set_num_threads(2)
    clf = load_model(None)
    net, info = load_weights(clf.path.with_suffix(".pt"))
    paths = list(iter_image_paths([args.folder]))
    cells, ok, _ = load_cells(paths, clf.info.input_size, 2, reframe=framing_stats_of(clf))
    labels = np.array([clf.classes.index(paths[i].parent.name) for i in ok])
    perm = np.random.default_rng(args.seed).permutation(len(labels))
    lab, rest = perm[: args.n], perm[args.n :]
    raw = tomllib.loads(args.config.read_text())["train"]
    known = TrainConfig.__dataclass_fields__
    strong = build_augment(TrainConfig().updated({k: v for k, v in raw.items() if k in known}))

    t0 = time.perf_counter()
    gen = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    model = copy.deepcopy(net).eval()  # BatchNorm statistics stay the training ones, as in finetune()
    for p in model.parameters():
        p.requires_grad_(True)
    x = cells_to_batch(cells[lab], info.mean, info.std)
    y = torch.as_tensor(labels[lab])
    unl = torch.from_numpy(np.ascontiguousarray(cells)).permute(0, 3, 1, 2)
    bs, epochs = DEFAULTS["batch_size"], DEFAULTS["epochs"]
    steps = max(1, len(x) // bs)
    opt = torch.optim.AdamW(model.parameters(), lr=DEFAULTS["lr"], weight_decay=DEFAULTS["weight_decay"])
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, DEFAULTS["lr"], total_steps=epochs * steps, pct_start=0.1)
    passed = 0
    for _ in range(epochs):
        order = torch.randperm(len(x), generator=gen)
        for i in range(steps):
            idx = order[i * bs : (i + 1) * bs]
            loss = F.cross_entropy(model(_dihedral(x[idx], gen)), y[idx], label_smoothing=DEFAULTS["label_smoothing"])
            if args.weight > 0:
                xu = unl[torch.randint(0, len(unl), (bs,), generator=gen)]
                with torch.no_grad():
                    conf, pseudo = torch.softmax(model(_dihedral(normalise(xu, info.mean, info.std), gen)), 1).max(1)
                keep = (conf >= args.threshold).float()
                passed += int(keep.sum())
                xs = normalise(torch.stack([strong(t) for t in xu]), info.mean, info.std)
                loss = loss + args.weight * (F.cross_entropy(model(xs), pseudo, reduction="none") * keep).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    with torch.no_grad():
        probs = torch.softmax(model.eval()(cells_to_batch(cells[rest], info.mean, info.std)), 1).numpy()
    p5, _ = restrict_probabilities(probs, clf.classes, parse_class_set("5part", clf.classes))
    acc = float((p5.argmax(1) == labels[rest]).mean())
    print(f"weight {args.weight} threshold {args.threshold} seed {args.seed}: {len(rest)} other cells, 5-part "
          f"accuracy {acc:.3f}; {passed} unlabelled cells passed the threshold; {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
