"""The machinery of config files (see common/config.py): typed section models that refuse unknown
keys and coercion, and one ConfigError naming the file, the section and the key. Kept apart from
the run config so that a site's config loads without torch or MONAI (a ClientApp starts fast)."""

from __future__ import annotations

import difflib
import functools
import re
import tomllib
import typing
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, create_model

from ugafl.common.errors import ConfigError

RULES = ConfigDict(extra="forbid", strict=True, frozen=True, allow_inf_nan=False)
T = TypeVar("T")
NonEmpty = Annotated[str, Field(min_length=1)]


def _host_port(value: str) -> str:
    if not re.fullmatch(r".+:\d{1,5}", value):
        raise ValueError("expected host:port")
    return value


HostPort = Annotated[str, AfterValidator(_host_port)]
Port = Annotated[int, Field(ge=1, le=65535)]


class ConfigModel(BaseModel):
    """Base of a section's model: unknown keys refused, no coercion, finite numbers only."""

    model_config = RULES


class FieldProblem(ConfigError):
    """A value that is fine alone but not with the others: raised by a section's `check()`, which
    `validate`/`build_section` call after the types are right, and turned into a message naming
    the file and section."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key, self.problem = key, problem


def one_of(names: Sequence[str] | Callable[[], Sequence[str]]) -> AfterValidator:
    """A validator: the value must be one of `names` (or of what the registry `names()` lists now)."""

    def check(value: str) -> str:
        allowed = tuple(names() if callable(names) else names)
        if value not in allowed:
            raise ValueError(f"expected one of {', '.join(allowed)}")
        return value

    return AfterValidator(check)


def where(file: str | Path | None, section: str) -> str:
    """How a message names a section: `FILE [section]`."""
    return f"{file} [{section}]" if file is not None else f"[{section}]"


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file as a dict; ConfigError naming the file when it is missing or malformed."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the {what} (a TOML file)")
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        data = path.read_bytes()
    except OSError as error:
        raise ConfigError(f"{path}: cannot read the {what} ({error.strerror or error})") from None
    try:
        text = data.decode("utf-8")  # TOML is UTF-8 whatever the locale says
    except UnicodeDecodeError as error:
        line = data.count(b"\n", 0, error.start) + 1
        raise ConfigError(f"{path}: not UTF-8 text (byte 0x{data[error.start]:02x} on line {line}); TOML files are "
                          "UTF-8: save it as UTF-8 (e.g. iconv -f latin1 -t utf-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(f"{path}: not valid TOML ({error})") from None


def read_sections(path: Path, what: str, known: Iterable[str], required: Iterable[str] = ()) -> dict[str, dict]:
    """A TOML file whose top level holds only the sections `known` (each a table), with every
    `required` one present; ConfigError naming the file and the section otherwise."""
    raw = read_toml(path, what)
    known = tuple(known)
    extra = [name for name in raw if name not in known]
    if extra:
        raise ConfigError(f"{path}: unknown section(s) {', '.join(extra)}; known: {', '.join(known)}")
    for name, value in raw.items():
        if not isinstance(value, dict):
            raise ConfigError(f"{path}: {name} must be a section ([{name}]), got {value!r}")
    for name in required:
        if name not in raw:
            raise ConfigError(f"{path}: no [{name}] section")
    return raw


# ---------------------------------------------------------------------- validation

def validate(model: type[T], values: Any, at: str, *, dashes: bool = False,
             renamed: Mapping[str, str] | None = None) -> T:
    """`values` validated by the pydantic `model`; ConfigError naming `at` (file and section) and
    the key otherwise. `dashes`: 'local-steps' and 'local_steps' are one key (the Flower run
    config). `renamed`: old key -> its name now, for a message that says which to use."""
    if not isinstance(values, Mapping):
        raise ConfigError(f"{at}: expected a table of keys, got {values!r}")
    known = tuple(model.model_fields)
    data, spelled = _normalise(values, at, dashes)
    try:
        result = model.model_validate(data)
    except ValidationError as error:
        raise ConfigError(f"{at} {_describe(error, known, spelled, renamed or {})}") from None
    _cross_check(result, at)
    return result


def build_section(cls: type[T], values: Any, at: str, *, dashes: bool = False) -> T:
    """The dataclass `cls` from one section, validated by the model of its fields (their type
    hints, with any pydantic constraints in `Annotated`); a `RENAMED` class attribute maps old
    keys to their names now. ConfigError naming `at` and the key."""
    model = section_model(cls)
    checked = validate(model, values, at, dashes=dashes, renamed=getattr(cls, "RENAMED", None))
    result = cls(**dict(checked))
    _cross_check(result, at)
    return result


@functools.cache
def section_model(cls: type) -> type[ConfigModel]:
    """The pydantic model of dataclass `cls`'s init fields, with the house's rules."""
    if not is_dataclass(cls):
        raise TypeError(f"{cls!r} is not a dataclass")
    hints = typing.get_type_hints(cls, include_extras=True)
    spec: dict[str, Any] = {}
    for f in fields(cls):
        if not f.init:
            continue
        default = f.default if f.default is not MISSING else (
            f.default_factory() if f.default_factory is not MISSING else ...)
        spec[f.name] = (hints[f.name], default)
    return create_model(f"{cls.__name__}Section", __base__=ConfigModel, **spec)


def _cross_check(result: Any, at: str) -> None:
    check = getattr(result, "check", None)
    if callable(check):
        try:
            check()
        except FieldProblem as problem:
            raise ConfigError(f"{at} {problem.key}: {problem.problem}") from None


def _normalise(values: Mapping, at: str, dashes: bool) -> tuple[dict[str, Any], dict[str, str]]:
    """(values with lists as tuples and, with `dashes`, '-' read as '_'; key -> its spelling)."""
    data: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for key, value in values.items():
        name = key.replace("-", "_") if dashes and isinstance(key, str) else key
        if name in data:
            raise ConfigError(f"{at} {name}: given twice, as {spelled[name]!r} and {key!r}")
        data[name] = tuple(value) if isinstance(value, list) else value
        spelled[name] = key
    return data, spelled


_EXPECTED = {
    "int_type": "expected an integer", "int_parsing": "expected an integer", "int_from_float": "expected an integer",
    "float_type": "expected a number", "float_parsing": "expected a number", "finite_number": "expected a finite number",
    "bool_type": "expected true or false", "bool_parsing": "expected true or false", "string_type": "expected a string",
    "tuple_type": "expected a list", "list_type": "expected a list", "dict_type": "expected a table",
    "model_type": "expected a table", "string_too_short": "expected a non-empty string",
}
_BOUNDS = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
           "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}


def _problem(err: Mapping[str, Any]) -> str:
    """One pydantic error in the house's words: what was expected, and what was given."""
    kind, ctx = err["type"], err.get("ctx") or {}
    if kind == "missing":
        return "is required"
    if kind in _EXPECTED:
        text = _EXPECTED[kind]
    elif kind in _BOUNDS:
        bound, words = _BOUNDS[kind]
        limit = ctx[bound]
        text = f"expected {words} {limit:g}" if isinstance(limit, float) else f"expected {words} {limit}"
    elif kind == "literal_error":
        text = f"expected {ctx['expected']}"
    elif kind == "too_short":
        text = f"expected at least {ctx['min_length']} item(s)"
    elif kind == "value_error":
        text = str(ctx["error"])
    else:
        text = err["msg"]
    return f"{text}, got {err['input']!r}"


def _key(loc: tuple, spelled: Mapping[str, str]) -> str:
    """`selections[1]` for the second item of selections; a union's member tags are left out."""
    text = str(spelled.get(loc[0], loc[0])) if loc else ""
    return text + "".join(f"[{part}]" for part in loc[1:] if isinstance(part, int))


def _describe(error: ValidationError, known: Sequence[str], spelled: Mapping[str, str],
              renamed: Mapping[str, str]) -> str:
    """Every wrong key once (its first problem), then the unknown keys with what to write instead."""
    parts: list[str] = []
    seen: set = set()
    unknown: list[str] = []
    for err in error.errors():
        loc = err["loc"]
        if err["type"] == "extra_forbidden":
            unknown.append(str(spelled.get(loc[0], loc[0])))
        elif loc[:1] not in seen:
            seen.add(loc[:1])
            parts.append(f"{_key(loc, spelled)}: {_problem(err)}")
    for key in unknown:
        if key in renamed:
            parts.append(f"{key}: unknown key; use {renamed[key]}")
        elif key.replace("-", "_") in known:
            parts.append(f"{key}: spell it {key.replace('-', '_')} (keys in files use '_')")
        else:
            close = difflib.get_close_matches(key, known, n=1)
            parts.append(f"{key}: unknown key{f' (did you mean {close[0]}?)' if close else ''}; "
                         f"known: {', '.join(known)}")
    return "; ".join(parts)
