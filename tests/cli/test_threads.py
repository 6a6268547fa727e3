"""The thread default of robustdistill/threads.py: one thread unless the user chose a number themselves."""

from __future__ import annotations

import pytest
import torch

from robustdistill import threads
from robustdistill.errors import UserInputError

pytestmark = pytest.mark.usefixtures("fresh_threads")  # tests/cli/conftest.py


def test_default_is_one_thread() -> None:
    torch.set_num_threads(2)  # torch's own default is one per core; before robustdistill's first call it is replaced
    assert threads.apply_thread_default() == 1
    assert torch.get_num_threads() == 1


def test_argument_beats_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV_VAR, "1")
    assert threads.apply_thread_default(2) == 2
    assert threads.apply_thread_default("2", field="--threads") == 2


def test_environment_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(threads.ENV_VAR, " 2 ")
    assert threads.apply_thread_default() == 2


def test_omp_num_threads_is_left_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    # torch read $OMP_NUM_THREADS as it loaded; stand in for that by setting its count, then check it is kept.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    torch.set_num_threads(2)
    assert threads.apply_thread_default() == 2


def test_a_later_set_num_threads_is_kept() -> None:
    assert threads.apply_thread_default() == 1
    torch.set_num_threads(2)  # the user's own choice in a notebook, after a first audit()
    assert threads.apply_thread_default() == 2
    assert threads.apply_thread_default(1) == 1  # an explicit argument still wins


def test_a_count_chosen_earlier_is_kept_by_a_later_default() -> None:
    """The CLI's --threads 2, then the trainer's or audit()'s own default call: still 2 (it used to fall back to 1)."""
    torch.set_num_threads(1)
    assert threads.apply_thread_default(2, field="--threads") == 2
    assert threads.apply_thread_default() == 2
    assert torch.get_num_threads() == 2


@pytest.mark.parametrize(("value", "field"), [("abc", threads.ENV_VAR), ("0", threads.ENV_VAR), ("100000", threads.ENV_VAR)])
def test_bad_environment_value_names_the_variable(monkeypatch: pytest.MonkeyPatch, value: str, field: str) -> None:
    monkeypatch.setenv(threads.ENV_VAR, value)
    with pytest.raises(UserInputError, match=field):
        threads.apply_thread_default()


@pytest.mark.parametrize("value", [0, -1, 2.5, True, 10**6])
def test_bad_argument_names_the_field(value: object) -> None:
    with pytest.raises(UserInputError, match="threads"):
        threads.apply_thread_default(value)  # type: ignore[arg-type]
