"""Resolving ``class_path`` strings: the one way a config names the user's own code.

Models, losses, optimizers, schedulers, datasets, metrics and callbacks all come from
``class_path`` (``package.module.Name`` or ``package.module:Name``) plus ``init_args``.
They go through the same three steps here, so every kind reports mistakes the same way
(what went wrong, at which config key, and the signature to fix it against) and exits 2
before training starts:

1. ``import_object``: import the module (the current directory is importable) and get the name;
2. a kind check (``require_subclass`` / ``require_callable``): a loss must be callable,
   an optimizer a ``torch.optim.Optimizer``...;
3. ``instantiate``: call it with ``init_args`` (plus what bptrain passes, e.g. parameters);
   a ``TypeError`` from the call shows the signature.

A config that names a class_path runs that code: configs are as trusted as scripts.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from bptrain.errors import UserError

__all__ = [
    "describe",
    "import_object",
    "instantiate",
    "require_callable",
    "require_subclass",
    "resolve",
    "signature_of",
]


def import_object(class_path: str, key: str) -> Any:
    """Import ``module.Name`` (or ``module:Name``); ``key`` is the config key, for messages."""
    module_name, _, name = class_path.replace(":", ".").rpartition(".")
    if not module_name or not name:
        raise UserError(
            f"{key} '{class_path}' is not of the form package.module.Name (or package.module:Name)."
        )
    cwd = str(Path.cwd())
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        raise UserError(
            f"{key} '{class_path}': cannot import module '{module_name}' ({err}). "
            f"It must be importable from the current directory ({cwd}) or PYTHONPATH."
        ) from None
    except Exception as err:  # the user's module itself failed while importing
        raise UserError(
            f"{key} '{class_path}': importing '{module_name}' failed: {type(err).__name__}: {err}"
        ) from None
    if not hasattr(module, name):
        names = [n for n in vars(module) if not n.startswith("_")]
        close = difflib.get_close_matches(name, names, n=1)
        hint = f" Did you mean '{close[0]}'?" if close else ""
        raise UserError(
            f"{key} '{class_path}': module '{module_name}' has no class '{name}'.{hint}"
        )
    return getattr(module, name)


def signature_of(target: Any) -> str:
    """``Name(arg, *, option=default)`` for messages, or just the name when Python cannot tell."""
    name = getattr(target, "__qualname__", None) or type(target).__name__
    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):
        return name
    empty = inspect.Parameter.empty  # type hints make it unreadable in one line: names and defaults
    params = [p.replace(annotation=empty) for p in signature.parameters.values()]
    return f"{name}{signature.replace(parameters=params, return_annotation=empty)}"


def describe(target: Any) -> str:
    """What a wrong-kind object is, in words: 'the class X', 'the function f', 'an int'."""
    if isinstance(target, type):
        return f"the class {target.__module__}.{target.__qualname__}"
    if inspect.isfunction(target) or inspect.isbuiltin(target):
        return f"the function {target.__module__}.{target.__qualname__}"
    return f"a {type(target).__name__}"


def require_subclass(target: Any, base: type | tuple[type, ...], key: str, class_path: str) -> type:
    """``target`` must be a class deriving from ``base``."""
    if isinstance(target, type) and issubclass(target, base):
        return target
    bases = base if isinstance(base, tuple) else (base,)
    wanted = " or ".join(f"{b.__module__}.{b.__qualname__}" for b in bases)
    raise UserError(
        f"{key} '{class_path}' is {describe(target)}, but it must be a subclass of {wanted}."
    )


def require_callable(target: Any, key: str, class_path: str, what: str) -> Callable[..., Any]:
    """``target`` must be callable (a class or a function); ``what`` says what it is for."""
    if callable(target):
        return target
    raise UserError(f"{key} '{class_path}' is {describe(target)}, but it must be {what}.")


def instantiate(
    target: Callable[..., Any],
    key: str,
    class_path: str,
    init_args: Mapping[str, Any],
    *args: Any,
    **kwargs: Any,
) -> Any:
    """Call ``target(*args, **kwargs, **init_args)``; wrong arguments show the signature.

    ``args``/``kwargs`` are what bptrain itself passes (an optimizer's parameter groups, a
    scheduler's optimizer); a key in ``init_args`` that collides with them is refused.
    """
    init_key = key.rsplit(".", 1)[0] + ".init_args" if "." in key else "init_args"
    clash = sorted(set(init_args) & set(kwargs))
    if clash:
        raise UserError(
            f"{init_key} sets {', '.join(clash)}, which bptrain passes itself to "
            f"{signature_of(target)}; remove {'it' if len(clash) == 1 else 'them'} from {init_key}."
        )
    try:
        inspect.signature(target).bind(*args, **kwargs, **init_args)
    except TypeError as err:
        raise UserError(
            f"{init_key} do not fit {class_path}: {err}. The signature is {signature_of(target)}"
            + (f"; bptrain passes {_passed(args, kwargs)}." if args or kwargs else ".")
        ) from None
    except ValueError:  # no signature (some builtins): let the call itself decide
        pass
    try:
        return target(*args, **kwargs, **init_args)
    except (TypeError, ValueError) as err:
        raise UserError(
            f"{class_path}({_passed(args, kwargs)}, **{init_key}) failed: "
            f"{type(err).__name__}: {err}. The signature is {signature_of(target)}."
        ) from None


def resolve(
    class_path: str,
    key: str,
    *,
    base: type | tuple[type, ...] | None = None,
    what: str = "a class or function",
) -> Any:
    """Import ``class_path`` and check its kind: a subclass of ``base`` when given, else callable."""
    target = import_object(class_path, key)
    if base is not None:
        return require_subclass(target, base, key, class_path)
    return require_callable(target, key, class_path, what)


def _passed(args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> str:
    parts = [_short(a) for a in args] + [f"{k}=..." for k in kwargs]
    return ", ".join(parts)


def _short(value: Any) -> str:
    if isinstance(value, list | tuple):
        return "params" if value and isinstance(value[0], dict) else type(value).__name__
    return type(value).__name__
