"""Typed configs from YAML files plus dotted ``key=value`` overrides.

Every config in visalign is a pydantic model with ``extra="forbid"``: an unknown key is an error that names
the file, the dotted key and the closest valid key. Values given on the command line are parsed as YAML
scalars (``train.lr=1e-4`` -> float, ``lora.enabled=false`` -> bool, ``reward.weights=[1,2]`` -> list); a
numeric key indexes a list (``rewards.0.weight=2``). An error in a value that came from an override names the
override (``override 'train.lr=abc'``), not the file it overrode.

Floats must be finite in every config: YAML reads ``.inf`` and ``.nan`` as floats, and a NaN learning rate
trains to NaN weights without any error.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypeVar, get_args

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from visalign.errors import UserError, where

ConfigT = TypeVar("ConfigT", bound=BaseModel)

# A cross-field check (a model validator) has no location of its own: its message starts with the dotted key it
# blames ("sampling.train_window must be ..."), which is how the error finds the file or override to name.
_LEADING_KEY = re.compile(r"^([A-Za-z_]\w*(?:\.\w+)*)\b")


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated, floats are finite.

    A section may override ``semantic_problems`` for checks that need more than the values' types (a reward's
    constructor options, a prompt file that must exist): it yields ``(dotted key, message)`` pairs.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)

    def semantic_problems(self) -> Iterator[tuple[str, str]]:
        return iter(())


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a config file")
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError:
        raise UserError(f"{path}: not a UTF-8 text file") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read config file ({err.strerror or err})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: malformed YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of config sections")
    return data


def apply_overrides(
    data: dict[str, Any], overrides: list[str], origins: dict[str, str] | None = None
) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides in place (values parsed as YAML scalars) and return ``data``.

    ``origins`` (optional) receives ``dotted key -> override text`` so that a bad value can be blamed on it.
    """
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        keys = dotted.strip().split(".")
        if not all(keys):
            raise UserError(f"override '{item}': '{dotted}' is not a dotted key such as train.lr")
        node: Any = data
        for key in keys[:-1]:
            node = _child(node, key, item)
        _assign(node, keys[-1], value, item)
        if origins is not None:
            origins[".".join(keys)] = item
    return data


def _child(node: Any, key: str, item: str) -> Any:
    """The section (or list item) ``key`` of ``node``, created as an empty section when absent."""
    if isinstance(node, list):
        return _child_of_list(node, key, item)
    child = node.get(key)
    if child is None:
        child = node[key] = {}
    if not isinstance(child, (dict, list)):
        raise UserError(f"override '{item}': '{key}' is not a section")
    return child


def _child_of_list(node: list[Any], key: str, item: str) -> Any:
    index = _list_index(node, key, item)
    if not isinstance(node[index], (dict, list)):
        raise UserError(f"override '{item}': item {index} is not a section")
    return node[index]


def _list_index(node: list[Any], key: str, item: str) -> int:
    if not key.isdigit() or int(key) >= len(node):
        raise UserError(f"override '{item}': '{key}' is not an index of a list of {len(node)} items")
    return int(key)


def _assign(node: Any, key: str, value: Any, item: str) -> None:
    if isinstance(node, list):
        node[_list_index(node, key, item)] = value
    else:
        node[key] = value


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) section at ``loc``, for did-you-mean hints."""
    current: Any = model
    for part in loc[:-1]:
        if isinstance(part, int):  # an item of a list section (rewards.0.name): the list's item type
            args = [a for a in get_args(current) if isinstance(a, type) and issubclass(a, BaseModel)]
            current = args[0] if args else None
            continue
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def blame(dotted: str, origins: dict[str, str] | None, source: str) -> str:
    """Who gave the value at ``dotted``: the last override that set it (or a section above or below it), else
    ``source`` (the file)."""
    hit = None
    for key, item in (origins or {}).items():
        if key == dotted or dotted.startswith(key + ".") or key.startswith(dotted + "."):
            hit = item  # dicts keep insertion order: the last match is the override applied last
    return f"override '{hit}'" if hit is not None else source


def _message(text: str) -> str:
    """pydantic prefixes the message of a validator's ``ValueError`` with its class; users need only the text."""
    return text.removeprefix("Value error, ").removeprefix("Assertion failed, ")


def validate_config(
    model: type[ConfigT], data: dict[str, Any], source: str, origins: dict[str, str] | None = None
) -> ConfigT:
    """Validate ``data`` against ``model``; turn pydantic's report into one clear ``UserError``.

    ``source`` names the file; ``origins`` (``dotted key -> override``, from ``apply_overrides``) names the
    override instead when the bad value came from the command line.
    """
    try:
        config = model.model_validate(data)
    except ValidationError as err:
        raise UserError(_located(*explain(model, err), source, origins)) from None
    problem = next(iter(config.semantic_problems()), None) if isinstance(config, StrictModel) else None
    if problem is not None:
        raise UserError(_located(*problem, source, origins))
    return config


def explain(model: type[BaseModel], err: ValidationError, prefix: str = "") -> tuple[str, str]:
    """(dotted key, message) for the first problem pydantic found; ``prefix`` is put before every key (a nested
    section validated on its own, such as ``algorithm.options.``)."""
    first = err.errors()[0]
    loc = tuple(first["loc"])
    dotted = prefix + ".".join(str(p) for p in loc)
    text = _message(first["msg"])
    if first["type"] == "extra_forbidden":
        close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1)
        hint = f" (did you mean '{prefix}{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
        return dotted, f"unknown key '{dotted}'{hint}"
    if not loc:  # a cross-field check: its message starts with the key it blames
        lead = _LEADING_KEY.match(text)
        named = lead is not None and lead.group(1).split(".")[0] in getattr(model, "model_fields", {})
        return (prefix + lead.group(1) if named else prefix.rstrip(".")), text
    return dotted, f"invalid value for '{dotted}': {text}"


def _located(key: str, text: str, source: str, origins: dict[str, str] | None) -> str:
    """``text`` prefixed by who gave the value at ``key``: an override, else the file (and the key, unless the
    message already names it)."""
    who = blame(key, origins, source) if key else source
    if who == source and key and f"'{key}'" not in text and not text.startswith(key):
        return f"{where(source, key=key)}: {text}"
    return f"{who}: {text}"


def load_config(model: type[ConfigT], path: str | Path | None, overrides: list[str] | None = None) -> ConfigT:
    """Read ``path`` (optional), apply overrides, validate into ``model``."""
    data = read_yaml(path) if path is not None else {}
    origins: dict[str, str] = {}
    apply_overrides(data, list(overrides or []), origins)
    return validate_config(model, data, str(path) if path is not None else "built-in defaults", origins)


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
