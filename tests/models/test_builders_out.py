"""The tiny model builders (language and diffusion test models) replace only a folder they wrote (issue 11)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from robustdistill.errors import UserInputError


def test_a_users_model_folder_is_never_replaced_by_a_built_tiny_model(tmp_path: Path, snapshot: Any) -> None:
    from robustdistill.models import build_tiny_causal_lm

    out = tmp_path / "lm"
    first = build_tiny_causal_lm(out, seed=0)
    assert build_tiny_causal_lm(out, seed=1) == first  # its own folder: replaced
    (out / "my-finetuning-notes.md").write_text("mine")
    before = snapshot(tmp_path)
    with pytest.raises(UserInputError, match="holds files robustdistill does not write there"):
        build_tiny_causal_lm(out, seed=2)
    assert snapshot(tmp_path) == before and sorted(p.name for p in tmp_path.iterdir()) == ["lm"]
