"""Adversarial robustness distillation on CIFAR-10, for a user with the data and a GPU: the digits comparison
(benchmarks/ard_digits.py) at the papers' settings, sized so each method's epoch can be timed in minutes.

    python benchmarks/cifar10_ard.py --data-root data/cifar-10-batches-py --device cuda \\
        --robust-teacher checkpoints/cifar10-trades --clean-teacher checkpoints/cifar10-standard \\
        [--epochs 1] [--train-fraction 0.2] [--samples 1000] [--methods rslad,mtard,pgd-at]

Each method trains a ResNet-18 student with its defenses/cifar10-<method>.toml recipe (PGD-10 at 8/255, SGD 0.1,
batch 128) for --epochs epochs on --train-fraction of the training split, then audits/cifar10.toml (or --suite; its
[data] root is replaced by --data-root) evaluates it on --samples test points (AutoAttack standard). The table gives
clean, PGD-20, CW and AutoAttack accuracy and the training epoch time, also as a ratio to PGD-AT's. One epoch is not
a trained model: the accuracies are for checking that a method runs and what an epoch costs; train with
`robustdistill train METHOD --config defenses/cifar10-...toml` for the papers' numbers. A re-run continues: a student
already trained with the same settings is reused with its recorded epoch times (epoch-seconds.json under
--checkpoints), an interrupted training resumes, and each audit resumes. Teachers: robustdistill checkpoint
directories (train them with defenses/cifar10-trades.toml and defenses/cifar10-standard.toml, or convert a published
WRN-34-10 with `Classifier.from_arch` and `save_checkpoint`): a bare state dict does not name its architecture.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path
from typing import Any

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


def trained_with(out: Path, config: dict[str, object]) -> bool:
    """Whether ``out`` is a finished checkpoint trained with exactly this config from the teachers now at their
    paths (its provenance records both)."""
    from robustdistill.models import checkpoint_sha256

    try:
        provenance = json.loads((out / "config.json").read_text())["provenance"]
        return provenance["recipe"]["config"] == config and all(
            checkpoint_sha256(parent["path"]) == parent["sha256"] for parent in provenance["parents"])
    except Exception:  # missing, unreadable or from another version: train it again
        return False


def train_student(method: str, args: argparse.Namespace) -> tuple[Path, float | None]:
    """Train (or reuse, or resume) one student; returns its checkpoint and its median training-epoch seconds.

    A re-run keeps what an earlier run finished: a checkpoint trained with the same settings is reused, an
    interrupted training (``<method>.partial``) resumes. Epoch times are kept in ``epoch-seconds.json`` after every
    epoch, so a reused or resumed student still has the times of the epochs an earlier process ran.
    """
    from robustdistill import trainers
    from robustdistill.trainers.config import config_to_dict

    checkpoints = Path(args.checkpoints)
    out, timings_path = checkpoints / method, checkpoints / "epoch-seconds.json"
    partial = out.with_name(out.name + ".partial")
    trainer = trainers.create(method, recipe=REPO / "defenses" / f"cifar10-{method}.toml",
                              overrides=overrides_for(method, args))
    timings: dict[str, list[float]] = json.loads(timings_path.read_text()) if timings_path.exists() else {}
    if not partial.exists() and timings.get(method) and trained_with(out, config_to_dict(trainer.config)):
        print(f"{method}: reusing {out} (same settings; delete it to retrain)", file=sys.stderr, flush=True)
        return out, statistics.median(timings[method])
    earlier = list(timings.get(method, [])) if partial.exists() else []  # a fresh run forgets older times

    def record(*_: object) -> None:
        timings[method] = earlier + trainer.epoch_seconds
        checkpoints.mkdir(parents=True, exist_ok=True)
        timings_path.write_text(json.dumps(timings, indent=1))

    record()
    print(f"training {method} ...", file=sys.stderr, flush=True)
    trainer.fit(out, resume=partial.exists(), on_epoch_end=record)
    times = earlier + trainer.epoch_seconds
    return out, statistics.median(times) if times else None


def student_value(report: Any, attack: str | None) -> str:
    """The student's clean accuracy (``attack=None``) or its robust accuracy under the suite's first attack probe
    of that attack (not the curve, transfer or masking probes, which use the same attacks)."""
    kind, metric = ("clean", "accuracy") if attack is None else ("attack", "robust_accuracy")
    names = [p["name"] for p in report.suite.get("probes", [])
             if p.get("kind") == kind and (attack is None or p.get("attack") == attack)]
    if not names:
        return "-"
    value = report.value("student", names[0], metric)
    return "-" if value is None else f"{value:.3f}"


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
    seconds: dict[str, float | None] = {}
    for method in methods:
        out, seconds[method] = train_student(method, args)
        run_dir = Path(args.out) / method
        print(f"auditing {method} ...", file=sys.stderr, flush=True)
        report = audit(suite, teacher=args.robust_teacher, student=out, out=run_dir,
                       samples=args.samples, device=args.device, resume=run_dir.exists())
        entries.append(index_entry(run_dir, args.out, name=method))
        rows.append((method, report))
    render_index(entries, Path(args.out) / "index.html", title="Adversarial robustness distillation on CIFAR-10")
    reference = seconds.get("pgd-at")
    print("| method | clean | PGD-20 | CW | AutoAttack | epoch (s) | epoch / PGD-AT |")
    print("|---|---|---|---|---|---|---|")
    for method, report in rows:
        epoch = seconds[method]
        ratio = f"{epoch / reference:.2f}" if epoch is not None and reference else "-"
        print(f"| {method} | {student_value(report, None)} | {student_value(report, 'pgd')} | "
              f"{student_value(report, 'cw-linf')} | {student_value(report, 'autoattack')} | "
              f"{'-' if epoch is None else f'{epoch:.1f}'} | {ratio} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
