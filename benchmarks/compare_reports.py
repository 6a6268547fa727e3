"""Proof of "behaviour unchanged": the same audits at two revisions give identical report.json results.

Runs audits/digits.toml, audits/digits-privacy.toml and audits/digits-ard.toml (or --suites) with the code of a
"before" revision (a git worktree) and of the current working tree ("after", or a second revision with --after), on
the same checkpoints and with pinned CPU kernels (ROBUSTDISTILL_REPRODUCIBLE=1), then compares each pair of
report.json files exactly: every row of "results" (value, interval, n, keyed by probe, model, metric and params),
every gate, every flag and the verdict's pass/fail. It prints a table of the differences (none expected) and exits 1
on any difference, 0 when everything is identical, 2 on a failed set-up or audit.

    .venv/bin/python benchmarks/compare_reports.py                    # 7de6295 vs the working tree
    .venv/bin/python benchmarks/compare_reports.py --before 7de6295 --after 7de6295   # sanity: must be identical
    .venv/bin/python benchmarks/compare_reports.py --jobs 2 --suites audits/digits-ard.toml

Cache (--cache, default $ROBUSTDISTILL_CACHE/compare-reports or ~/.cache/robustdistill/compare-reports):
- checkpoints/: the six checkpoints the suites' [pipeline] tables name (digits-standard, -kd, -overfit, -overfit-kd,
  -trades, -rslad), trained once with the "before" revision's code from the recipes in defenses/ (about 5 minutes on
  2 cores) and reused by every later run;
- before/<sha>/<suite>/: the "before" audit runs, reused while the revision, the suite file and the checkpoints are
  the same (key.json), so a comparison against a new "after" only runs the "after" audits.
The "after" audits always run afresh (into a temporary folder, removed unless --keep), with their own LiRA shadow
cache: shadow training is part of the behaviour compared.

Measured on 2 CPU cores shared with other work (torch on one thread per audit): training the six checkpoints 290 s
(once); the audits digits ~250 s, digits-privacy ~315 s (it trains 48 LiRA shadow models), digits-ard ~190-250 s per
side. The sanity run 7de6295 vs 7de6295 with --jobs 2 (five audits, digits-ard's "before" already cached) took 751 s
and found the reports identical; a run against a new "after" with every "before" cached runs the three "after"
audits only: 338 s with --jobs 3 (7de6295 vs the working tree at 4910e01: identical), about 13 minutes with one job.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("compare_reports")

REPO = Path(__file__).resolve().parents[1]
SUITES = ("audits/digits.toml", "audits/digits-privacy.toml", "audits/digits-ard.toml")
# The rows of a report.json section are matched by these fields (the rest of a row is compared).
IDENTITY = {"results": ("probe", "model", "metric", "params"), "gates": ("metric", "op"), "flags": ("model", "check")}
COMPARED = ("results", "gates", "flags", "verdict.passed")


class SetupError(RuntimeError):
    """A revision, checkpoint or audit that could not be prepared or run (exit 2)."""


# ---- comparing two report.json files ----------------------------------------------------------------------------


def _leaves(value: Any, prefix: str = "") -> dict[str, str]:
    """Path -> JSON text of every leaf (a float's JSON text is its exact repr, so equal text is equal bits)."""
    if isinstance(value, dict):
        out: dict[str, str] = {}
        for key in sorted(value):
            out.update(_leaves(value[key], f"{prefix}.{key}" if prefix else str(key)))
        return out
    if isinstance(value, list) and any(isinstance(item, (dict, list)) for item in value):
        out = {}
        for i, item in enumerate(value):
            out.update(_leaves(item, f"{prefix}[{i}]"))
        return out
    return {prefix: json.dumps(value, sort_keys=True)}


def _keyed(rows: Sequence[Mapping[str, Any]], fields: Sequence[str]) -> dict[str, Mapping[str, Any]]:
    """Rows by their identity (``fields``); a repeated identity gets #2, #3... in order."""
    out: dict[str, Mapping[str, Any]] = {}
    for row in rows:
        base = " ".join(json.dumps(row.get(f), sort_keys=True) if f == "params" else str(row.get(f)) for f in fields)
        key, n = base, 1
        while key in out:
            n += 1
            key = f"{base} #{n}"
        out[key] = row
    return out


def _section(report: Mapping[str, Any], field: str) -> Any:
    value: Any = report
    for part in field.split("."):
        value = value.get(part) if isinstance(value, Mapping) else None
    return value


def compare(before: Mapping[str, Any], after: Mapping[str, Any],
            fields: Sequence[str] = COMPARED) -> list[tuple[str, str, str]]:
    """(where, before, after) for every difference between two report.json documents in ``fields``."""
    diffs: list[tuple[str, str, str]] = []
    for field in fields:
        old, new = _section(before, field), _section(after, field)
        if field in IDENTITY and isinstance(old, list) and isinstance(new, list):
            old_rows, new_rows = _keyed(old, IDENTITY[field]), _keyed(new, IDENTITY[field])
            for key in list(old_rows) + [k for k in new_rows if k not in old_rows]:
                if key not in new_rows:
                    diffs.append((f"{field}: {key}", "present", "missing"))
                elif key not in old_rows:
                    diffs.append((f"{field}: {key}", "missing", "present"))
                else:
                    diffs.extend(_leaf_diffs(f"{field}: {key}", old_rows[key], new_rows[key]))
        else:
            diffs.extend(_leaf_diffs(field, old, new))
    return diffs


def _leaf_diffs(where: str, old: Any, new: Any) -> list[tuple[str, str, str]]:
    old_leaves, new_leaves = _leaves(old), _leaves(new)
    return [(f"{where} {path}".rstrip(), old_leaves.get(path, "-"), new_leaves.get(path, "-"))
            for path in sorted(set(old_leaves) | set(new_leaves)) if old_leaves.get(path) != new_leaves.get(path)]


def difference_table(diffs: Mapping[str, Sequence[tuple[str, str, str]]]) -> str:
    """A Markdown table of the differences per suite ("no differences" rows for identical suites)."""
    lines = ["| suite | where | before | after |", "|---|---|---|---|"]
    for suite, rows in diffs.items():
        if not rows:
            lines.append(f"| {suite} | no differences | | |")
        lines.extend(f"| {suite} | {where} | {old} | {new} |" for where, old, new in rows)
    return "\n".join(lines)


# ---- revisions, checkpoints and audit runs -----------------------------------------------------------------------


def _git(*args: str) -> str:
    out = subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True)
    if out.returncode != 0:
        raise SetupError(f"git {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout.strip()


@contextmanager
def worktree(sha: str, parent: Path) -> Iterator[Path]:
    """A detached git worktree at ``sha`` under ``parent``, removed (and unregistered) on exit."""
    path = parent / f"tree-{sha[:12]}"
    _git("worktree", "add", "--detach", "--force", str(path), sha)
    try:
        yield path
    finally:
        _git("worktree", "remove", "--force", str(path))


def _digest(folder: Path) -> str:
    """sha256 over a checkpoint folder's files (names and bytes)."""
    digest = hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _checkpoint_name(path: str) -> str:
    if not path.startswith("checkpoints/"):
        raise SetupError(f"a suite's [pipeline] names {path!r}; this script trains only checkpoints/<recipe name>")
    return path.removeprefix("checkpoints/")


def pipeline(tree: Path, suite: str) -> dict[str, str]:
    """role -> checkpoint name (its recipe is defenses/<name>.toml) of a suite's [pipeline]."""
    spec = tomllib.loads((tree / suite).read_text())
    return {role: _checkpoint_name(path) for role, path in spec["pipeline"].items() if role in ("teacher", "student")}


def _env(tree: Path, shadows: Path) -> dict[str, str]:
    # The tree's own package first on the path: the installed (editable) one is the working tree's.
    return {**os.environ, "PYTHONPATH": str(tree), "ROBUSTDISTILL_REPRODUCIBLE": "1",
            "ROBUSTDISTILL_CACHE": str(shadows), "MPLBACKEND": "Agg"}


def _run(command: list[str], tree: Path, shadows: Path, logfile: Path, ok: Sequence[int] = (0,)) -> None:
    with logfile.open("w") as handle:
        code = subprocess.run(command, cwd=tree, env=_env(tree, shadows), stdout=handle,
                              stderr=subprocess.STDOUT).returncode
    if code not in ok:
        raise SetupError(f"{' '.join(command[2:])} exited {code}; see {logfile}")


def ensure_checkpoint(name: str, tree: Path, store: Path) -> Path:
    """``store/name``, trained with ``tree``'s code from defenses/<name>.toml (its teacher first) when missing."""
    out = store / name
    if (out / "config.json").exists():
        return out
    recipe = tomllib.loads((tree / "defenses" / f"{name}.toml").read_text())
    command = [sys.executable, "-m", "robustdistill", "train", recipe["method"], "--config",
               f"defenses/{name}.toml", "--out", str(out)]
    if "teacher" in recipe:
        command += ["--set", f"teacher={ensure_checkpoint(_checkpoint_name(recipe['teacher']), tree, store)}"]
    log.info("training %s (%s) with %s", name, recipe["method"], tree)
    start = time.monotonic()
    _run(command, tree, store / ".shadows", store / f"{name}.log")
    log.info("trained %s in %.0f s", name, time.monotonic() - start)
    return out


@dataclass(frozen=True)
class Audit:
    """One suite at one side: the tree whose code runs it and the run folder it writes."""

    side: str
    suite: str
    tree: Path
    out: Path
    shadows: Path

    def run(self, checkpoints: Mapping[str, Path]) -> float:
        self.out.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "robustdistill", "audit", self.suite, "--out", str(self.out),
                   "--teacher", str(checkpoints["teacher"]), "--student", str(checkpoints["student"])]
        log.info("%s: auditing %s", self.side, self.suite)
        start = time.monotonic()
        # 1 is a FAIL verdict (a gate failed or a model was flagged): a result like any other here.
        _run(command, self.tree, self.shadows, self.out.parent / f"{self.out.name}.log", ok=(0, 1))
        seconds = time.monotonic() - start
        log.info("%s: %s in %.0f s", self.side, self.suite, seconds)
        return seconds


def _before_key(sha: str, tree_suite: bytes, checkpoints: Mapping[str, Path]) -> dict[str, Any]:
    return {"rev": sha, "suite_sha256": hashlib.sha256(tree_suite).hexdigest(),
            "checkpoints": {role: _digest(path) for role, path in sorted(checkpoints.items())}}


def _cached_before(folder: Path, key: Mapping[str, Any]) -> bool:
    key_file = folder / "key.json"
    return (folder / "run" / "report.json").exists() and key_file.exists() and json.loads(key_file.read_text()) == key


def _suite_at(sha: str, suite: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPO), "show", f"{sha}:{suite}"], capture_output=True, check=True).stdout


# ---- the command -------------------------------------------------------------------------------------------------


def _default_cache() -> Path:
    root = os.environ.get("ROBUSTDISTILL_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "robustdistill") / "compare-reports"


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", default="7de6295", help="revision whose code gives the expected reports")
    parser.add_argument("--after", default=None, help="revision to compare (default: the current working tree)")
    parser.add_argument("--suites", nargs="+", default=list(SUITES), help="suite files (paths in the repository)")
    parser.add_argument("--cache", type=Path, default=_default_cache(), help="checkpoints and cached 'before' runs")
    parser.add_argument("--jobs", type=int, default=1, help="audits run at once (each on one torch thread)")
    parser.add_argument("--keep", action="store_true", help="keep the 'after' run folders (path printed)")
    return parser.parse_args(argv)


def _plan(args: argparse.Namespace, before_sha: str, before_tree: Path | None, after_tree: Path,
          work: Path, checkpoints: Mapping[str, Mapping[str, Path]]) -> tuple[list[Audit], dict[str, Path]]:
    """The audits still to run, and suite -> the before run folder to read."""
    todo, before_runs = [], {}
    for suite in args.suites:
        folder = args.cache / "before" / before_sha / Path(suite).stem
        key = _before_key(before_sha, _suite_at(before_sha, suite), checkpoints[suite])
        before_runs[suite] = folder / "run"
        if not _cached_before(folder, key):
            assert before_tree is not None
            if folder.exists():
                shutil.rmtree(folder)  # a stale or interrupted run of this script's own cache
            folder.mkdir(parents=True)
            (folder / "key.json.pending").write_text(json.dumps(key, indent=1))
            shadows = args.cache / "before" / before_sha / "shadows"
            todo.append(Audit("before", suite, before_tree, folder / "run", shadows))
        todo.append(Audit("after", suite, after_tree, work / Path(suite).stem, work / "shadows"))
    return todo, before_runs


def _needs_before_tree(args: argparse.Namespace, before_sha: str) -> bool:
    store = args.cache / "checkpoints"
    for suite in args.suites:
        names = pipeline(REPO, suite).values()
        if any(not (store / name / "config.json").exists() for name in names):
            return True
        folder = args.cache / "before" / before_sha / Path(suite).stem
        paths = {role: store / name for role, name in pipeline(REPO, suite).items()}
        if not _cached_before(folder, _before_key(before_sha, _suite_at(before_sha, suite), paths)):
            return True
    return False


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    args = _parse(argv)
    start = time.monotonic()
    try:
        before_sha = _git("rev-parse", "--verify", f"{args.before}^{{commit}}")
        after_sha = _git("rev-parse", "--verify", f"{args.after}^{{commit}}") if args.after else None
        args.cache.mkdir(parents=True, exist_ok=True)
        work = Path(tempfile.mkdtemp(prefix="after-", dir=args.cache))
        with _trees(args, before_sha, after_sha, work) as (before_tree, after_tree):
            diffs, seconds = _compare_all(args, before_sha, before_tree, after_tree, work)
    except SetupError as error:
        log.error("%s", error)
        return 2
    finally:
        if "work" in locals() and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    after_label = after_sha[:12] if after_sha else f"the working tree (HEAD {_git('rev-parse', 'HEAD')[:12]})"
    print(f"\nbefore {before_sha[:12]} vs after {after_label}: {', '.join(args.suites)}")
    print(difference_table(diffs))
    print("audit times: " + ", ".join(f"{k} {v:.0f} s" for k, v in seconds.items()))
    print(f"total {time.monotonic() - start:.0f} s" + (f"; after runs kept in {work}" if args.keep else ""))
    count = sum(len(rows) for rows in diffs.values())
    print("IDENTICAL" if count == 0 else f"{count} DIFFERENCES")
    return 0 if count == 0 else 1


@contextmanager
def _trees(args: argparse.Namespace, before_sha: str, after_sha: str | None,
           work: Path) -> Iterator[tuple[Path | None, Path]]:
    """(before tree or None when every before run is cached, after tree): worktrees made for this run only."""
    before_needed = _needs_before_tree(args, before_sha)
    with _maybe_worktree(before_sha if before_needed else None, work) as before_tree:
        with _maybe_worktree(after_sha, work / "after") as after_tree:
            yield before_tree, after_tree or REPO


@contextmanager
def _maybe_worktree(sha: str | None, parent: Path) -> Iterator[Path | None]:
    if sha is None:
        yield None
        return
    parent.mkdir(parents=True, exist_ok=True)
    with worktree(sha, parent) as tree:
        yield tree


def _compare_all(args: argparse.Namespace, before_sha: str, before_tree: Path | None, after_tree: Path,
                 work: Path) -> tuple[dict[str, list[tuple[str, str, str]]], dict[str, float]]:
    store = args.cache / "checkpoints"
    store.mkdir(parents=True, exist_ok=True)
    checkpoints: dict[str, dict[str, Path]] = {}
    for suite in args.suites:
        names = pipeline(REPO, suite)
        if before_tree is not None:
            for name in names.values():
                ensure_checkpoint(name, before_tree, store)
        checkpoints[suite] = {role: store / name for role, name in names.items()}
    todo, before_runs = _plan(args, before_sha, before_tree, after_tree, work, checkpoints)
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {f"{a.side} {Path(a.suite).stem}": pool.submit(a.run, checkpoints[a.suite]) for a in todo}
        seconds = {label: future.result() for label, future in futures.items()}
    for audit in todo:
        if audit.side == "before":
            pending = audit.out.parent / "key.json.pending"
            pending.replace(audit.out.parent / "key.json")  # only a finished run is reused
    diffs = {}
    for suite in args.suites:
        before = json.loads((before_runs[suite] / "report.json").read_text())
        after = json.loads((work / Path(suite).stem / "report.json").read_text())
        diffs[suite] = compare(before, after)
    return diffs, seconds


if __name__ == "__main__":
    sys.exit(main())
