"""Membership inference against a digits DDPM by training-set size and timestep (Matsumoto et al. 2023's two findings).

    python benchmarks/diffusion_mia_size.py                  # 4 DDPMs of defenses/digits-ddpm.toml, ~8 min on 2 CPUs
    python benchmarks/diffusion_mia_size.py --reuse          # reuse the DDPMs an earlier run trained

Each DDPM is the digits recipe trained on a seeded class-balanced fraction of the train split (--fractions) for the
SAME number of optimiser steps (--steps), so a smaller set is seen more often per image - the regime the paper
compares. Members are its training images, non-members the train images it never saw (balanced, at most 500 each).
The loss attack (-||eps - eps_theta(x_t, t)||^2, --repeats noise draws) is scored at each timestep: AUC on all the
balanced points (no choice is made on them; the audit's diffusion-mia probe calibrates t on a held-apart half), and
PIA and SecMI at the paper's settings beside it. Prints one table and writes it as JSON (--out).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.metrics import roc_auc_score

REPO = Path(__file__).resolve().parents[1]
TIMESTEPS = (1, 10, 50, 100, 200, 300, 500, 700, 900)


def train(fraction: float, steps: int, out: Path, reuse: bool) -> tuple[Path, float]:
    from robustdistill import trainers

    if reuse and (out / "robustdistill.json").is_file():
        return out, float(json.loads((out / "robustdistill.json").read_text())["seconds"])
    n = max(10, round(fraction * 1079))
    epochs = max(1, math.ceil(steps / math.ceil(n / 64)))
    overrides = ["device=cpu", f"train_fraction={fraction}", f"epochs={epochs}"]
    trainer = trainers.create("ddpm", recipe=REPO / "defenses" / "digits-ddpm.toml", overrides=overrides)
    started = time.perf_counter()
    trainer.fit(out)
    return out, time.perf_counter() - started


def attack(path: Path, repeats: int) -> dict[str, object]:
    from robustdistill.attacks.privacy import diffusion as mia
    from robustdistill.attacks.privacy.membership import from_provenance
    from robustdistill.models.diffusion import load_diffusion_model

    model = load_diffusion_model(path)
    truth = from_provenance("teacher", model.provenance, "model", "train it with robustdistill")
    members, others = np.flatnonzero(truth.is_member), np.flatnonzero(~truth.is_member)
    n = min(len(members), len(others), 500)
    rng = np.random.default_rng(0)
    chosen = np.concatenate([rng.permutation(members)[:n], rng.permutation(others)[:n]])
    x, y, labels = truth.population.x[chosen], truth.population.y[chosen], truth.is_member[chosen]
    row: dict[str, object] = {"members": int(len(members)), "balanced": int(n)}
    row["loss"] = {t: round(float(roc_auc_score(labels, mia.loss_scores(model, x, y, t, seed=0, repeats=repeats))), 3)
                   for t in TIMESTEPS}
    row["pia_t200"] = round(float(roc_auc_score(labels, mia.pia_scores(model, x, y, 200))), 3)
    row["secmi_t100"] = round(float(roc_auc_score(labels, mia.secmi_scores(model, x, y, 100, 10))), 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.05, 0.1, 0.25, 0.5])
    parser.add_argument("--steps", type=int, default=1080, help="optimiser steps per DDPM (the recipe's at 0.5)")
    parser.add_argument("--repeats", type=int, default=4)
    parser.add_argument("--checkpoints", type=Path, default=REPO / "checkpoints" / "bench-diffusion-mia")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "bench-diffusion-mia.json")
    parser.add_argument("--reuse", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = []
    for fraction in args.fractions:
        path, seconds = train(fraction, args.steps, args.checkpoints / f"ddpm-{fraction:g}", args.reuse)
        row = {"fraction": fraction, "train_seconds": round(seconds, 1), **attack(path, args.repeats)}
        results.append(row)
        print(json.dumps(row), flush=True)
    print(f"\n{'members':>8} " + " ".join(f"{'t=' + str(t):>6}" for t in TIMESTEPS) + f" {'PIA':>6} {'SecMI':>6}")
    for row in results:
        loss = row["loss"]
        print(f"{row['members']:>8} " + " ".join(f"{loss[t]:>6.3f}" for t in TIMESTEPS)
              + f" {row['pia_t200']:>6.3f} {row['secmi_t100']:>6.3f}")
    print("loss-attack AUC by timestep (1000-step DDPM), members vs unseen train images; same optimiser steps for all")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"steps": args.steps, "repeats": args.repeats, "rows": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
