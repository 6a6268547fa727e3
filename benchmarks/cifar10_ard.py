"""Adversarial robustness distillation on CIFAR-10, for a user with the data and a GPU: the digits comparison
(benchmarks/ard_digits.py) at the papers' settings, sized so each method's epoch can be timed in minutes.

    python benchmarks/cifar10_ard.py --data-root data/cifar-10-batches-py --device cuda \\
        --robust-teacher checkpoints/cifar10-trades --clean-teacher checkpoints/cifar10-standard \\
        [--epochs 1] [--train-fraction 0.2] [--samples 1000] [--methods rslad,mtard,pgd-at]

Each method trains a ResNet-18 student with its defenses/cifar10-<method>.toml recipe (PGD-10 at 8/255, SGD 0.1,
batch 128) for --epochs epochs on --train-fraction of the training split, then audits/cifar10.toml evaluates it on
--samples test points (AutoAttack standard). The table gives clean, PGD-20, CW and AutoAttack accuracy and the
training epoch time, also as a ratio to PGD-AT's. One epoch is not a trained model: the accuracies are for checking
that a method runs and what an epoch costs; train with `robustdistill train METHOD --config defenses/cifar10-...toml`
for the papers' numbers. Teachers: any robustdistill checkpoint or a state dict that `load_model` reads (train them
with defenses/cifar10-trades.toml and defenses/cifar10-standard.toml, or convert a published WRN-34-10).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
METHODS = ("pgd-at", "trades", "kd", "ard", "rslad", "adaad", "mtard", "b-mtard")


def overrides_for(method: str, args: argparse.Namespace) -> list[str]:
    common = [f"data.root={args.data_root}", f"device={args.device}", f"epochs={args.epochs}", "lr_milestones=[]",
              f"train_fraction={args.train_fraction}", "val_attack_steps=10"]
    if method in ("kd",):
        return [*common, f"teacher={args.clean_teacher}", "teacher_recipe=''", "arch=resnet18-cifar"]
    if method in ("ard", "rslad", "adaad"):
        return [*common, f"teacher={args.robust_teacher}", "teacher_recipe=''"]
    if method in ("mtard", "b-mtard"):
        return [*common, f"clean_teacher={args.clean_teacher}", f"robust_teacher={args.robust_teacher}",
                "clean_teacher_recipe=''", "robust_teacher_recipe=''"]
    return [*common, "arch=resnet18-cifar"]  # pgd-at, trades: the same student architecture


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", required=True, help="your cifar-10-batches-py (or -bin) folder")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--robust-teacher", required=True, help="robust teacher checkpoint (TRADES WRN-34-10)")
    parser.add_argument("--clean-teacher", required=True, help="clean teacher checkpoint (for KD and MTARD)")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-fraction", type=float, default=0.2, help="part of the train split per epoch")
    parser.add_argument("--samples", type=int, default=1000, help="test points audited per student")
    parser.add_argument("--suite", default=str(REPO / "audits" / "cifar10.toml"),
                        help="audit suite run on each student (its [data] root is replaced by --data-root)")
    parser.add_argument("--out", default=str(REPO / "reports" / "ard-cifar10"))
    parser.add_argument("--checkpoints", default=str(REPO / "checkpoints" / "ard-cifar10"))
    args = parser.parse_args()

    from robustdistill import trainers
    from robustdistill.audits import audit, load_suite
    from robustdistill.reports import index_entry, render_index

    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        print(f"--methods: unknown {', '.join(unknown)}; choose from {', '.join(METHODS)}", file=sys.stderr)
        return 2
    # The suite's [data] root is its own default (data/cifar-10-batches-py): audit the test split of --data-root.
    suite = load_suite(args.suite).to_dict()
    suite["data"]["root"] = str(Path(args.data_root).expanduser().resolve())
    rows, entries = [], []
    seconds: dict[str, float] = {}
    for method in methods:
        out = Path(args.checkpoints) / method
        print(f"training {method} ...", file=sys.stderr, flush=True)
        trainer = trainers.create(method, recipe=REPO / "defenses" / f"cifar10-{method}.toml",
                                  overrides=overrides_for(method, args))
        started = time.perf_counter()
        trainer.fit(out, resume=out.with_name(out.name + ".partial").exists())
        seconds[method] = statistics.median(trainer.epoch_seconds) if trainer.epoch_seconds else time.perf_counter() - started
        run_dir = Path(args.out) / method
        report = audit(suite, teacher=args.robust_teacher, student=out, out=run_dir,
                       samples=args.samples, device=args.device, resume=run_dir.exists())
        entries.append(index_entry(run_dir, args.out, name=method))
        rows.append((method, report))
    render_index(entries, Path(args.out) / "index.html", title="Adversarial robustness distillation on CIFAR-10")
    reference = seconds.get("pgd-at")
    print("| method | clean | PGD-20 | CW | AutoAttack | epoch (s) | epoch / PGD-AT |")
    print("|---|---|---|---|---|---|---|")
    for method, report in rows:
        def pick(probe_prefix: str, metric: str = "robust_accuracy") -> str:
            found = [r["value"] for r in report.rows if r["model"] == "student" and r["metric"] == metric
                     and (r["probe"] == probe_prefix or str(r["params"].get("attack", "")).startswith(probe_prefix))
                     and "check" not in r["params"]]
            return f"{found[0]:.3f}" if found and found[0] is not None else "-"

        ratio = f"{seconds[method] / reference:.2f}" if reference else "-"
        print(f"| {method} | {pick('clean', 'accuracy')} | {pick('pgd')} | {pick('cw')} | {pick('autoattack')} | "
              f"{seconds[method]:.1f} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
