"""Adversarial robustness distillation on digits: every method, the same student, budget and seed, one table.

    python benchmarks/ard_digits.py                 # trains 2 teachers + 8 students, audits each (~20 min, 2 CPUs)
    python benchmarks/ard_digits.py --reuse         # reuse checkpoints under --checkpoints trained by an earlier run

Teachers: the clean digits teacher (defenses/digits-standard.toml) and the TRADES teacher (defenses/digits-trades.toml),
both cnn-small. Students, all cnn-tiny, 20 epochs of Adam 0.002 with PGD-10 at eps 0.125 where the method attacks:
plain KD of the clean teacher (defenses/digits-kd.toml), PGD-AT and TRADES trained directly, and ARD, RSLAD, AdaAD,
MTARD and B-MTARD distilled from the TRADES teacher (MTARD and B-MTARD also from the clean one). Each student is
audited with audits/digits-ard.toml (AutoAttack standard on the 359 test points) against the TRADES teacher; the
reports are linked from reports/ard-digits/index.html. Epoch time is one training epoch (validation excluded), the
median of --timing-rounds epochs per method run round-robin after training, and is also given as a ratio to
PGD-AT's (same student, same attack settings).

Caveat: digits (8x8, 1,079 training images) on a CPU. Differences of a few points are within noise (the 95% interval
of an accuracy on 359 points is about +-5 points); the CIFAR-10 numbers of the papers do not transfer.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STUDENT = ["arch=cnn-tiny"]


def jobs(checkpoints: Path) -> list[tuple[str, str, str, list[str]]]:
    """(name, method, recipe, overrides) in training order; teachers first."""
    clean, robust = checkpoints / "clean-teacher", checkpoints / "robust-teacher"
    one = [f"teacher={robust}", "teacher_recipe=''"]
    two = [f"clean_teacher={clean}", f"robust_teacher={robust}", "clean_teacher_recipe=''", "robust_teacher_recipe=''"]
    return [
        ("clean-teacher", "standard", "defenses/digits-standard.toml", []),
        ("robust-teacher", "trades", "defenses/digits-trades.toml", []),
        ("kd", "kd", "defenses/digits-kd.toml", [f"teacher={clean}", "teacher_recipe=''"]),
        ("pgd-at", "pgd-at", "defenses/digits-pgd-at.toml", STUDENT),
        ("trades", "trades", "defenses/digits-trades.toml", STUDENT),
        ("ard", "ard", "defenses/digits-ard.toml", one),
        ("rslad", "rslad", "defenses/digits-rslad.toml", one),
        ("adaad", "adaad", "defenses/digits-adaad.toml", one),
        ("mtard", "mtard", "defenses/digits-mtard.toml", two),
        ("b-mtard", "b-mtard", "defenses/digits-b-mtard.toml", two),
    ]


def train(checkpoints: Path, reuse: bool) -> dict[str, dict[str, object]]:
    from robustdistill import trainers

    out: dict[str, dict[str, object]] = {}
    timings_path = checkpoints / "epoch-seconds.json"
    timings = json.loads(timings_path.read_text()) if reuse and timings_path.exists() else {}
    for name, method, recipe, overrides in jobs(checkpoints):
        path = checkpoints / name
        if not (reuse and (path / "config.json").exists() and name in timings):
            print(f"training {name} ({method}) ...", file=sys.stderr, flush=True)
            trainer = trainers.create(method, recipe=REPO / recipe, overrides=overrides)
            trainer.fit(path)
            timings[name] = trainer.epoch_seconds
            timings_path.write_text(json.dumps(timings, indent=1))
        out[name] = {"path": path, "method": method, "epoch_seconds": statistics.median(timings[name])}
    return out


def time_epochs(checkpoints: Path, rounds: int) -> dict[str, float]:
    """Median wall time of one training epoch per student method, measured round-robin (every method once per round)
    so that a machine getting busier or quieter affects all methods alike; validation is not included."""
    from robustdistill import trainers
    from robustdistill.data import load_split
    from robustdistill.utils import seed_everything

    train = load_split({"kind": "digits"}, "train")
    setups = {}
    for name, method, recipe, overrides in jobs(checkpoints):
        if name.endswith("teacher"):
            continue
        trainer = trainers.create(method, recipe=REPO / recipe, overrides=overrides)
        trainer.prepare(train)
        seed_everything(0)
        model = trainer.build_model(train).to(trainer.device)
        optimizer, _ = trainer.make_optimizer(model)
        setups[name] = (trainer, model, optimizer)
    seconds: dict[str, list[float]] = {name: [] for name in setups}
    for _ in range(rounds):
        for name, (trainer, model, optimizer) in setups.items():
            started = time.perf_counter()
            trainer.train_epoch(model, optimizer, train, 0)
            seconds[name].append(time.perf_counter() - started)
    return {name: statistics.median(values) for name, values in seconds.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default=str(REPO / "checkpoints" / "ard-digits"))
    parser.add_argument("--out", default=str(REPO / "reports" / "ard-digits"))
    parser.add_argument("--reuse", action="store_true", help="reuse checkpoints (and their timings) from an earlier run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy 2-core box)")
    parser.add_argument("--timing-rounds", type=int, default=5, help="epochs per method for the epoch-time column")
    args = parser.parse_args()

    import torch

    from robustdistill.audits import audit
    from robustdistill.demo import resumable
    from robustdistill.reports import index_entry, render_index

    torch.set_num_threads(args.threads)
    checkpoints, out = Path(args.checkpoints), Path(args.out)
    checkpoints.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    models = train(checkpoints, args.reuse)
    students = [name for name in models if not name.endswith("teacher")]
    print("timing epochs ...", file=sys.stderr, flush=True)
    epoch_seconds = time_epochs(checkpoints, args.timing_rounds)
    reference = epoch_seconds["pgd-at"]
    rows, entries = [], []
    for name in students:
        run_dir = out / name
        print(f"auditing {name} ...", file=sys.stderr, flush=True)
        teacher, student = Path(models["robust-teacher"]["path"]), Path(models[name]["path"])
        # An earlier audit of these very checkpoints is continued (finished probes are not recomputed).
        report = audit(REPO / "audits" / "digits-ard.toml", teacher=teacher, student=student, out=run_dir,
                       resume=resumable(run_dir, teacher, student), progress=False)
        entries.append(index_entry(run_dir, out, name=f"{name} student vs the TRADES teacher"))

        def value(probe: str, metric: str = "robust_accuracy") -> float:
            return report.value("student", probe, metric)

        seconds = epoch_seconds[name]
        rows.append((name, value("clean", "accuracy"), value("pgd-20"), value("cw-linf"), value("autoattack"),
                     seconds, seconds / float(reference), "flagged" if "student" in report.untrusted else ""))
    render_index(entries, out / "index.html", title="Adversarial robustness distillation on digits")
    print("| student (cnn-tiny) | clean | PGD-20 | CW-Linf | AutoAttack | epoch (s) | epoch / PGD-AT | masking |")
    print("|---|---|---|---|---|---|---|---|")
    for name, clean, pgd, cw, aa, seconds, ratio, flag in rows:
        print(f"| {name} | {clean:.3f} | {pgd:.3f} | {cw:.3f} | {aa:.3f} | {seconds:.2f} | {ratio:.2f} | {flag or '-'} |")
    teacher_report = json.loads((out / students[0] / "report.json").read_text())
    aa = [r for r in teacher_report["results"] if r["model"] == "teacher" and r["probe"] == "autoattack"
          and r["metric"] == "robust_accuracy"]
    if aa:
        print(f"\nTRADES teacher (cnn-small): AutoAttack {aa[0]['value']:.3f}")
    print(f"\nreports: {out / 'index.html'}  ({time.perf_counter() - started:.0f} s, torch {torch.__version__}, "
          f"{args.threads} thread(s), CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
