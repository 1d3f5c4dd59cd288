"""Small explicit registries: losses, models, augmentations, imbalance profiles, generators.

A grid names a part; the registry finds it, refuses duplicates, and checks the
parameters a grid passes against the part's constructor before anything runs.
"""
from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A problem with what the user asked for; the message is one line that says what to fix."""


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def add(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} '{name}' is registered twice")
            self._items[name] = obj
            return obj
        return add

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} '{name}'; known: {', '.join(sorted(self._items))}") from None

    def names(self) -> list[str]:
        return sorted(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def check_params(self, name: str, params: dict[str, Any], context: tuple[str, ...] = ()) -> None:
        """Raise ConfigError if `params` holds a key the part does not accept.

        `context` names the arguments the harness itself supplies (class counts, ...),
        which a grid may not set.
        """
        sig = inspect.signature(self.get(name))
        accepted = {p for p, v in sig.parameters.items()
                    if v.kind in (v.POSITIONAL_OR_KEYWORD, v.KEYWORD_ONLY) and p not in context}
        unknown = sorted(set(params) - accepted)
        if unknown:
            raise ConfigError(f"{self.kind} '{name}' has no parameter {', '.join(unknown)}; "
                              f"it accepts: {', '.join(sorted(accepted)) or 'none'}")

    def build(self, name: str, params: dict[str, Any] | None = None, **context: Any) -> Any:
        params = dict(params or {})
        self.check_params(name, params, tuple(context))
        return self.get(name)(**context, **params)
