"""One typed, validated configuration for every stage.

Values live in conf/<section>.yaml (one file per section); a profile (conf/profiles/<name>.yaml) is an
overlay that holds only the keys it changes; `--set a.b=c` overrides win over both. Unknown keys are
rejected, and every error names the key path, the value seen, what was expected and the file it came from.

    cfg = load_config(Path("conf"), profile="quickstart", overrides=["tokenize.vocab_size=512"])
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lifecycle.errors import ConfigError


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class RunConfig(Section):
    experiment: str = Field(min_length=1)
    registered_model: str = Field(min_length=1)
    state_dir: str = Field(min_length=1)
    seed: int


class SourceConfig(Section):
    """One named corpus source. `kind` decides which of the other keys apply."""

    name: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    kind: Literal["files", "python-docs", "hf"]
    paths: list[str] = []  # files: files, directories or globs
    text_field: str = "text"  # files (.jsonl/.json/.csv/.parquet) and hf: the column holding the text
    include: list[str] = []  # python-docs: module-name prefixes to keep (empty: the whole stdlib)
    exclude: list[str] = []  # python-docs: module-name prefixes to drop
    dataset: str | None = None  # hf: dataset name on the Hugging Face hub
    subset: str | None = None  # hf: configuration name
    split: str = "train"  # hf

    @model_validator(mode="after")
    def _kind_has_what_it_needs(self) -> SourceConfig:
        if self.kind == "files" and not self.paths:
            raise ValueError(f"source '{self.name}' of kind 'files' needs at least one entry in 'paths'")
        if self.kind == "hf" and not self.dataset:
            raise ValueError(f"source '{self.name}' of kind 'hf' needs 'dataset'")
        return self


class NearDupConfig(Section):
    enabled: bool
    threshold: float = Field(gt=0, le=1)  # estimated Jaccard similarity at or above which docs are near-duplicates
    num_perm: int = Field(ge=16, le=1024)
    shingle_words: int = Field(ge=1, le=32)


class IngestConfig(Section):
    sources: list[SourceConfig] = Field(min_length=1)
    normalization: Literal["NFC", "NFKC"]
    min_doc_chars: int = Field(ge=0)  # shorter documents are dropped (and counted)
    max_doc_chars: int = Field(ge=64)  # longer files are split at paragraph boundaries
    max_undecodable_share: float = Field(ge=0, le=1)  # a file with more invalid UTF-8 bytes is rejected
    val_fraction: float = Field(ge=0, lt=1)
    near_dup: NearDupConfig
    max_docs: int | None = Field(default=None, ge=1)  # cap after dedup (deterministic, by hash order)


class ValidateConfig(Section):
    min_documents: int = Field(ge=1)
    min_characters: int = Field(ge=1)
    min_doc_chars: int = Field(ge=1)
    max_doc_chars: int = Field(ge=1)
    length_mostly: float = Field(gt=0, le=1)
    min_printable_share: float = Field(ge=0, le=1)
    printable_mostly: float = Field(gt=0, le=1)
    max_duplicate_share: float = Field(ge=0, le=1)  # share of input documents removed as (near-)duplicates
    required_columns: list[str]


class TokenizeConfig(Section):
    vocab_size: int = Field(ge=300, le=262_144)
    min_frequency: int = Field(ge=1)
    train_max_chars: int = Field(ge=1000)  # BPE is trained on at most this many characters of train text
    context_length: int = Field(ge=8)
    num_proc: int = Field(ge=1)
    batch_size: int = Field(ge=1)


class Config(Section):
    run: RunConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    tokenize: TokenizeConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def section(self, name: str) -> Section:
        return getattr(self, "validate_" if name == "validate" else name)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)


SECTIONS = [f.alias or name for name, f in Config.model_fields.items()]


def hash_json(value: Any) -> str:
    """Stable content hash of JSON-able data (16 hex chars)."""
    blob = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def config_hash(cfg: Config) -> str:
    return hash_json(cfg.dump())


def load_config(conf_dir: Path, profile: str | None = None, overrides: list[str] | None = None) -> Config:
    """Read conf/<section>.yaml, overlay the profile, then `--set` overrides; validate it all."""
    conf_dir = Path(conf_dir)
    data: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for section in SECTIONS:
        path = conf_dir / f"{section}.yaml"
        if not path.is_file():
            raise ConfigError(f"{path}: missing; every section needs a file (sections: {', '.join(SECTIONS)})")
        data[section] = _read_yaml(path)
        _record(origin, section, data[section], str(path))
    if profile:
        path = conf_dir / "profiles" / f"{profile}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in (conf_dir / "profiles").glob("*.yaml"))
            raise ConfigError(f"profile '{profile}': {path} does not exist (known profiles: {', '.join(known)})")
        overlay = _read_yaml(path)
        _merge(data, overlay)
        _record(origin, "", overlay, str(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_path(data, key, value)
        origin[key] = f"--set {item}"
    try:
        return Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_explain(err, origin)) from None


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        value = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: not valid YAML ({getattr(err, 'problem', err)})") from None
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: expected a mapping of keys to values, got {type(value).__name__}")
    return value


def _merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            _merge(base[key], value)
        else:
            base[key] = value


def _record(origin: dict[str, str], prefix: str, value: Any, source: str) -> None:
    if isinstance(value, dict):
        for key, sub in value.items():
            _record(origin, f"{prefix}.{key}" if prefix else str(key), sub, source)
    else:
        origin[prefix] = source


def _parse_override(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set {item!r}: expected KEY.PATH=VALUE, e.g. --set tokenize.vocab_size=1024")
    try:
        value = yaml.safe_load(raw) if raw else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def _set_path(data: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            where = ".".join(parts[: i + 1])
            raise ConfigError(f"--set {key}: '{where}' holds a {type(child).__name__}, not a mapping")
        node = child
    node[parts[-1]] = value


def _explain(err: ValidationError, origin: dict[str, str]) -> str:
    lines = ["invalid configuration:"]
    for e in err.errors():
        path = ".".join(str(p) for p in e["loc"])
        source = _origin_of(path, origin)
        seen = json.dumps(e.get("input"), default=str)
        if len(seen) > 120:
            seen = seen[:117] + "..."
        if e["type"] == "extra_forbidden":
            what = "unknown key (check the spelling; unknown keys are rejected)"
        elif e["type"] == "missing":
            what = "required key is missing"
        else:
            what = e["msg"]
        lines.append(f"  {path} = {seen}: {what}{f'  [{source}]' if source else ''}")
    return "\n".join(lines)


def _origin_of(path: str, origin: dict[str, str]) -> str:
    while path:
        if path in origin:
            return origin[path]
        path = path.rpartition(".")[0]
    return ""
