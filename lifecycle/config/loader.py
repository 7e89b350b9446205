"""Reading configuration: conf/<section>.yaml, then a profile overlay (conf/profiles/<name>.yaml, only
the keys it changes), then `--set a.b=c` overrides, then `--source` paths. Every value remembers where
it came from, so an error names the key path, the value seen, what was expected and the file."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from lifecycle.errors import ConfigError

Origins = dict[str, str]  # dotted key path -> file, profile or "--set ..."


class _Loader(yaml.SafeLoader):
    """YAML 1.2 numbers: `3e-3` is a float (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*(?:[eE][-+]?[0-9]+)?|\.[0-9_]+(?:[eE][-+]?[0-9]+)?"
               r"|[0-9][0-9_]*[eE][-+]?[0-9]+|\.(?:inf|Inf|INF)|\.(?:nan|NaN|NAN))$"),
    list("-+0123456789."))


def load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)  # noqa: S506 (a SafeLoader)


def find_conf_dir(value: str | Path | None = None) -> Path:
    """--conf, then LIFECYCLE_CONF, then ./conf, then the conf/ beside this package (a source checkout)."""
    for candidate in (value, os.environ.get("LIFECYCLE_CONF"), "conf", Path(__file__).resolve().parents[2] / "conf"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError(f"configuration folder not found (tried --conf {value!r}, LIFECYCLE_CONF, ./conf)")


def read_layers(conf_dir: Path, sections: list[str], profile: str | None, overrides: list[str],
                sources: list[str]) -> tuple[dict[str, Any], Origins]:
    """The merged raw values of every section, and where each came from."""
    data: dict[str, Any] = {}
    origin: Origins = {}
    for section in sections:
        path = conf_dir / f"{section}.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; every section needs a file (sections: {', '.join(sections)})")
        data[section] = read_yaml(path)
        _record(origin, section, data[section], str(path))
    for path, overlay in _profile_chain(conf_dir, profile):
        deep_merge(data, overlay)
        _record(origin, "", overlay, str(path))
    for item in overrides:
        key, value = _parse_override(item)
        _set_path(data, key, value)
        origin[key] = f"--set {item}"
    if sources:
        data["ingest"]["sources"] = [
            {"name": "python-docs", "kind": "python-docs"} if s == "python-docs" else
            {"name": f"cli-{i}", "kind": "files", "paths": [s]} for i, s in enumerate(sources, 1)]
        origin["ingest.sources"] = "--source"
    return data, origin


def _profile_chain(conf_dir: Path, profile: str | None) -> list[tuple[Path, dict[str, Any]]]:
    """The profile's overlays, base first: a profile may start from another with `extends: NAME`."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    while profile:
        path = conf_dir / "profiles" / f"{profile}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (conf_dir / "profiles").glob("*.yaml"))
            raise ConfigError(f"profile '{profile}': {path} does not exist (known profiles: {', '.join(known)})")
        if any(p == path for p, _ in chain):
            raise ConfigError(f"profile '{profile}': `extends` goes round in a circle ({path})")
        overlay = read_yaml(path)
        profile = overlay.pop("extends", None)
        chain.insert(0, (path, overlay))
    return chain


def read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = load_yaml(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except (ValueError, RecursionError) as err:  # a timestamp like 2001-13-01, nesting too deep for the parser
        raise ConfigError(f"{path}: not usable YAML ({str(err) or type(err).__name__})") from None
    check_acyclic(value, str(path))
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(value).__name__}")
    return value


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    """Overlay nested mappings onto `base` in place (how profiles apply)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
        else:
            base[key] = value


def explain(err: ValidationError, origin: Origins) -> str:
    lines = ["invalid configuration:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            what = "unknown key (check the spelling; unknown keys are rejected)"
        elif e["type"] == "missing":
            what = "required key is missing"
        else:
            what = e["msg"]
        lines.append(describe(path, e.get("input"), what, origin))
    return "\n".join(lines)


def check_acyclic(value: Any, where: str) -> None:
    """Refuse a value that contains itself (a YAML anchor used inside its own node): nothing downstream (validation,
    hashing, JSON) can walk it. Shared anchors are fine; each node is walked once."""
    done: set[int] = set()

    def walk(node: Any, path: tuple[int, ...]) -> None:
        if not isinstance(node, (dict, list)) or id(node) in done:
            return
        if id(node) in path:
            raise ConfigError(f"{where}: a value contains itself (a YAML anchor used inside its own node)")
        for child in node.values() if isinstance(node, dict) else node:
            walk(child, (*path, id(node)))
        done.add(id(node))

    walk(value, ())


def describe(path: str, value: Any, what: str, origin: Origins) -> str:
    """One error line: `  key.path = value: what is wrong  [where it came from]`."""
    try:
        seen = json.dumps(value, default=str)
    except (ValueError, RecursionError):  # nested too deep to show
        seen = repr(value)
    if len(seen) > 120:
        seen = seen[:117] + "..."
    source = origin_of(path, origin)
    return f"  {path} = {seen}: {what}{f'  [{source}]' if source else ''}"


def origin_of(path: str, origin: Origins) -> str:
    while path:
        if path in origin:
            return origin[path]
        path = path.rpartition(".")[0]
    return ""


def _record(origin: Origins, prefix: str, value: Any, source: str) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _record(origin, f"{prefix}.{key}" if prefix else str(key), sub, source)
    else:
        origin[prefix] = source


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not all(part.strip() for part in key.split(".")):  # no key, or an empty part: "a..b", ".x"
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set tokenize.vocab_size=1024")
    try:
        value = load_yaml(raw) if raw else ""
    except (yaml.YAMLError, ValueError, RecursionError):  # not YAML (or a bad date, or too deep): the text itself
        value = raw
    check_acyclic(value, f"--set {item!r}")
    return key.strip(), value


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if child is None:  # a mapping left unset (null), e.g. sft.peft: --set sft.peft.r=8 starts it
            child = node[part] = {}
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: '{where}' holds a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = value
