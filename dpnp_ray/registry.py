"""A name -> object registry whose error for an unknown name lists the known ones.

The one registry idiom of the library (datasets, augmentations, backbones, methods and their
losses, optimizers, LR and eps schedules): `@REGISTRY.register("name")` next to the definition,
and config validation, the CLI and error messages read the allowed names from `names()`.
This module imports nothing heavy, so registries of cheap entries can live below the config.
"""

from __future__ import annotations

from typing import Callable, Generic, Iterator, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError, ValueError):
    """A name that is not registered; the message lists the known names.

    A KeyError (a failed look-up) and a ValueError (a bad argument value) alike.
    """

    def __str__(self) -> str:  # KeyError quotes its message; we want plain text
        return str(self.args[0])


class Registry(Generic[T]):
    """Maps names to objects (usually factories). `kind` names what is registered in errors.

    `error`, if given, is raised instead of UnknownNameError (unknown name) and ValueError
    (a name registered twice), e.g. a module's own error type.
    """

    def __init__(self, kind: str, error: type[Exception] | None = None):
        self.kind = kind
        self.error = error
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator (or call with the object) that registers it under `name` and returns it unchanged."""

        def decorator(obj: T) -> T:
            if name in self._items:
                raise (self.error or ValueError)(f"{self.kind} {name!r} is registered twice; pick another name")
            self._items[name] = obj
            return obj

        return decorator

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):  # TypeError: an unhashable name such as a list
            raise (self.error or UnknownNameError)(
                f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}"
            ) from None

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._items))

    def in_registration_order(self) -> tuple[str, ...]:
        """The registered names in the order they were registered (e.g. a study's declared grid order)."""
        return tuple(self._items)

    def copy(self) -> "Registry[T]":
        """An independent registry with the same entries (for tests that register throw-away names)."""
        clone: Registry[T] = Registry(self.kind, self.error)
        clone._items = dict(self._items)
        return clone

    def __contains__(self, name: object) -> bool:
        try:
            return name in self._items
        except TypeError:
            return False

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._items)
