"""A small named registry: configs choose implementations by name.

Used for reward parts and answer metrics (`rl.rewards`), advantage estimators and policy-loss
aggregations (`rl.grpo`), and later tool protocols and datasets.

    ESTIMATORS = Registry("advantage estimator")

    @ESTIMATORS.register("grpo")
    def grpo(...): ...

    ESTIMATORS.get("grpo")  # the function; an unknown name raises and lists the known ones
"""

from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps names to objects of one kind (`kind` names it in error messages)."""

    def __init__(self, kind: str):
        self._kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator that registers its target under `name` and returns it unchanged."""
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self._kind} name must be a non-empty string, got {name!r}")

        def decorator(entry: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self._kind} {name!r} is already registered")
            self._entries[name] = entry
            return entry

        return decorator

    def get(self, name: str) -> T:
        """The entry registered as `name`; ValueError listing the known names on a miss."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            known = ", ".join(repr(n) for n in self.names()) or "none"
            raise ValueError(f"unknown {self._kind} {name!r}; known: {known}") from None

    def names(self) -> tuple[str, ...]:
        """The registered names, sorted."""
        return tuple(sorted(self._entries))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __repr__(self) -> str:
        return f"Registry({self._kind!r}, names={list(self.names())})"
