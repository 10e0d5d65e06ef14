"""Plug-in work kinds: ``JOB_KINDS`` and ``PROMISE_KINDS`` entries loaded beside the built-ins.

An entry ``name=package.module:factory`` (parsed in ``celeryconfig``, as ``EXTRA_COMPONENTS``
is) names a factory called once per process with the settings; what it returns is checked
by the caller (``jobs.kinds``, ``promises.kinds``). Every failure is an :class:`InvalidKind`
naming the variable and the entry, raised when a worker or the API starts, never later.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from jobs.errors import InvalidKind

K = TypeVar("K")


def load_kinds(variable: str, entries: Iterable[tuple[str, str]], settings: Any, *,
               built_in: dict[str, K], check: Callable[[str, Any], K]) -> dict[str, K]:
    """The built-in kinds plus one kind per entry; ``check(name, made)`` returns the kind or
    raises ``TypeError``/``ValueError`` saying what is wrong with it."""
    kinds = dict(built_in)
    for name, spec in entries:
        where = f"{variable} entry {name}={spec}"
        if name in kinds:
            raise InvalidKind(f"{where}: the kind {name!r} already exists "
                              f"(built-in or earlier entry): {sorted(kinds)}")
        module_name, _, attr = spec.partition(":")
        try:
            module = importlib.import_module(module_name)
        except Exception as exc:
            raise InvalidKind(f"{where}: cannot import {module_name!r} "
                              f"({type(exc).__name__}: {exc})") from exc
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise InvalidKind(f"{where}: {module_name} has no callable {attr!r}")
        try:
            kinds[name] = check(name, factory(settings))
        except Exception as exc:
            raise InvalidKind(f"{where}: {type(exc).__name__}: {exc}") from exc
    return kinds
