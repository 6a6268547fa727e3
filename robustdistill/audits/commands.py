"""``robustdistill audit`` and ``robustdistill report``: parsers and handlers (wired in by cli.build_parser)."""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


def _audit(args: argparse.Namespace) -> int:
    from robustdistill.audits.runner import audit

    started = time.perf_counter()
    report = audit(args.suite, teacher=args.teacher, student=args.student, out=args.out, resume=args.resume,
                   samples=args.samples, device=args.device)
    elapsed = time.perf_counter() - started
    print(report.summary())
    written = ", ".join(str(p) for p in [report.run_dir / "report.json", *report.rendered]) if report.run_dir else ""
    print(f"wrote {written} in {elapsed:.1f}s")
    return report.exit_code


def _report(args: argparse.Namespace) -> int:
    from robustdistill.audits.runner import build_report, render_reports
    from robustdistill.audits.store import chain_line
    from robustdistill.errors import UserInputError

    run_dir = Path(args.run_dir)
    if not run_dir.is_dir():
        raise UserInputError("RUN_DIR", f"{run_dir} is not a directory", "point at a directory `robustdistill audit` wrote")
    report = build_report(run_dir)
    report.rendered = render_reports(run_dir)
    print(report.summary())
    print(chain_line(report.manifest))  # whether results.jsonl is still what the run wrote
    print("wrote " + ", ".join(str(p) for p in [run_dir / "report.json", *report.rendered]))
    return 0


def add_commands(subparsers: Any) -> None:
    """Add the ``audit`` and ``report`` subcommands to the CLI's subparsers."""
    audit = subparsers.add_parser(
        "audit",
        help="audit a teacher and its student with a suite; exit 0 pass, 1 a gate failed, 2 bad input",
        description="Run an audit suite (TOML, see audits/) on a teacher and a student, write "
        "results.jsonl, report.json (and report.md/html) to --out and print a summary. "
        "Exit codes: 0 all gates pass, 1 a gate failed, 2 bad input (nothing written).",
    )
    audit.add_argument("suite", metavar="SUITE.toml", help="audit suite, e.g. audits/digits.toml")
    audit.add_argument("--out", metavar="DIR", help="run directory (default runs/<suite name>)")
    audit.add_argument("--resume", action="store_true", help="continue an interrupted audit in --out, skipping finished probes")
    audit.add_argument("--teacher", metavar="PATH", help="teacher checkpoint (replaces the suite's [pipeline] teacher)")
    audit.add_argument("--student", metavar="PATH", help="student checkpoint (replaces the suite's [pipeline] student)")
    audit.add_argument("--samples", metavar="N", type=int, help="evaluate N test points (a seeded subset)")
    audit.add_argument("--device", metavar="D", help="auto, cpu or cuda (replaces the suite's device)")
    audit.set_defaults(handler=_audit)

    report = subparsers.add_parser(
        "report",
        help="rebuild report.json from a run's results.jsonl and re-render it",
        description="Rebuild RUN_DIR/report.json from RUN_DIR/results.jsonl (gates and masking flags included) "
        "and render report.md / report.html.",
    )
    report.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by `robustdistill audit`")
    report.set_defaults(handler=_report)
