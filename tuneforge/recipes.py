"""Loading recipes: dataclass defaults < a YAML recipe < dotted command-line overrides.

    recipe = load_recipe("configs/demo-cpu.yaml", ["training.learning_rate=1e-4"])
    tuneforge config show configs/demo-cpu.yaml training.learning_rate=1e-4

Unknown keys and wrong types are errors that name the key, the file (or the override) and the closest valid
key. The schema is tuneforge/config.py. This module imports no torch.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import itertools
import typing
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from tuneforge.config import SECTIONS, Recipe
from tuneforge.errors import ConfigError

# --------------------------------------------------------------------------- field documentation


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The one-line docstring under each field of a dataclass (read from its source)."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = nxt.value.value.strip()
    return docs


def all_keys() -> dict[str, tuple[Any, str]]:
    """Every dotted key of a recipe with its default value and docstring."""
    keys: dict[str, tuple[Any, str]] = {"name": (Recipe().name, field_docs(Recipe)["name"])}
    for section, cls in SECTIONS.items():
        default = cls()
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            keys[f"{section}.{f.name}"] = (getattr(default, f.name), docs.get(f.name, ""))
    return keys


def closest_key(key: str) -> str | None:
    """The valid dotted key nearest to `key`, also across sections (training.r -> lora.r)."""
    keys = list(all_keys())
    if "." not in key:  # a misspelt section name
        match = difflib.get_close_matches(key, [*SECTIONS, "name"], n=1, cutoff=0.6)
        if match:
            return match[0]
    section, _, leaf = key.rpartition(".")
    by_leaf: dict[str, str] = {}
    for k in keys:
        by_leaf.setdefault(k.rpartition(".")[2], k)
    if leaf in by_leaf:  # right name, wrong section
        return by_leaf[leaf]
    same_section = [k.rpartition(".")[2] for k in keys if k.rpartition(".")[0] == section]
    match = difflib.get_close_matches(leaf, same_section, n=1, cutoff=0.6)
    if match:
        return f"{section}.{match[0]}"
    match = difflib.get_close_matches(key, keys, n=1, cutoff=0.6)
    if match:
        return match[0]
    match = difflib.get_close_matches(leaf, list(by_leaf), n=1, cutoff=0.6)
    return by_leaf[match[0]] if match else None


# --------------------------------------------------------------------------- loading


def _read_yaml(path: Path) -> dict:
    try:
        text = path.read_text()
    except FileNotFoundError:
        near = difflib.get_close_matches(path.name, [p.name for p in path.parent.glob("*.y*ml")], n=1)
        hint = f"; did you mean {path.parent / near[0]}?" if near else ""
        raise ConfigError(f"recipe {path} not found{hint}") from None
    except OSError as e:
        raise ConfigError(f"cannot read recipe {path}: {e.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f":{mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}{where}: not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{path}: a recipe is a mapping of sections (model, data, lora, ...), got {type(data).__name__}"
        )
    return data


def _parse_overrides(overrides: list[str]) -> dict:
    for item in overrides:
        if "=" not in item or item.startswith("="):
            raise ConfigError(f"override '{item}': expected KEY=VALUE, e.g. training.learning_rate=1e-4")
    try:
        return OmegaConf.to_container(OmegaConf.from_dotlist(list(overrides)))  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"command-line overrides: {str(e).splitlines()[0]}") from None


def _normalise_layer(layer: dict) -> dict:
    """Accept a single string where a list of strings is expected (target_modules: all-linear), and
    YAML 1.1's reading of `no` as false where a string is expected (eval_strategy: no)."""
    for section, cls in SECTIONS.items():
        values = layer.get(section)
        if not isinstance(values, dict):
            continue
        hints = typing.get_type_hints(cls)
        for name, value in values.items():
            if hints.get(name) == list[str] and isinstance(value, str):
                values[name] = [value]
            elif hints.get(name) is str and isinstance(value, bool):
                values[name] = "yes" if value else "no"
    return layer


# keys that moved, so an old recipe gets told where
MOVED = {f"inference.{k}": f"sampling.{k}" for k in ("temperature", "top_p", "max_tokens")}


def _merge(base, layer: dict, source: str):
    """Merge one layer into the typed config, turning OmegaConf errors into ConfigError."""
    layer = _normalise_layer(layer)
    try:
        return OmegaConf.merge(base, OmegaConf.create(layer))
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or getattr(e, "key", None) or "?"
        first = str(e).splitlines()[0]
        if str(key) in MOVED:
            raise ConfigError(f"{source}: '{key}' moved to '{MOVED[str(key)]}'") from None
        if "not in" in first or "ConfigKeyError" in type(e).__name__ or "Key '" in first:
            near = closest_key(str(key))
            hint = f"; did you mean '{near}'?" if near else "; run `tuneforge config keys` for the list"
            raise ConfigError(f"{source}: unknown key '{key}'{hint}") from None
        raise ConfigError(f"{source}: {key}: wrong type: {first}") from None


def load_recipe(path: str | Path | None = None, overrides: list[str] | None = None) -> Recipe:
    """Build a Recipe: dataclass defaults < the YAML file at `path` < dotted `overrides`."""
    overrides = list(overrides or [])
    schema = OmegaConf.structured(Recipe)
    layers: list[tuple[dict, str]] = []
    if path is not None:
        layers.append((_read_yaml(Path(path)), str(path)))
    if overrides:
        layers.append((_parse_overrides(overrides), "command-line override"))
    merged = schema
    for data, source in layers:
        merged = _merge(merged, data, source)
    plain = OmegaConf.to_container(merged)
    assert isinstance(plain, dict)

    def source_of(key: str) -> str:
        for data, source in reversed(layers):
            leaves = flatten(data)
            if key in leaves or any(k.startswith(key + ".") for k in leaves):
                return source
        return "default"

    sections = {}
    for section, cls in SECTIONS.items():
        try:
            sections[section] = cls(**plain[section])
        except ConfigError as e:
            field_name = str(e).split(":", 1)[0]
            raise ConfigError(f"{source_of(f'{section}.{field_name}')}: {section}.{e}") from None
    return Recipe(name=plain["name"], **sections)


def recipe_to_dict(recipe: Recipe) -> dict:
    return dataclasses.asdict(recipe)


def flatten(d: dict, prefix: str = "") -> dict[str, Any]:
    """{'a': {'b': 1}} -> {'a.b': 1}: every leaf of a nested dict under its dotted key."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def dump_recipe(recipe: Recipe) -> str:
    return yaml.safe_dump(recipe_to_dict(recipe), sort_keys=False)
