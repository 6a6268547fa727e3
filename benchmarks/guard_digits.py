"""GUARD vs SRe2L on digits: the GUARD paper's table (clean and robust accuracy of students trained on distilled data)
reproduced on the built-in digits in one command.

    python benchmarks/guard_digits.py                  # IPC 10 and 50, 2 worker processes (~11 min on 2 idle CPUs)
    python benchmarks/guard_digits.py --reuse          # skip finished training and audits of an earlier run
    python benchmarks/guard_digits.py --ipc 10 --jobs 1
    python benchmarks/guard_digits.py --seed 1         # another seed (checkpoints/ and reports/guard-digits-seed1)

Cost: about 1,260 CPU seconds of tasks, three quarters of them the two audits (AutoAttack standard on three models
each); the longest dependency chain (GUARD squeeze -> IPC 10 -> IPC 50 -> its audit) is about 630 CPU seconds, so
~11 minutes on two idle cores. Measured wall time with another job holding one of the two cores: 18-19 minutes.

What runs (checkpoints under --checkpoints, default checkpoints/guard-digits/):
  squeeze-guard, squeeze-sre2l   the squeeze model (cnn-bn on the real digits) with and without GUARD's curvature
                                 regulariser (defenses/digits-guard.toml / digits-sre2l.toml [squeeze]); each is
                                 shared by every IPC (recipes' squeeze_checkpoint)
  guard-ipcN, sre2l-ipcN         recover + relabel at N images per class, then a fresh cnn-bn student on those images
                                 only (the distilled data is in guard-ipcN.distilled/: dataset/, grid.png)
  full                           the same student architecture, optimiser, schedule, epochs and seed trained with
                                 cross-entropy on all 1,079 real training digits (the standard trainer)
Each IPC's three students are audited with audits/digits-guard.toml (clean, FGSM, PGD-20, CW-Linf, AutoAttack standard,
a PGD curve, the gradient-masking checks; eps = 1/16, and PGD-20 at 1/32) on the 359 test digits, the full-data student
as the reference ("teacher") role; the reports are linked from reports/guard-digits/index.html.

Printed: one markdown table (IPC, data, clean, PGD-20, CW, AutoAttack at eps 1/16, PGD-20 at 1/32), then GUARD minus
SRe2L per IPC as a paired difference on the same test points with its 95% interval, and the squeezed models' own
clean and PGD-20 accuracy (where the regulariser acts).

Caveat: 8x8 digits on a CPU, 359 test points: the 95% interval of one accuracy is about +-5 points; read differences
through the paired intervals. The ImageNette / CIFAR numbers of the paper do not transfer.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from multiprocessing import get_context
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RECIPES = {"guard": REPO / "defenses" / "digits-guard.toml", "sre2l": REPO / "defenses" / "digits-sre2l.toml"}
SUITE = REPO / "audits" / "digits-guard.toml"
# The student settings the full-data model copies from the GUARD recipe (so all students share arch and budget).
STUDENT_FIELDS = ("arch", "arch_params", "mean", "std", "epochs", "batch_size", "optimizer", "lr", "momentum",
                  "weight_decay", "lr_milestones", "lr_gamma", "augment", "seed", "select_metric", "val_robust")


# --------------------------------------------------------------------------------------------------------------
# Tasks (run in worker processes; each returns a small JSON-able record)


def _setup(threads: int) -> None:
    import logging

    import torch

    torch.set_num_threads(threads)
    logging.getLogger("robustdistill").setLevel(logging.WARNING)


def _finished(path: Path, method: str, config: dict[str, Any]) -> bool:
    """A checkpoint at ``path`` trained by ``method`` with exactly ``config`` (device aside)."""
    try:
        recipe = json.loads((path / "config.json").read_text())["provenance"]["recipe"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    strip = {"device"}
    same = {k: v for k, v in recipe.get("config", {}).items() if k not in strip} == {
        k: v for k, v in config.items() if k not in strip}
    return recipe.get("method") == method and same


def squeeze_task(method: str, out: str, seed: int, reuse: bool, threads: int) -> dict[str, Any]:
    _setup(threads)
    from robustdistill import trainers
    from robustdistill.trainers.config import config_to_dict
    from robustdistill.trainers.guard import SqueezeTrainer, squeeze_config

    config = squeeze_config(trainers.create(method, recipe=RECIPES[method], overrides=[f"seed={seed}"]).config)
    if reuse and _finished(Path(out), SqueezeTrainer.method, config_to_dict(config)):
        return {"reused": True}
    SqueezeTrainer(config).fit(out, resume=reuse)
    return {"reused": False}


def distil_task(method: str, ipc: int, squeezed: str, out: str, seed: int, reuse: bool, threads: int) -> dict[str, Any]:
    _setup(threads)
    from robustdistill import trainers
    from robustdistill.trainers.config import config_to_dict
    from robustdistill.trainers.guard import distilled_paths

    trainer = trainers.create(method, recipe=RECIPES[method], overrides=[f"ipc={ipc}", f"squeeze_checkpoint='{squeezed}'", f"seed={seed}"])
    done = _finished(Path(out), method, config_to_dict(trainer.config)) and distilled_paths(out)["manifest"].is_file()
    if not (reuse and done):
        trainer.fit(out, resume=reuse)
    return {"reused": reuse and done}


def full_task(out: str, seed: int, reuse: bool, threads: int) -> dict[str, Any]:
    _setup(threads)
    from robustdistill import trainers
    from robustdistill.errors import UserInputError
    from robustdistill.trainers.config import config_to_dict

    guard = trainers.create("guard", recipe=RECIPES["guard"], overrides=[f"seed={seed}"]).config
    if guard.lr_schedule != "multistep" or guard.optimizer not in ("sgd", "adam"):
        raise UserInputError("lr_schedule", "the full-data student (standard trainer) has SGD/Adam with a step schedule "
                             "only", "keep digits-guard.toml's student on optimizer sgd/adam and lr_schedule multistep")
    overrides = [f"{name}={json.dumps(getattr(guard, name))}" for name in STUDENT_FIELDS
                 if name not in ("arch_params", "mean", "std")]
    overrides += [f"arch_params={_toml_table(guard.arch_params)}"]
    overrides += [f"{name}={json.dumps(getattr(guard, name))}" for name in ("mean", "std") if getattr(guard, name) is not None]
    trainer = trainers.create("standard", recipe=REPO / "defenses" / "digits-standard.toml", overrides=overrides)
    if reuse and _finished(Path(out), "standard", config_to_dict(trainer.config)):
        return {"reused": True}
    trainer.fit(out, resume=reuse)
    return {"reused": False}


def audit_task(ipc: int, teacher: str, student: str, sre2l: str, out: str, reuse: bool, samples: int | None,
               threads: int) -> dict[str, Any]:
    _setup(threads)
    from robustdistill.audits import audit
    from robustdistill.demo import resumable

    run_dir = Path(out)
    resume = reuse and resumable(run_dir, Path(teacher), Path(student), {"sre2l": Path(sre2l)})
    if not resume and run_dir.exists():
        import shutil

        shutil.rmtree(run_dir)
    audit(SUITE, teacher=teacher, student=student, models={"sre2l": sre2l}, out=run_dir, resume=resume,
          samples=samples, progress=False)
    return {"reused": resume}


def _timed(function: Callable[..., dict[str, Any]], *args: Any) -> dict[str, Any]:
    """Run a task and add the CPU seconds its process spent on it (on a busy machine, wall time overstates the cost)."""
    started = time.process_time()
    record = function(*args)
    return {**record, "cpu_s": time.process_time() - started}


def _toml_table(mapping: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in mapping.items()) + "}"


# --------------------------------------------------------------------------------------------------------------
# A tiny dependency scheduler over worker processes


def run_tasks(tasks: dict[str, tuple[list[str], Callable[..., dict[str, Any]], tuple[Any, ...]]], jobs: int
              ) -> tuple[dict[str, float], dict[str, float]]:
    """Run ``{name: (dependencies, function, args)}`` on ``jobs`` processes as their dependencies finish; returns the
    wall seconds and the CPU seconds of each task. A failing task stops the run (its error is re-raised)."""
    seconds: dict[str, float] = {}
    cpu: dict[str, float] = {}
    pending = dict(tasks)
    running: dict[Future[dict[str, Any]], tuple[str, float]] = {}
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        while pending or running:
            for name in [n for n, (deps, _, _) in pending.items() if all(d in seconds for d in deps)]:
                if len(running) >= jobs:
                    break
                _, function, args = pending.pop(name)
                print(f"  start  {name}", file=sys.stderr, flush=True)
                running[pool.submit(_timed, function, *args)] = (name, time.perf_counter())
            if not running:
                raise RuntimeError(f"tasks with unmet dependencies: {sorted(pending)}")
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                name, started = running.pop(future)
                record = future.result()  # re-raises a worker's exception here
                seconds[name] = time.perf_counter() - started
                cpu[name] = float(record["cpu_s"])
                note = " (reused)" if record.get("reused") else ""
                print(f"  done   {name} in {seconds[name]:.0f} s ({cpu[name]:.0f} CPU s){note}", file=sys.stderr, flush=True)
    return seconds, cpu


# --------------------------------------------------------------------------------------------------------------
# Reading the results


def unit_masks(run_dir: Path, probe: str, role: str, mask: str) -> Any:
    """The per-point boolean mask ``mask`` a probe stored for ``role`` in a run's results.jsonl."""
    import numpy as np

    from robustdistill.stats import unpack_mask

    for line in (run_dir / "results.jsonl").read_text().splitlines():
        record = json.loads(line)
        if record.get("type") == "unit" and record.get("probe") == probe and record.get("roles") == [role]:
            return unpack_mask(record["masks"][role][mask], int(record["n"]))
    return np.zeros(0, dtype=bool)


def paired(a: Any, b: Any) -> tuple[float, float]:
    """Mean of a - b over the same points and the half-width of its normal 95% interval."""
    import numpy as np

    diff = a.astype(float) - b.astype(float)
    half = 1.96 * float(diff.std(ddof=1)) / math.sqrt(len(diff)) if len(diff) > 1 else float("nan")
    return float(np.mean(diff)), half


def squeezed_accuracy(paths: dict[str, Path], eps: float) -> dict[str, tuple[float, float]]:
    """Clean and PGD-20 (eps, alpha eps/4) test accuracy of each squeezed model (where the regulariser acts)."""
    import torch

    from robustdistill import attacks, load_model
    from robustdistill.data import load_split

    test = load_split({"kind": "digits"}, "test")
    out = {}
    for name, path in paths.items():
        model = load_model(path)
        x_adv = attacks.create("pgd", eps=eps, alpha=eps / 4, steps=20, seed=0)(model, test.x, test.y)
        with torch.no_grad():
            clean = float((model(test.x).argmax(1) == test.y).float().mean())
            robust = float((model(x_adv).argmax(1) == test.y).float().mean())
        out[name] = (clean, robust)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ipc", type=int, nargs="+", default=[10, 50], help="images per class (default 10 50)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every squeeze, recover and student (default 0)")
    parser.add_argument("--checkpoints", help="default checkpoints/guard-digits (-seedN for --seed N > 0)")
    parser.add_argument("--out", help="default reports/guard-digits (-seedN for --seed N > 0)")
    parser.add_argument("--reuse", action="store_true", help="skip training and audits finished by an earlier run")
    parser.add_argument("--jobs", type=int, default=2, help="worker processes (default 2: one per core of a 2-CPU box)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--samples", type=int, default=None, help="test points per audit (default: the suite's 359)")
    args = parser.parse_args()
    if any(n < 1 for n in args.ipc) or args.jobs < 1 or args.threads < 1:
        parser.error("--ipc, --jobs and --threads must be positive")

    started = time.perf_counter()
    suffix = f"-seed{args.seed}" if args.seed else ""
    ck = Path(args.checkpoints or REPO / "checkpoints" / f"guard-digits{suffix}")
    out = Path(args.out or REPO / "reports" / f"guard-digits{suffix}")
    ck.mkdir(parents=True, exist_ok=True)
    common = (args.reuse, args.threads)
    tasks: dict[str, tuple[list[str], Callable[..., dict[str, Any]], tuple[Any, ...]]] = {
        "squeeze-guard": ([], squeeze_task, ("guard", str(ck / "squeeze-guard"), args.seed, *common)),
        "squeeze-sre2l": ([], squeeze_task, ("sre2l", str(ck / "squeeze-sre2l"), args.seed, *common)),
        "full": ([], full_task, (str(ck / "full"), args.seed, *common)),
    }
    for ipc in args.ipc:
        for method in ("guard", "sre2l"):
            tasks[f"{method}-ipc{ipc}"] = ([f"squeeze-{method}"], distil_task,
                                           (method, ipc, str(ck / f"squeeze-{method}"), str(ck / f"{method}-ipc{ipc}"), args.seed,
                                            *common))
    for ipc in args.ipc:  # audits last, so that every student is trained before the long AutoAttack runs start
        tasks[f"audit-ipc{ipc}"] = (["full", f"guard-ipc{ipc}", f"sre2l-ipc{ipc}"], audit_task,
                                    (ipc, str(ck / "full"), str(ck / f"guard-ipc{ipc}"), str(ck / f"sre2l-ipc{ipc}"),
                                     str(out / f"ipc{ipc}"), args.reuse, args.samples, args.threads))
    print(f"GUARD vs SRe2L on digits: IPC {args.ipc}, seed {args.seed}, {args.jobs} worker(s)", file=sys.stderr, flush=True)
    _, cpu = run_tasks(tasks, args.jobs)

    import torch

    from robustdistill.reports import Report, index_entry, render_index

    torch.set_num_threads(args.threads)
    entries, rows, diffs = [], [], []
    for ipc in args.ipc:
        run_dir = out / f"ipc{ipc}"
        entries.append(index_entry(run_dir, out, name=f"IPC {ipc}: GUARD student (sre2l and full-data students in the report)"))
        report = Report.load(run_dir / "report.json")
        flagged = {f.model for f in report.flags if f.is_masking}

        def value(role: str, probe: str, metric: str = "robust_accuracy", report: Report = report) -> float:
            found = [r.value for r in report.rows if r.model == role and r.probe == probe and r.metric == metric]
            return float(found[0]) if found and found[0] is not None else float("nan")

        for role, label in (("student", "GUARD"), ("sre2l", "SRe2L"), ("teacher", "full (1,079 real)")):
            rows.append((ipc, label, value(role, "clean", "accuracy"), value(role, "pgd-20"), value(role, "cw-linf"),
                         value(role, "autoattack"), value(role, "pgd-20-eps32"), "flagged" if role in flagged else "-"))
        for probe, mask in (("clean", "correct"), ("pgd-20", "robust"), ("autoattack", "robust")):
            guard, sre2l = unit_masks(run_dir, probe, "student", mask), unit_masks(run_dir, probe, "sre2l", mask)
            diffs.append((ipc, probe, *paired(guard, sre2l)))
    render_index(entries, out / "index.html", title="GUARD vs SRe2L distilled-data students on digits")

    print("| IPC | data | clean | PGD-20 | CW-Linf | AutoAttack | PGD-20 @1/32 | masking |")
    print("|---|---|---|---|---|---|---|---|")
    for ipc, label, clean, pgd, cw, aa, pgd32, flag in rows:
        print(f"| {ipc} | {label} | {clean:.3f} | {pgd:.3f} | {cw:.3f} | {aa:.3f} | {pgd32:.3f} | {flag} |")
    n = int(Report.load(out / f"ipc{args.ipc[0]}" / "report.json").manifest.get("data", {}).get("n", 0))
    half = 100 * 1.96 * math.sqrt(0.25 / max(n, 1))
    print(f"\nRobust accuracy at L-inf eps 1/16 unless marked; {n} test digits: the 95% interval of one accuracy is up "
          f"to +-{half:.0f} points.")
    print("GUARD - SRe2L, paired on the same test points (95% interval):")
    for ipc, probe, mean, half in diffs:
        print(f"  IPC {ipc:>3} {probe:<10} {100 * mean:+5.1f} points  [{100 * (mean - half):+.1f}, {100 * (mean + half):+.1f}]")
    squeezed = squeezed_accuracy({"GUARD": ck / "squeeze-guard", "SRe2L": ck / "squeeze-sre2l"}, 1 / 16)
    print("Squeezed models (cnn-bn on all real digits, where the curvature regulariser acts): "
          + "; ".join(f"{name} clean {c:.3f}, PGD-20 {r:.3f}" for name, (c, r) in squeezed.items()))
    busiest = ", ".join(f"{name} {cpu[name]:.0f}" for name in sorted(cpu, key=lambda k: -cpu[k])[:4])
    print(f"\nreports: {out / 'index.html'}  ({time.perf_counter() - started:.0f} s wall, {args.jobs} worker(s) x "
          f"{args.threads} thread(s), CPU, torch {torch.__version__}; {sum(cpu.values()):.0f} CPU s in tasks, the "
          f"longest: {busiest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
