"""The judge a jailbreak probe uses, from its ``judge`` key: "refusal-prefix" (the GCG paper's refusal strings; weak,
and reported as such: any non-refusal counts, gibberish included), "target" (the response begins with the attack's
target string: stricter) or the path of a local Hugging Face sequence-classification directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from robustdistill.errors import UserInputError

PREFIX_JUDGE = "refusal-prefix"
TARGET_JUDGE = "target"


def make_judge(spec: str, where: str, target: str) -> Any:
    from robustdistill.attacks.judges import ClassifierJudge, RefusalPrefixJudge, TargetJudge

    if spec == PREFIX_JUDGE:
        return RefusalPrefixJudge()
    if spec == TARGET_JUDGE:
        return TargetJudge(target)
    path = Path(spec).expanduser()
    if not path.is_dir():
        raise UserInputError(f"{where}.judge", f"{spec!r} is neither 'refusal-prefix', 'target' nor a directory",
                             "use 'refusal-prefix', 'target' or the path of a local sequence-classification model")
    try:
        return ClassifierJudge(path)
    except UserInputError as exc:
        raise UserInputError(f"{where}.judge", exc.problem, exc.fix) from None


def judge_name(spec: str) -> str:
    return spec if spec in (PREFIX_JUDGE, TARGET_JUDGE) else f"classifier:{Path(spec).name}"
