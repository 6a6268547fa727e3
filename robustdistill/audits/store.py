"""The run store: ``<run dir>/results.jsonl``, the append-only record of an audit.

The first line is the manifest (``"type": "manifest"``); every finished probe unit appends one line
(``"type": "unit"``) keyed by (model sha256, probe, params hash), flushed and fsynced as it finishes. A resumed
run appends a fresh manifest and skips every unit whose key is already stored. A line cut short by a kill is
dropped when the store is next opened.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError
from robustdistill.utils import write_text_atomic

log = logging.getLogger(__name__)

RESULTS = "results.jsonl"


class RunStore:
    def __init__(self, run_dir: str | os.PathLike[str]) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / RESULTS

    def has_results(self) -> bool:
        return self.path.is_file() and self.path.stat().st_size > 0

    def read(self) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
        """(manifests in order, unit records by key); the last record of a key wins."""
        if not self.path.is_file():
            raise UserInputError("run_dir", f"no {RESULTS} in {self.run_dir}", "point at a directory `robustdistill audit` wrote")
        manifests: list[dict[str, Any]] = []
        units: dict[str, dict[str, Any]] = {}
        lines = self.path.read_text().split("\n")
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                if number == len(lines):  # cut short by a kill: that unit simply is not finished
                    log.warning("%s: ignoring an incomplete last line", self.path)
                    continue
                raise UserInputError(str(self.path), f"line {number} is not JSON", "the file was edited or damaged; "
                                     "re-run the audit into a new --out") from None
            if record.get("type") == "manifest":
                manifests.append(record)
            elif record.get("type") == "unit" and "key" in record:
                units[record["key"]] = record
        if not manifests:
            raise UserInputError(str(self.path), "has no manifest record", "re-run the audit into a new --out")
        return manifests, units

    def start(self, manifest: dict[str, Any], *, resume: bool) -> None:
        """Begin a run: a new file holding the manifest, or (resume) the manifest appended to the old one."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"type": "manifest", **manifest}, allow_nan=False) + "\n"
        if resume and self.has_results():
            self._drop_partial_line()
            self._append(line)
        else:
            write_text_atomic(self.path, line)

    def append(self, record: dict[str, Any]) -> None:
        self._append(json.dumps({"type": "unit", **record}, allow_nan=False) + "\n")

    def _append(self, line: str) -> None:
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(line)
            handle.flush()
            os.fsync(handle.fileno())

    def _drop_partial_line(self) -> None:
        data = self.path.read_bytes()
        if data and not data.endswith(b"\n"):
            cut = data.rfind(b"\n") + 1
            log.warning("%s: dropping an incomplete last line", self.path)
            with open(self.path, "r+b") as handle:
                handle.truncate(cut)
