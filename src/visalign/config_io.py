"""Typed configs from YAML files plus dotted ``key=value`` overrides.

Every config in visalign is a pydantic model with ``extra="forbid"``: an unknown key is an error that names
the file, the dotted key and the closest valid key. Values given on the command line are parsed as YAML
scalars (``train.lr=1e-4`` -> float, ``lora.enabled=false`` -> bool, ``reward.weights=[1,2]`` -> list).
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from visalign.errors import UserError

ConfigT = TypeVar("ConfigT", bound=BaseModel)


class StrictModel(BaseModel):
    """Base for every config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def read_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise UserError(f"{path}{line}: malformed YAML ({getattr(err, 'problem', err)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise UserError(f"{path}: top level must be a mapping of config sections")
    return data


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``a.b.c=value`` overrides in place (values parsed as YAML scalars) and return ``data``."""
    for item in overrides:
        if "=" not in item:
            raise UserError(f"override '{item}' must look like section.key=value")
        dotted, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError:
            value = raw
        node = data
        keys = dotted.strip().split(".")
        for key in keys[:-1]:
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                raise UserError(f"override '{item}': '{key}' is not a section")
            node = child
        node[keys[-1]] = value
    return data


def _valid_keys(model: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """The field names of the (nested) section at ``loc``, for did-you-mean hints."""
    current: Any = model
    for part in loc[:-1]:
        fields = getattr(current, "model_fields", None)
        if not fields or part not in fields:
            return []
        current = fields[part].annotation
    fields = getattr(current, "model_fields", None)
    return list(fields) if fields else []


def validate_config(model: type[ConfigT], data: dict[str, Any], source: str) -> ConfigT:
    """Validate ``data`` against ``model``; turn pydantic's report into one clear ``UserError``."""
    try:
        return model.model_validate(data)
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first["loc"])
        dotted = ".".join(str(p) for p in loc)
        if first["type"] == "extra_forbidden":
            close = difflib.get_close_matches(str(loc[-1]), _valid_keys(model, loc), n=1)
            hint = f" (did you mean '{'.'.join([*map(str, loc[:-1]), close[0]])}'?)" if close else ""
            raise UserError(f"{source}: unknown key '{dotted}'{hint}") from None
        raise UserError(f"{source}: invalid value for '{dotted}': {first['msg']}") from None


def load_config(model: type[ConfigT], path: str | Path | None, overrides: list[str] | None = None) -> ConfigT:
    """Read ``path`` (optional), apply overrides, validate into ``model``."""
    data = read_yaml(path) if path is not None else {}
    apply_overrides(data, list(overrides or []))
    return validate_config(model, data, str(path) if path is not None else "<overrides>")


def dump_config(config: BaseModel) -> str:
    """The resolved config as YAML (written into every run directory)."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
