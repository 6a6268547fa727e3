"""Whether an audit into an existing run directory continues it or starts it over: the demo's and a sweep's audits
resume only an earlier audit of the very same checkpoints."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from robustdistill import ownership

log = logging.getLogger(__name__)


def resumable(run_dir: Path, teacher: Path, student: Path, extra: dict[str, Path] | None = None) -> bool:
    """Resume an earlier audit in ``run_dir`` only if it audited these very checkpoints (teacher, student and any
    ``extra`` roles); otherwise start over."""
    from robustdistill.models import checkpoint_sha256

    results = run_dir / "results.jsonl"
    if not results.exists():
        start_over(run_dir)
        return False
    try:
        with open(results, encoding="utf-8") as handle:  # the first line is the manifest: not the whole store
            manifest = json.loads(handle.readline())
        audited = {role: entry["sha256"] for role, entry in manifest["checkpoints"].items()}
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        audited = {}
    roles = {"teacher": teacher, "student": student, **(extra or {})}
    if audited == {role: checkpoint_sha256(path) for role, path in roles.items()}:
        return True
    log.info("%s audited other checkpoints: starting it over", run_dir)
    start_over(run_dir)
    return False


def start_over(run_dir: Path) -> None:
    """Remove what an earlier audit wrote in ``run_dir`` (the files its marker lists, or, for a folder of an earlier
    version, its provably own files); a user's files stay, and a folder that is not robustdistill's is refused."""
    if not run_dir.exists():
        return
    ownership.claim_out(run_dir, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.refuse_if_held(run_dir)
    ownership.adopt(run_dir, ownership.AUDIT, legacy=ownership.is_legacy_audit)
    ownership.remove_owned(run_dir)
