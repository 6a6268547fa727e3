"""``robustdistill audit`` and ``robustdistill report``: parsers and handlers (wired in by cli.build_parser)."""

from __future__ import annotations

import argparse
import difflib
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _audit(args: argparse.Namespace) -> int:
    from robustdistill.audits.runner import audit

    started = time.perf_counter()
    load_options = _load_options(args)  # checked before audit() touches --out or loads anything
    report = audit(args.suite, teacher=args.teacher, student=args.student, out=args.out, resume=args.resume,
                   overwrite=args.overwrite, samples=args.samples, device=args.device, load_options=load_options,
                   executor=args.executor, address=args.address)
    elapsed = time.perf_counter() - started
    print(report.summary())
    written = ", ".join(str(p) for p in [report.run_dir / "report.json", *report.rendered]) if report.run_dir else ""
    print(f"wrote {written} in {elapsed:.1f}s")
    return report.exit_code


def _by_role(flag: str, items: list[str], parse: Callable[[str, str], Any]) -> dict[str, Any]:
    """``--flag [ROLE=]VALUE`` (repeatable) as {role: value}; without ROLE= the value is for every model given as
    a bare state-dict file (role "*")."""
    from robustdistill.errors import UserInputError

    values: dict[str, Any] = {}
    for item in items:
        role, sep, value = item.partition("=")
        role, value = (role.strip(), value.strip()) if sep else ("*", item.strip())
        if role not in ("*", "teacher", "student"):
            raise UserInputError(flag, f"{item!r} names no model of the command line (teacher or student)",
                                 f"write {flag} VALUE, or {flag} teacher=VALUE / student=VALUE")
        if role in values:
            raise UserInputError(flag, f"given twice for {'every state dict' if role == '*' else role}", "give it once")
        values[role] = parse(flag, value)
    return values


def _arch(flag: str, value: str) -> str:
    from robustdistill.errors import UserInputError
    from robustdistill.models import ARCHITECTURES

    if value not in ARCHITECTURES:
        close = difflib.get_close_matches(value, ARCHITECTURES.available(), n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserInputError(flag, f"unknown architecture {value!r}", f"{hint}see `robustdistill list architectures`")
    return value


def _whole(flag: str, text: str, low: int, high: int) -> int:
    from robustdistill.errors import UserInputError
    from robustdistill.limits import check_int

    try:
        number = int(text)
    except ValueError:
        raise UserInputError(flag, f"{text!r} is not a whole number") from None
    return check_int(flag, number, low, high)


def _num_classes(flag: str, value: str) -> int:
    return _whole(flag, value, 2, 100_000)


def _input_shape(flag: str, value: str) -> tuple[int, int, int]:
    from robustdistill.errors import UserInputError
    from robustdistill.limits import MAX_IMAGE_PIXELS

    parts = value.replace("x", ",").split(",")
    if len(parts) != 3:
        raise UserInputError(flag, f"{value!r} is not CHANNELS,HEIGHT,WIDTH", "e.g. 3,32,32 or 1,8,8")
    channels = _whole(flag, parts[0], 1, 4)
    height, width = (_whole(flag, part, 1, 4096) for part in parts[1:])
    if height * width > MAX_IMAGE_PIXELS:
        raise UserInputError(flag, f"{height}x{width} is over the limit of {MAX_IMAGE_PIXELS:,} pixels")
    return channels, height, width


def _load_options(args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """What a bare state dict does not say about itself, per role: {role or "*": load_model keywords}."""
    options: dict[str, dict[str, Any]] = {}
    for flag, key, parse in (("--arch", "arch", _arch), ("--num-classes", "num_classes", _num_classes),
                             ("--input-shape", "input_shape", _input_shape)):
        for role, value in _by_role(flag, getattr(args, key) or [], parse).items():
            options.setdefault(role, {})[key] = value
    return options


def _report(args: argparse.Namespace) -> int:
    from robustdistill import ownership
    from robustdistill.audits.build import build_report, render_reports
    from robustdistill.audits.store import chain_line
    from robustdistill.errors import UserInputError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserInputError("RUN_DIR", f"{run_dir} is not a directory", "point at a directory `robustdistill audit` wrote")
    # Only a run directory robustdistill wrote gets a new report.json, and not while an audit is writing it.
    ownership.claim_out(run_dir, ownership.AUDIT, field="RUN_DIR", legacy=ownership.is_legacy_audit, what="RUN_DIR")
    with ownership.using(run_dir, ownership.AUDIT, "robustdistill report", legacy=ownership.is_legacy_audit,
                         field="RUN_DIR"):
        report = build_report(run_dir)
        ownership.record(run_dir, [run_dir / "report.json"])
        report.rendered = render_reports(run_dir)
    print(report.summary())
    print(chain_line(report.manifest))  # whether results.jsonl is still what the run wrote
    print("wrote " + ", ".join(str(p) for p in [run_dir / "report.json", *report.rendered]))
    return report.exit_code  # the same verdict, and exit code, as the audit that wrote the run


def _sweep(args: argparse.Namespace) -> int:
    from robustdistill.audits.sweep import run_sweep

    sweep, reports, index = run_sweep(args.sweep, args.out, device=args.device, executor=args.executor,
                                      address=args.address)
    width = max(len(entry.name) for entry in sweep.entries)
    for entry, report in zip(sweep.entries, reports):
        print(f"{entry.name:<{width}}  {'PASS' if report.passed else 'FAIL'}  {entry.student}")
    print(f"wrote {index}")
    return 0 if all(report.passed for report in reports) else 1


def _add_executor(parser: argparse.ArgumentParser, what: str) -> None:
    from robustdistill.audits.executors import EXECUTORS

    parser.add_argument("--executor", choices=EXECUTORS, default=None,
                        help=f"sequential (default): run here, one unit after another; ray: run {what} as Ray tasks "
                        "(needs the ray extra); the results are the same")
    parser.add_argument("--address", metavar="ADDR", help="with --executor ray: the Ray cluster to use (HOST:6379, "
                        "or auto for one `ray start` made on this machine); default: a local instance started for "
                        "the run")


def add_commands(subparsers: Any) -> None:
    """Add the ``audit``, ``sweep`` and ``report`` subcommands to the CLI's subparsers."""
    audit = subparsers.add_parser(
        "audit",
        help="audit a teacher and its student with a suite; exit 0 PASS, 1 FAIL, 2 bad input",
        description="Run an audit suite (TOML, see audits/) on a teacher and a student, write "
        "results.jsonl, report.json (and report.md/html) to --out and print a summary. "
        "Exit codes: 0 the verdict is PASS, 1 it is FAIL (a gate failed, a model was flagged, the run is "
        "incomplete or its results were edited), 2 bad input (nothing written).",
    )
    audit.add_argument("suite", metavar="SUITE.toml", help="audit suite, e.g. audits/digits.toml")
    audit.add_argument("--out", metavar="DIR", help="run directory (default runs/<suite name>)")
    again = audit.add_mutually_exclusive_group()
    again.add_argument("--resume", action="store_true",
                       help="continue an interrupted audit of the same checkpoints in --out, skipping finished probes")
    again.add_argument("--overwrite", action="store_true",
                       help="replace an earlier audit in --out (only the files robustdistill wrote there are removed)")
    audit.add_argument("--teacher", metavar="PATH", help="teacher checkpoint (replaces the suite's [pipeline] teacher)")
    audit.add_argument("--student", metavar="PATH", help="student checkpoint (replaces the suite's [pipeline] student)")
    state_dict = "for a model given as a bare state dict (.pt/.pth/.bin/.safetensors); ROLE= (teacher, student) picks one model, else every state dict"
    audit.add_argument("--arch", metavar="[ROLE=]NAME", action="append",
                       help=f"architecture {state_dict} (see `robustdistill list architectures`)")
    audit.add_argument("--num-classes", metavar="[ROLE=]N", action="append",
                       help=f"number of classes {state_dict} (default: read from the classifier head)")
    audit.add_argument("--input-shape", metavar="[ROLE=]C,H,W", action="append",
                       help=f"input shape {state_dict}, e.g. 3,32,32 (default: channels from the first layer, 32x32)")
    audit.add_argument("--samples", metavar="N", type=int, help="evaluate N test points (a seeded subset)")
    audit.add_argument("--device", metavar="D", help="auto, cpu or cuda (replaces the suite's device)")
    _add_executor(audit, "each probe unit")
    audit.set_defaults(handler=_audit)

    sweep = subparsers.add_parser(
        "sweep",
        help="run many audits (a list, or a glob of checkpoints against one teacher) and index them; exit 0 all PASS",
        description="Run every audit a sweep file lists (TOML: [[audits]] teacher/student/suite entries and/or a "
        "[glob] of checkpoints against one teacher), one run directory each under --out, resumed where an earlier "
        "sweep of the same checkpoints stopped, and write --out/index.html comparing them. Exit codes: 0 every "
        "verdict is PASS, 1 one is FAIL, 2 bad input (nothing written).",
    )
    sweep.add_argument("sweep", metavar="SWEEP.toml", help="sweep file, e.g. audits/digits-sweep.toml")
    sweep.add_argument("--out", metavar="DIR", help="where the run directories and index.html go (default "
                       "runs/<sweep name>)")
    sweep.add_argument("--device", metavar="D", help="auto, cpu or cuda (replaces every suite's device)")
    _add_executor(sweep, "every audit's probe units, the audits side by side,")
    sweep.set_defaults(handler=_sweep)

    report = subparsers.add_parser(
        "report",
        help="rebuild report.json from a run's results.jsonl and re-render it",
        description="Rebuild RUN_DIR/report.json from RUN_DIR/results.jsonl (gates and masking flags included) "
        "and render report.md / report.html. Exits with the audit's verdict: 0 PASS, 1 FAIL (also when "
        "results.jsonl was edited after the run), 2 bad input.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `robustdistill audit`")
    report.set_defaults(handler=_report)
