"""One declaration per rule: a configurable object's signature says what each argument may be.

A class (or factory function) that a config can name by ``_target_`` declares its arguments' types,
ranges and choices once, in its own signature, with ``typing.Annotated`` and pydantic's ``Field`` or
``typing.Literal``::

    def __init__(self, beta: Annotated[float, Field(gt=0)] = 0.1,
                 loss_type: Literal["sigmoid", "ipo", "hinge"] = "sigmoid") -> None:
        check_arguments(DPOModule.__init__, locals(), prefix="module")

Three readers use that one declaration:

- the constructor itself (`check_arguments`), so a class used from Python rejects a bad value;
- config validation (`zephyr_lightning.validation`), which walks a composed config's ``_target_`` nodes
  and checks each against its target's signature before anything is built or loaded, reporting every
  error with its Hydra key (``module.beta=0.0: must be > 0``);
- the sweep checker, which checks every swept value the same way.

Rules that relate several arguments (``max_prompt_length < max_length``) are functions registered with
`cross_check` on the class; they run after every argument passed its own check.

Nothing here imports Hydra: a config is plain dicts and lists by the time it is checked.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import inspect
import sys
import types
import typing
from collections.abc import Callable, Iterable, Mapping
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from zephyr_lightning.errors import InvalidValue

__all__ = [
    "ArgumentError",
    "Field",
    "argument_errors",
    "check_arguments",
    "cross_check",
    "declared_arguments",
    "declared_defaults",
    "describe_error",
    "declared_types",
    "resolve_target",
    "value_problem",
    "NonNegative",
    "Positive",
    "PositiveInt",
    "NonNegativeInt",
    "Fraction",
]

# Shorthands for the ranges that recur.
Positive = Annotated[float, Field(gt=0)]
PositiveInt = Annotated[int, Field(ge=1)]
NonNegative = Annotated[float, Field(ge=0)]
NonNegativeInt = Annotated[int, Field(ge=0)]
Fraction = Annotated[float, Field(ge=0, lt=1)]

_CROSS_CHECKS = "__argument_cross_checks__"
_CONFIG = ConfigDict(arbitrary_types_allowed=True)


class ArgumentError(InvalidValue):
    """One or more invalid arguments; ``errors`` lists them, each as ``key=value: problem``."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = list(errors)
        if len(self.errors) == 1:
            super().__init__(self.errors[0])
        else:
            super().__init__(f"{len(self.errors)} invalid values:\n  - " + "\n  - ".join(self.errors))


CrossCheck = Callable[[Mapping[str, Any]], "Iterable[tuple[str, str]] | tuple[str, str] | None"]


def cross_check(*checks: CrossCheck) -> Callable[[type], type]:
    """Class decorator: rules over several arguments. Each check gets the arguments (with defaults filled
    in) and returns ``None``, one ``(argument, problem)`` pair or an iterable of them."""

    def decorate(cls: type) -> type:
        inherited = tuple(getattr(cls, _CROSS_CHECKS, ()))
        setattr(cls, _CROSS_CHECKS, inherited + checks)
        return cls

    return decorate


def resolve_target(target: str | Callable) -> Callable:
    """The class or function a ``_target_`` string names (``zephyr_lightning.DPOModule``)."""
    if not isinstance(target, str):
        return target
    module_name, _, name = target.rpartition(".")
    try:
        module = importlib.import_module(module_name)
        obj: Any = module
        for part in name.split("."):
            obj = getattr(obj, part)
        return obj
    except (ImportError, AttributeError, ValueError) as err:
        # A class nested in a class (a.b.C.D): import the longest importable prefix.
        parts = target.split(".")
        for end in range(len(parts) - 1, 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:end]))
            except ImportError:
                continue
            try:
                for part in parts[end:]:
                    obj = getattr(obj, part)
                return obj
            except AttributeError:
                break
        raise ImportError(f"cannot import {target!r}: {err}") from err


def _function_of(target: Callable) -> Callable:
    return target.__init__ if inspect.isclass(target) else target


def _resolve_annotation(annotation: Any, function: Callable) -> Any:
    """An annotation as a type; string annotations (``from __future__ import annotations``) are evaluated
    in the function's module. What cannot be resolved is accepted as anything."""
    if annotation is inspect.Parameter.empty:
        return Any
    if not isinstance(annotation, str):
        return annotation
    namespace = dict(vars(sys.modules.get(function.__module__, typing)))
    namespace.setdefault("Any", Any)
    try:
        return eval(annotation, namespace)  # noqa: S307 - annotations of our own modules
    except Exception:
        return Any


def _walk_signature(target: Callable) -> list[tuple[inspect.Parameter, Callable]]:
    """The parameters ``target`` accepts, following ``**kwargs`` into the base class's ``__init__``."""
    seen: set[str] = set()
    out: list[tuple[inspect.Parameter, Callable]] = []
    classes = inspect.getmro(target) if inspect.isclass(target) else (None,)
    for cls in classes:
        function = _function_of(target) if cls is None else cls.__dict__.get("__init__")
        if function is None:
            continue
        function = inspect.unwrap(function)
        forwards = False
        for name, parameter in inspect.signature(function).parameters.items():
            if name == "self":
                continue
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
                continue
            if parameter.kind is inspect.Parameter.VAR_POSITIONAL or name in seen:
                continue
            seen.add(name)
            out.append((parameter, function))
        if cls is None or not forwards:
            break
    return out


@functools.cache
def _declaration(target: Callable) -> dict[str, tuple[inspect.Parameter, Any]]:
    return {p.name: (p, _resolve_annotation(p.annotation, function)) for p, function in _walk_signature(target)}


@functools.cache
def _adapter(annotation: Any) -> TypeAdapter | None:
    if annotation is Any:
        return None
    try:
        return TypeAdapter(annotation, config=_CONFIG)
    except Exception:
        try:
            return TypeAdapter(annotation)
        except Exception:  # an annotation pydantic cannot check: the constructor will
            return None


def describe_error(error: dict[str, Any]) -> str:
    """One of pydantic's errors (an item of ``ValidationError.errors()``) in the words our messages use
    (``must be > 0``, ``must be one of [...]``): for checks that format their own messages."""
    return _describe(error)


def _describe(error: dict[str, Any]) -> str:
    """pydantic's error in the words our messages use (``must be > 0``, ``must be one of [...]``)."""
    kind, ctx = error.get("type", ""), error.get("ctx") or {}
    bounds = {"greater_than": "> {gt}", "greater_than_equal": ">= {ge}", "less_than": "< {lt}",
              "less_than_equal": "<= {le}"}
    if kind in bounds:
        shown = {k: format(v, "g") if isinstance(v, float) else v for k, v in ctx.items()}
        return "must be " + bounds[kind].format(**shown)
    if kind == "literal_error":
        return f"must be one of [{ctx.get('expected', '')}]".replace(" or ", ", ")
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return "must be an integer"
    if kind in ("float_type", "float_parsing"):
        return "must be a number"
    if kind in ("bool_type", "bool_parsing"):
        return "must be true or false"
    if kind in ("string_type",):
        return "must be a string"
    if kind == "string_too_short" and ctx.get("min_length") == 1:
        return "must not be empty"
    if kind == "value_error" and ctx.get("error"):
        return str(ctx["error"])  # a validator's own words (``AfterValidator`` raising ValueError)
    where = "".join(f"[{part}]" for part in error.get("loc", ()) if isinstance(part, int))
    if kind == "missing" and where:
        return f"item {where} is missing"
    if kind == "too_long" or kind == "too_short":
        return str(error.get("msg", "")).replace("Tuple", "must be a list").replace("List", "must be a list")
    if where:
        return f"item {where}: " + _describe({**error, "loc": ()})
    return str(error.get("msg", "invalid value")).replace("Input should be", "must be")


def _is_model(annotation: Any) -> bool:
    """Whether an annotation is a pydantic model (or an optional one): its errors' locations are field names."""
    while typing.get_origin(annotation) is Annotated:
        annotation = typing.get_args(annotation)[0]
    union = typing.get_origin(annotation) in (typing.Union, types.UnionType)
    options = [a for a in typing.get_args(annotation) if a is not type(None)] if union else [annotation]
    return len(options) == 1 and inspect.isclass(options[0]) and issubclass(options[0], BaseModel)


def _key(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _is_target_node(value: Any) -> bool:
    """A ``_target_`` node, or a list of them (``trainer.plugins``): checked against their own targets."""
    if isinstance(value, (list, tuple)):
        return bool(value) and all(_is_target_node(item) for item in value)
    return isinstance(value, Mapping) and "_target_" in value


def argument_errors(
    target: str | Callable,
    values: Mapping[str, Any],
    *,
    prefix: str = "",
    allow_unknown: bool = False,
    skip: Iterable[str] = (),
    require: bool = True,
) -> list[str]:
    """Every problem with calling ``target`` with ``values`` (keyword arguments), each as
    ``prefix.name=value: problem``. Values that are themselves ``_target_`` nodes are not checked here
    (their own target checks them); Hydra's ``_``-keys are ignored."""
    target = resolve_target(target)
    declared = _declaration(target)
    # A function's **kwargs, or a foreign class's (Lightning's DDPStrategy hands them to DistributedDataParallel),
    # may take any name; only our own classes are known to forward theirs to their base class.
    foreign = inspect.isclass(target) and not target.__module__.startswith("zephyr_lightning")
    accepts_anything = (inspect.isfunction(target) or foreign) and any(
        p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(target).parameters.values()
    )
    skipped = set(skip)
    errors: list[str] = []
    for name, value in values.items():
        if name.startswith("_") or name in skipped:
            continue
        if name not in declared:
            if not (allow_unknown or accepts_anything):
                known = ", ".join(sorted(declared))
                errors.append(f"{_key(prefix, name)}={value!r}: not an argument of {_name(target)} (it takes {known})")
            continue
        if _is_target_node(value):
            continue
        adapter = _adapter(declared[name][1])
        if adapter is None:
            continue
        try:
            adapter.validate_python(value)
        except ValidationError as err:
            first = err.errors()[0]
            loc = first.get("loc", ())
            if _is_model(declared[name][1]) and any(isinstance(part, str) for part in loc):
                # A field of a nested settings model (data.filters.min_prompt_chars): name it, with its value.
                path = "".join(f".{part}" if isinstance(part, str) else f"[{part}]" for part in loc)
                errors.append(f"{_key(prefix, name)}{path}={first.get('input')!r}: {_describe({**first, 'loc': ()})}")
            else:
                errors.append(f"{_key(prefix, name)}={value!r}: {_describe(first)}")
    own = {p.name for p, function in _walk_signature(target) if function is inspect.unwrap(_function_of(target))}
    for name, (parameter, _) in declared.items():
        # A base class's required argument reached through **kwargs may be supplied by the subclass itself.
        required = parameter.default is inspect.Parameter.empty and name in own
        if require and required and name not in values and name not in skipped:
            errors.append(f"{_key(prefix, name)}: missing (required by {_name(target)})")
    if errors or not inspect.isclass(target):
        return errors
    filled = {n: values.get(n, p.default) for n, (p, _) in declared.items()}
    for check in getattr(target, _CROSS_CHECKS, ()):
        found = check(filled)
        if not found:
            continue
        for name, problem in [found] if isinstance(found, tuple) else found:
            errors.append(f"{_key(prefix, name)}={_value_at(filled, name)!r}: {problem}")
    return errors


def config_value(cfg: Mapping[str, Any] | None, key: str, default: Any = None) -> Any:
    """The value at a dotted ``key`` of a plain config (nested mappings, e.g. a run's saved ``config.yaml``),
    or ``default`` where a part is missing."""
    node: Any = cfg
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def _value_at(values: Mapping[str, Any], name: str) -> Any:
    """``values[name]``; a dotted name (``peft.r``, from a rule about a nested setting) walks mappings and
    attributes."""
    node: Any = values
    for part in name.split("."):
        node = node.get(part) if isinstance(node, Mapping) else getattr(node, part, None)
    return node


def value_problem(annotation: Any, value: Any) -> str | None:
    """What is wrong with ``value`` for a declared type (``PositiveInt``, a ``Literal``...), in the words of
    every other message (``must be >= 1``), or None. For rules about values that no signature of ours
    declares (a nested setting of another library's object)."""
    adapter = _adapter(annotation)
    if adapter is None:
        return None
    try:
        adapter.validate_python(value)
    except ValidationError as err:
        return _describe(err.errors()[0])
    return None


def _name(target: Callable) -> str:
    return getattr(target, "__qualname__", getattr(target, "__name__", str(target)))


def check_arguments(target: Callable, arguments: Mapping[str, Any], *, prefix: str = "") -> None:
    """Raise `ArgumentError` if ``arguments`` break ``target``'s declaration. First thing in a constructor:
    ``check_arguments(DPOModule, locals(), prefix="module")`` (a dataclass: ``vars(self)`` in
    ``__post_init__``). Values that are not plain config data (a ready model) are checked as given."""
    declared = _declaration(target)
    values = {name: arguments[name] for name in declared if name in arguments}
    errors = argument_errors(target, values, prefix=prefix, allow_unknown=True, require=False)
    if errors:
        raise ArgumentError(errors)


def declared_arguments(target: str | Callable) -> list[str]:
    """The names of every argument ``target`` accepts (following ``**kwargs`` into base classes)."""
    return list(_declaration(resolve_target(target)))


def declared_types(target: str | Callable) -> dict[str, Any]:
    """The declared type of every argument ``target`` accepts (``Any`` where none is declared)."""
    return {name: annotation for name, (_, annotation) in _declaration(resolve_target(target)).items()}


def declared_defaults(target: str | Callable) -> dict[str, Any]:
    """The default of every argument that has one, as plain config values (tuples become lists); the
    required ones are absent. What a config node of ``target`` holds when it sets nothing."""
    target = resolve_target(target)

    def plain(value: Any) -> Any:
        if isinstance(value, BaseModel):  # a nested settings model (data.filters): its fields, as config data
            return plain(value.model_dump())
        if isinstance(value, tuple):
            return [plain(v) for v in value]
        if isinstance(value, Mapping):
            return {k: plain(v) for k, v in value.items()}
        return value

    out: dict[str, Any] = {}
    fields = {f.name: f for f in dataclasses.fields(target)} if dataclasses.is_dataclass(target) else {}
    for name, (parameter, _) in _declaration(target).items():
        field = fields.get(name)
        if field is not None and field.default_factory is not dataclasses.MISSING:
            out[name] = plain(field.default_factory())
        elif parameter.default is not inspect.Parameter.empty:
            out[name] = plain(parameter.default)
    return out
