"""ProARD on digits: a family of robust students from one training, progressive stages vs random sampling, one table.

    python benchmarks/proard_digits.py            # teacher + 2 families + 6 exports + 2 audits (~45 min, 2 CPUs)
    python benchmarks/proard_digits.py --reuse    # reuse checkpoints and finished audit work from an earlier run

The teacher is the largest network of the digits ResNet-style space trained with TRADES
(defenses/digits-proard-teacher.toml). Two families are distilled from it with the same loss (RSLAD), budget (20
epochs) and seed: the paper's progressive stages (defenses/digits-proard.toml) and the random-sampling baseline
(defenses/digits-proard-random.toml). From each family three sub-networks are exported with BatchNorm recalibrated
(smallest, middle, largest: `robustdistill proard export`) and audited together against the teacher with
audits/digits-proard.toml (clean, PGD-20, AutoAttack standard on the 359 test points, size); the reports are linked
from reports/proard-digits/index.html. A `proard select` search under the middle sub-network's parameter budget is run
on the progressive family and its pick is audited too.

Caveat: digits (8x8, 1,079 training images) on a CPU; the 95% interval of an accuracy on 359 points is about +-5
points.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {"progressive": "defenses/digits-proard.toml", "random": "defenses/digits-proard-random.toml"}
SIZES = ("smallest", "middle", "largest")


def middle_key(space) -> str:  # type: ignore[no-untyped-def]
    """The sub-network with the middle choice of every dimension in every stage."""
    from robustdistill.models.dynamic import SubnetConfig

    stages = len(space.stage_channels)

    def mid(choices) -> tuple:  # type: ignore[no-untyped-def]
        ordered = sorted(choices)
        return (ordered[len(ordered) // 2],) * stages

    return SubnetConfig(depth=mid(space.depth_choices), width=mid(space.width_choices),
                        expand=mid(space.expand_choices), kernel=mid(space.kernel_choices)).key()


def train(checkpoints: Path, reuse: bool) -> dict[str, Path]:
    from robustdistill import trainers

    teacher = checkpoints / "teacher"
    paths = {"teacher": teacher}
    if not (reuse and (teacher / "config.json").exists()):
        print("training the teacher (TRADES, largest network) ...", file=sys.stderr, flush=True)
        trainers.create("trades", recipe=REPO / "defenses/digits-proard-teacher.toml").fit(teacher)
    for name, recipe in FAMILIES.items():
        path = checkpoints / f"family-{name}"
        paths[name] = path
        if not (reuse and (path / "config.json").exists()):
            print(f"training the {name} family ...", file=sys.stderr, flush=True)
            trainer = trainers.create("proard", recipe=REPO / recipe, overrides=[f"teacher={teacher}", "teacher_recipe=''"])
            trainer.fit(path)
    return paths


def export(checkpoints: Path, family: Path, name: str, reuse: bool) -> dict[str, Path]:
    from robustdistill.trainers.proard_family import export_subnet, load_family

    space = load_family(family).space
    keys = {"smallest": "smallest", "middle": middle_key(space), "largest": "largest"}
    out = {}
    for size, key in keys.items():
        path = checkpoints / f"{name}-{size}"
        if not (reuse and (path / "config.json").exists()):
            export_subnet(family, key, path)
        out[size] = path
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoints", default=str(REPO / "checkpoints" / "proard-digits"))
    parser.add_argument("--out", default=str(REPO / "reports" / "proard-digits"))
    parser.add_argument("--reuse", action="store_true", help="reuse checkpoints from an earlier run")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1: fastest on a busy 2-core box)")
    args = parser.parse_args()

    import torch

    from robustdistill.audits import audit
    from robustdistill.demo import resumable
    from robustdistill.reports import index_entry, render_index
    from robustdistill.trainers.proard_family import export_subnet, select_subnet

    torch.set_num_threads(args.threads)
    checkpoints, out = Path(args.checkpoints), Path(args.out)
    checkpoints.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    paths = train(checkpoints, args.reuse)
    exports = {name: export(checkpoints, paths[name], name, args.reuse) for name in FAMILIES}

    # The search: the most robust sub-network of the progressive family within the middle one's parameter count.
    middle_params = json.loads((exports["progressive"]["middle"] / "config.json").read_text())["provenance"]["proard_subnet"]["parameters"]
    selected = checkpoints / "progressive-selected"
    if not (args.reuse and (selected / "config.json").exists()):
        print(f"searching the progressive family within {middle_params} parameters ...", file=sys.stderr, flush=True)
        ranked = select_subnet(paths["progressive"], budget_params=middle_params, evaluations=30)
        export_subnet(paths["progressive"], ranked[0].subnet.key(), selected)

    rows, entries = [], []
    for name in FAMILIES:
        run_dir = out / name
        models = {"student": exports[name]["largest"], "middle": exports[name]["middle"], "smallest": exports[name]["smallest"]}
        if name == "progressive":
            models["selected"] = selected
        extra = {role: path for role, path in models.items() if role != "student"}
        print(f"auditing the {name} family ...", file=sys.stderr, flush=True)
        report = audit(REPO / "audits" / "digits-proard.toml", teacher=paths["teacher"], student=models["student"],
                       models=extra, out=run_dir, progress=False,
                       resume=resumable(run_dir, paths["teacher"], models["student"], extra))
        entries.append(index_entry(run_dir, out, name=f"{name} family vs the TRADES teacher"))
        for role in models:
            provenance = json.loads((models[role] / "config.json").read_text())["provenance"]["proard_subnet"]
            rows.append((name, "largest" if role == "student" else role, provenance["key"], provenance["parameters"],
                         report.value(role, "clean", "accuracy"), report.value(role, "pgd-20", "robust_accuracy"),
                         report.value(role, "autoattack", "robust_accuracy"), role in report.untrusted))
    render_index(entries, out / "index.html", title="ProARD families on digits")
    print("| schedule | sub-network | parameters | clean | PGD-20 | AutoAttack |")
    print("|---|---|---|---|---|---|")
    for schedule, role, key, params, clean, pgd, aa, flagged in sorted(rows, key=lambda r: (r[0], r[3])):
        print(f"| {schedule} | {role} ({key}) | {params:,} | {clean:.3f} | {pgd:.3f} | {aa:.3f}{' *' if flagged else ''} |")
    teacher = json.loads((out / "progressive" / "report.json").read_text())
    aa = [r["value"] for r in teacher["results"] if r["model"] == "teacher" and r["probe"] == "autoattack" and r["metric"] == "robust_accuracy"]
    if aa:
        print(f"\nTRADES teacher (the largest network): AutoAttack {aa[0]:.3f}  (* flagged for gradient masking)")
    print(f"\nreports: {out / 'index.html'}  ({time.perf_counter() - started:.0f} s, torch {torch.__version__}, "
          f"{args.threads} thread(s), CPU)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
