"""The ``robustdistill`` command."""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from robustdistill.catalog import FAMILIES
from robustdistill.errors import UserInputError

log = logging.getLogger("robustdistill")

EXIT_BAD_INPUT = 2


def _train(args: argparse.Namespace) -> int:
    from robustdistill import trainers
    from robustdistill.trainers import distributed

    overrides = [*args.set, *([f"device={args.device}"] if args.device else [])]
    # Under torchrun (data-parallel training: robustdistill.trainers.distributed) every process reads the recipe;
    # a refusal stops them all and is printed once. Without torchrun the agreement does nothing.
    with distributed.agreement():
        trainer = trainers.create(args.method, recipe=args.config, overrides=overrides)
        distributed.check_supported(trainer)
    out = Path(args.out) if args.out else Path("checkpoints") / (Path(args.config).stem if args.config else args.method)
    if not getattr(trainer, "training_report", True):  # a language model: no accuracy curves, its own summary
        started = time.perf_counter()
        path = trainer.fit(out, resume=args.resume)
        kept = trainer.record["selection"]["best_epoch"]
        losses = trainer.record["history"][kept - 1]
        # a language model: train and val loss; a DDPM its train loss; SiD its fake-score and generator losses
        shown = ", ".join(f"{k.removesuffix('_loss').replace('_', ' ')} loss {v:.3g}" for k, v in losses.items()
                          if k.endswith("_loss") and isinstance(v, (int, float)))
        print(f"wrote {path} in {time.perf_counter() - started:.1f}s (epoch {kept} kept: {shown})")
        return 0
    from robustdistill.reports.training import check_training_report

    with distributed.agreement():
        check_training_report(out)  # before epoch 1: the report must not overwrite a user's file next to --out
    started = time.perf_counter()
    path = trainer.fit(out, resume=args.resume)
    elapsed = time.perf_counter() - started
    if not distributed.is_rank0():  # rank 0 reports and writes the training report
        distributed.leave()
        return 0
    provenance = json.loads((path / "config.json").read_text())["provenance"]
    selection, history = provenance["selection"], provenance["history"]
    best = history[selection["best_epoch"] - 1] if selection["best_epoch"] >= 1 else {}
    metrics = ", ".join(f"{k.removeprefix('val_')} {100 * v:.1f}%" if "accuracy" in k else f"{k.removeprefix('val_')} {v:.3g}"
                        for k, v in best.items() if k.startswith("val_"))  # percentages, as every report shows them
    print(f"wrote {path} in {elapsed:.1f}s (best epoch {selection['best_epoch']} on val: {metrics})")
    from robustdistill.reports.training import write_training_report

    try:
        report = write_training_report(path)
    except Exception as exc:  # a plotting problem must not hide a finished checkpoint
        print(f"training report not written ({type(exc).__name__}: {exc})")
    else:
        print(f"training report: {report[1]}")
    distributed.leave()  # under torchrun: the other processes waited for the report
    return 0


def _demo(args: argparse.Namespace) -> int:
    from robustdistill.demo import run_demo

    result = run_demo(args.out, quick=args.quick, device=args.device)
    reduced = next((row["autoattack_reduced"] for row in result.table if row.get("autoattack_reduced")), "")
    autoattack = "AutoAttack*" if reduced else "AutoAttack"  # a reduced AutoAttack is never shown as the real one
    header = f"{'student':<32} {'clean':>7} {'FGSM':>7} {'PGD':>7} {'CW':>7} {autoattack:>11}  verdict"
    print(header)
    print("-" * len(header))
    for row in result.table:
        cells = [f"{row[k]:.3f}" if row[k] is not None else "-" for k in ("clean", "fgsm", "pgd", "cw", "autoattack")]
        verdict = "PASS" if row["passed"] else "FAIL"
        if row["untrusted"]:
            verdict += " (gradient masking: robust accuracy untrusted)"
        print(f"{row['student']:<32} {cells[0]:>7} {cells[1]:>7} {cells[2]:>7} {cells[3]:>7} {cells[4]:>11}  {verdict}")
    if reduced:
        print(f"* reduced AutoAttack: {reduced}; a preview, weaker than AutoAttack standard")
    if result.privacy:
        print(f"\n{'membership inference (LiRA)':<32} {'AUC':>7} {'TPR@0.1%FPR':>12} {'TPR@1%FPR':>10}")
        for row in result.privacy:
            cells = ["-" if row[k] is None else f"{row[k]:.3f}" for k in ("auc", "tpr_at_0_1pct_fpr", "tpr_at_1pct_fpr")]
            cells[1] = "n/r" if row["tpr_at_0_1pct_fpr"] is None and row["auc"] is not None else cells[1]
            print(f"{row['model']:<32} {cells[0]:>7} {cells[1]:>12} {cells[2]:>10}")
        print("n/r: not resolvable (fewer than 1000 non-members)")
    if result.language:
        from robustdistill.demo import LANGUAGE_HEADLINE

        print(f"\n{'language model':<32} " + " ".join(f"{label:>12}" for _, label in LANGUAGE_HEADLINE))
        for row in result.language:
            cells = ["-" if row[k] is None else f"{row[k]:.3f}" for k, _ in LANGUAGE_HEADLINE]
            print(f"{row['model']:<32} " + " ".join(f"{c:>12}" for c in cells))
        print("junk ASR: GCG's unoptimised starting suffix; transfer ASR: the other model's GCG suffixes; "
              "MIA AUC: loss attack on the teacher's fine-tuning data")
    if result.bias:
        _print_bias(result.bias)
    if result.diffusion:
        _print_diffusion(result.diffusion)
    if result.unlearning:
        _print_unlearning(result.unlearning)
    print(f"\nreports: {result.index}  ({result.seconds:.0f} s, peak memory {result.peak_memory_mb:.0f} MB)")
    return 0


def _print_bias(rows: list[dict[str, Any]]) -> None:
    from robustdistill.demo import BIAS_HEADLINE

    def cell(value: Any) -> str:
        if value is None or value[0] is None:
            return "-"
        rate, ci = value
        return f"{rate:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{rate:.3f}"

    print(f"\n{'bias poisoning':<32} " + " ".join(f"{label:>18}" for _, label in BIAS_HEADLINE))
    for row in rows:
        print(f"{row['model'] + ' (' + row['bias'] + ')':<32} "
              + " ".join(f"{cell(row[k]):>18}" for k, _ in BIAS_HEADLINE))
    print("bias rate: fraction of sampled answers showing the bias (95% interval); targeted: the poisoned task; "
          "untargeted: tasks held out of training; amplification: student rate / teacher rate")


def _print_headline_table(title: str, headline: tuple[tuple[str, str], ...], rows: list[dict[str, Any]], width: int,
                          cell: Any) -> None:
    """One line per model (with the sampling steps it used), one column per headline metric."""
    print(f"\n{title:<24} " + " ".join(f"{label:>{width}}" for _, label in headline))
    for row in rows:
        steps = row.get("steps")
        name = f"{row['model']} ({steps} step{'' if steps == 1 else 's'})" if steps else row["model"]
        print(f"{name:<24} " + " ".join(f"{cell(k, row[k]):>{width}}" for k, _ in headline))


def _speed_text(number: float) -> str:
    return f"{number:,.0f}" if number >= 100 else f"{number:.3g}"


def _print_diffusion(rows: list[dict[str, Any]]) -> None:
    from robustdistill.demo import DIFFUSION_HEADLINE

    def cell(metric: str, value: Any) -> str:
        if value is None or value[0] is None:
            return "n/a"
        number, ci = value
        if metric == "samples_per_second":
            return _speed_text(number)
        return f"{number:.3f} [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else f"{number:.3f}"

    _print_headline_table("diffusion", DIFFUSION_HEADLINE, rows, 19, cell)
    print("class accuracy: samples a digits classifier reads as the digit asked for; MIA: the teacher's training "
          "images vs unseen ones (n/a: the loss attack needs a noise prediction a one-step generator lacks)")


def _print_unlearning(rows: list[dict[str, Any]]) -> None:
    from robustdistill.demo import UNLEARNING_HEADLINE

    def cell(metric: str, value: Any) -> str:
        if value is None or value[0] is None:
            return "-"
        return _speed_text(value[0]) if metric == "samples_per_second" else f"{100 * value[0]:.1f}%"

    _print_headline_table("unlearning", UNLEARNING_HEADLINE, rows, 16, cell)
    print("forget acc.: samples asked for the forgotten digit still read as it (SFD's teacher vs student); backdoor "
          "success: triggered prompts drawing the patch; removal: of those, the share the defence removed")


def _check_counts(args: argparse.Namespace, bounds: dict[str, tuple[int, int]]) -> None:
    """Bound the integer options of a command before any work (a seed of -1 or 10**9 evaluations would fail or run
    for ever only after the family is loaded)."""
    from robustdistill.limits import check_int, check_seed

    check_seed("--seed", args.seed)
    for name, (low, high) in bounds.items():
        value = getattr(args, name)
        if value is not None:
            check_int("--" + name.replace("_", "-"), value, low, high)


def _proard_export(args: argparse.Namespace) -> int:
    from robustdistill.models.search_space import SubnetConfig
    from robustdistill.trainers.proard_family import export_subnet, load_family, size_of

    _check_counts(args, {"calibration_images": (1, 10**7)})
    path = export_subnet(args.family, args.subnet, args.out, calibration_images=args.calibration_images, seed=args.seed)
    family = load_family(args.family)
    params, macs = size_of(family, SubnetConfig.parse(args.subnet, family.space))
    print(f"wrote {path}: sub-network {SubnetConfig.parse(args.subnet, family.space).key()}, {params:,} parameters, {macs:,} MACs")
    return 0


def _proard_select(args: argparse.Namespace) -> int:
    from robustdistill.trainers.proard_family import export_subnet, select_subnet

    _check_counts(args, {"evaluations": (1, 100_000), "samples": (1, 10**7), "steps": (1, 100_000), "top": (1, 100_000),
                         "budget_params": (1, 2**62), "budget_macs": (1, 2**62)})
    ranked = select_subnet(args.family, budget_params=args.budget_params, budget_macs=args.budget_macs,
                           evaluations=args.evaluations, samples=args.samples, steps=args.steps, seed=args.seed)
    print(f"{'sub-network':<40} {'params':>9} {'MACs':>11} {'clean':>6} {'robust':>6}")
    for candidate in ranked[: args.top]:
        print(f"{candidate.subnet.key():<40} {candidate.parameters:>9,} {candidate.macs:>11,} {candidate.clean:>6.3f} {candidate.robust:>6.3f}")
    best = ranked[0]
    print(f"most robust within budget ({len(ranked)} evaluated; robust = PGD-{args.steps} on {args.samples} val points): {best.subnet.key()}")
    if args.out:
        path = export_subnet(args.family, best.subnet.key(), args.out, seed=args.seed)
        print(f"wrote {path}")
    return 0


def _add_proard(sub: Any) -> None:
    proard = sub.add_parser("proard", help="export or select sub-networks of a trained ProARD family",
                            description="Work with a family trained by `robustdistill train proard`.")
    commands = proard.add_subparsers(dest="proard_command", metavar="ACTION", required=True)
    export = commands.add_parser("export", help="write one sub-network as a standalone checkpoint",
                                 description="Extract a sub-network (weights are slices of the family's), re-estimate its "
                                 "BatchNorm statistics on training images, and save it with provenance.")
    export.add_argument("family", help="the family checkpoint written by `robustdistill train proard`")
    export.add_argument("--subnet", required=True, help="'largest', 'smallest', or a key such as d0-1_w0.65-1_e0.2-0.35_k3-3 "
                        "(as `proard select` prints)")
    export.add_argument("--out", required=True, metavar="DIR", help="checkpoint directory to write")
    export.add_argument("--calibration-images", type=int, default=4000, metavar="N",
                        help="training images for the BatchNorm statistics (default 4000, as the paper; capped at the split)")
    export.add_argument("--seed", type=int, default=0)
    export.set_defaults(handler=_proard_export)
    select = commands.add_parser("select", help="find the most robust sub-network within a size budget",
                                 description="Evolutionary search over the family's space; each candidate's robust "
                                 "accuracy is estimated with a short PGD on val points after BatchNorm recalibration.")
    select.add_argument("family", help="the family checkpoint")
    select.add_argument("--budget-params", type=int, metavar="N", help="at most N parameters")
    select.add_argument("--budget-macs", type=int, metavar="N", help="at most N multiply-accumulates per input")
    select.add_argument("--evaluations", type=int, default=40, metavar="N", help="candidates to estimate (default 40)")
    select.add_argument("--samples", type=int, default=200, metavar="N", help="val points per estimate (default 200)")
    select.add_argument("--steps", type=int, default=10, metavar="N", help="PGD steps per estimate (default 10)")
    select.add_argument("--top", type=int, default=5, metavar="N", help="rows to print (default 5)")
    select.add_argument("--seed", type=int, default=0)
    select.add_argument("--out", metavar="DIR", help="also export the winner here")
    select.set_defaults(handler=_proard_select)


def _list(args: argparse.Namespace) -> int:
    from robustdistill.catalog import load_index, render

    try:
        print(render(load_index(), args.family))
    except BrokenPipeError:  # `robustdistill list | head`: the reader has what it wanted
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - so that Python's exit flush does not fail again
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="robustdistill",
        description="Robustness and security audits for teacher-to-student distillation, and robust trainers.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    parser.add_argument("-q", "--quiet", action="store_true", help="log warnings only")
    parser.add_argument("--reproducible", action="store_true",
                        help="pin the CPU kernels (AVX2) so that numbers are the same on every x86 CPU, at some speed "
                        "(also $ROBUSTDISTILL_REPRODUCIBLE=1; `demo` always pins; see the README, Reproducibility)")
    parser.add_argument(
        "--threads",
        metavar="N",
        help="CPU threads for torch (default $ROBUSTDISTILL_THREADS, else $OMP_NUM_THREADS, else 1: for small models more "
        "threads are slower, and much slower on a busy machine; raise it for large models on many cores, up to 4 per core)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    train = sub.add_parser(
        "train",
        help="train a model or student from a recipe",
        description="Train METHOD with the settings of a recipe (TOML), e.g. "
        "`robustdistill train pgd-at --config defenses/digits-pgd-at.toml --out checkpoints/pgd-at`.",
    )
    train.add_argument("method", help="training method (see `robustdistill list trainers`)")
    train.add_argument("--config", metavar="FILE", help="recipe TOML (defenses/*.toml); its keys are the method's settings")
    train.add_argument("--set", metavar="KEY=VALUE", action="append", default=[], help="override a setting, e.g. --set epochs=5 --set data.split_seed=1 (repeatable)")
    train.add_argument("--out", metavar="DIR", help="checkpoint directory to write (default checkpoints/<recipe name>)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from its last finished epoch")
    train.add_argument("--device", metavar="D", help="auto, cpu, cuda or cuda:N (replaces the recipe's device)")
    train.set_defaults(handler=_train)

    demo = sub.add_parser(
        "demo",
        help="train digits, tiny language-model and diffusion teachers and students, audit each student, write reports",
        description="On the built-in digits: train (or reuse, verified by sha256) a clean teacher, a robust teacher, "
        "a KD student, a PGD-AT student and a defensively distilled student, and an overfit teacher and its KD "
        "student for membership inference; on the built-in instruction generator, a tiny language-model teacher "
        "and its seq-KD student (refusals, GCG jailbreaks and transfer, membership), and a poisoned one and its "
        "student (bias propagation); a digits DDPM and its one-step SiD student (quality, speed, membership), its SFD "
        "student that forgot a digit, and a text-to-image model's backdoor before and after SKD-CAG; audit each "
        "student against its teacher; write one report per pipeline and an index page.",
    )
    demo.add_argument("--out", metavar="DIR",
                      help="where the reports go (default reports/demo, or reports/demo-quick with --quick)")
    from robustdistill.demo import QUICK_SAMPLES  # imports no torch

    demo.add_argument("--quick", action="store_true",
                      help=f"a smoke run: few epochs, {QUICK_SAMPLES} test points, a GCG preview (about 3 minutes)")
    demo.add_argument("--device", metavar="D",
                      help="auto, cpu, cuda or cuda:N for every model and audit (default: each recipe's and suite's)")
    demo.set_defaults(handler=_demo)

    lister = sub.add_parser("list", help="list attacks, probes, trainers and architectures", description="List what is registered.")
    lister.add_argument("family", nargs="?", choices=FAMILIES, help="only this family")
    lister.set_defaults(handler=_list, uses_torch=False)  # a static index: answers without loading torch

    _add_proard(sub)
    from robustdistill.audits.commands import add_commands

    add_commands(sub)
    return parser


def configure_logging(verbose: bool, quiet: bool) -> None:
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"))
    root = logging.getLogger("robustdistill")
    root.handlers[:] = [handler]
    root.setLevel(level)


def _pin_kernels(args: argparse.Namespace) -> None:
    """Pin the CPU kernels when asked (--reproducible, $ROBUSTDISTILL_REPRODUCIBLE) and always for the demo, whose
    README numbers must reproduce."""
    from robustdistill import reproducibility

    asked = args.reproducible or reproducibility.requested()
    if not asked and args.command != "demo":
        return
    try:
        reproducibility.pin()
    except UserInputError:
        if asked:
            raise
        # Only when main() is called inside a Python process that already loaded torch: the demo still runs.
        log.warning("torch was loaded before the demo could pin its CPU kernels: numbers may differ from the README's")
    else:
        log.debug("CPU kernels pinned: %s", reproducibility.PINNED_ENV)


def main(argv: Sequence[str] | None = None) -> int:
    """The command line. Called from Python (a notebook, a test), it leaves the robustdistill logger as it found it."""
    logger = logging.getLogger("robustdistill")
    handlers, level = list(logger.handlers), logger.level
    try:
        return _main(argv)
    finally:
        logger.handlers[:] = handlers
        logger.setLevel(level)


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args.verbose, args.quiet)
    if args.command != "train" and os.environ.get("WORLD_SIZE", "1").strip() not in ("", "0", "1"):
        # Under torchrun with several processes each would run the whole command and write the same files.
        if os.environ.get("RANK", "0") == "0":  # every process refuses; one says it
            print(f"robustdistill: error: torchrun: `robustdistill {args.command}` runs in one process (only `robustdistill "
                  "train` is data-parallel) (run it without torchrun)", file=sys.stderr)
        return EXIT_BAD_INPUT
    try:
        _pin_kernels(args)  # before anything imports torch: torch, oneDNN and MKL choose their kernels as they load
    except UserInputError as exc:
        print(f"robustdistill: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    from robustdistill.threads import apply_thread_default, requested

    try:
        if getattr(args, "uses_torch", True):
            apply_thread_default(args.threads, field="--threads")
        else:
            requested(args.threads, field="--threads")  # still refuse a bad value, as every command does
    except UserInputError as exc:
        print(f"robustdistill: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    handler: Callable[[argparse.Namespace], int] = args.handler
    from robustdistill.progress import logs_above_bars

    try:
        with logs_above_bars():  # INFO lines above the progress bars, never glued onto a bar's line
            return handler(args)
    except UserInputError as exc:
        if not getattr(exc, "reported_elsewhere", False):  # under torchrun: printed by one process only
            print(f"robustdistill: error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        if os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 says it
            print("robustdistill: interrupted; finished work (epochs, probes) is kept: rerun with --resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
