"""Config files <-> dataclasses: every error names the file and the key that went wrong.

    cfg = from_dict(RunConfig, {"loss": {"name": "ldam"}}, where="jobs/x.yaml: ")
    signature(cfg)            # the run's folder name: a hash of what can change its result
    to_dict(cfg)              # what config.yaml stores

Also the small tools every config reader shares: dotted keys (`optim.lr`), `key=value`
overrides read as YAML, and reading a YAML mapping with a one-line error.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from harness.registry import ConfigError


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is Literal:
        return value in typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, origin or tp)


def from_dict(cls: type, data: dict, where: str = "", prefix: str = "") -> Any:
    """Build dataclass `cls` from a nested dict; unknown keys and wrong types are ConfigErrors."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}{prefix.rstrip('.') or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            raise ConfigError(f"{where}unknown key '{prefix}{key}'; known: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value, tp = data[f.name], hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = from_dict(tp, value, where, f"{prefix}{f.name}.")
            continue
        if not _type_ok(value, tp):
            want = typing.get_args(tp) if typing.get_origin(tp) is Literal else getattr(tp, "__name__", tp)
            raise ConfigError(f"{where}key '{prefix}{f.name}' must be {want}, got {value!r}")
        kwargs[f.name] = float(value) if tp is float else value
    try:
        return cls(**kwargs)
    except ConfigError as e:  # a value the section itself refuses (its __post_init__)
        raise ConfigError(f"{where}{e}") from None


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def _signature_dict(cfg: Any) -> dict:
    out = {}
    for f in dataclasses.fields(cfg):
        keep, value = f.metadata.get("signature", True), getattr(cfg, f.name)
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if not keep or (keep == "if_set" and value == default):
            continue
        out[f.name] = _signature_dict(value) if dataclasses.is_dataclass(value) else value
    return out


def signature(cfg: Any) -> str:
    """A stable 10-hex-digit hash of everything in a RunConfig that can change the result: the
    fields marked NOT_IN_SIGNATURE are left out, those marked SIGNATURE_IF_SET count only when set."""
    blob = json.dumps(_signature_dict(cfg), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def set_dotted(tree: dict, dotted: str, value: Any) -> None:
    """tree['a']['b'] = value for dotted 'a.b', creating the mappings on the way."""
    *parents, leaf = dotted.split(".")
    for p in parents:
        node = tree.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"key '{dotted}': '{p}' is not a section")
        tree = node
    tree[leaf] = value


def get_dotted(cfg: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        cfg = cfg[part] if isinstance(cfg, dict) else getattr(cfg, part)
    return cfg


def parse_override(text: str) -> tuple[str, Any]:
    """'optim.lr=0.05' -> ('optim.lr', 0.05); the value is read as YAML."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    value = yaml.safe_load(raw)
    if isinstance(value, str):  # YAML 1.1 reads '1e30' as a string
        try:
            value = float(value)
        except ValueError:
            pass
    return key.strip(), value


def read_yaml(path: Path, what: str, keys: str) -> dict:
    """The mapping in a YAML file, or a one-line ConfigError naming the file (and the line)."""
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{path}:{line} is not valid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: {what} is a mapping with {keys}")
    return raw
