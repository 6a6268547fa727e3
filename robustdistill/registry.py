"""A small decorator registry shared by attacks, trainers, probes and defences.

A registered factory remembers the keyword arguments each instance was built with (``spec``), so a report can
record exactly how to rebuild the run (the pattern of Inspect's registry).
"""

from __future__ import annotations

import difflib
import inspect
from collections.abc import Callable
from typing import Any, Generic, TypeVar

from robustdistill.errors import UserInputError

T = TypeVar("T")


class Registry(Generic[T]):
    """Name -> factory. ``create`` builds an instance and records its arguments on ``instance.spec``."""

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[Callable[..., T]], Callable[..., T]]:
        def decorator(factory: Callable[..., T]) -> Callable[..., T]:
            if name in self._entries:
                raise RuntimeError(f"{self.family} {name!r} is registered twice")
            self._entries[name] = factory
            setattr(factory, "registry_name", name)
            return factory

        return decorator

    def get(self, name: str) -> Callable[..., T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"choose one of {', '.join(self.available())}"
            raise UserInputError(self.family, f"unknown {self.family} {name!r}", hint) from None

    def create(self, name: str, **params: Any) -> T:
        factory = self.get(name)
        try:
            inspect.signature(factory).bind(**params)
        except TypeError as exc:
            # A misspelt or unsupported keyword: name it rather than show a constructor traceback. Binding first
            # keeps a TypeError raised inside the constructor (a bug) from being reported as the user's mistake.
            raise UserInputError(f"{self.family} {name}", str(exc), "check the parameter names with `robustdistill list`") from None
        instance = factory(**params)
        try:
            setattr(instance, "spec", {"name": name, "params": dict(params)})
        except AttributeError:
            pass
        return instance

    def available(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def items(self) -> list[tuple[str, Callable[..., T]]]:
        return sorted(self._entries.items())
