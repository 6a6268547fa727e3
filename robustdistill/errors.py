"""Errors a user can act on.

Every problem with input the user controls (a suite, a recipe, a checkpoint, a dataset, a parameter) is raised
as :class:`UserInputError`: one short line naming the field and the fix. The CLI turns it into exit code 2.
"""

from __future__ import annotations


class UserInputError(ValueError):
    """Bad input from the user: names the offending field and how to fix it."""

    def __init__(self, field: str, problem: str, fix: str | None = None) -> None:
        self.field = field
        self.problem = problem
        self.fix = fix
        message = f"{field}: {problem}"
        if fix:
            message += f" ({fix})"
        super().__init__(message)
