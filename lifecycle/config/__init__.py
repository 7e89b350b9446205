"""One typed, validated configuration: a schema per section (a module each in this package), read by a
small loader (loader.py). Unknown keys are rejected; every error names the key path, the value seen,
what was expected and the file it came from. Sections that configure a third-party trainer pass through
as mappings and are checked by constructing the trainer's own config (passthrough.py).

    cfg = load_config(Path("conf"), profile="quickstart", overrides=["tokenize.vocab_size=512"])
    cfg.tokenize.vocab_size, cfg.origin("tokenize.vocab_size")   # 512, "--set tokenize.vocab_size=512"

Adding a section: a schema module here, its field on `Config`, and conf/<section>.yaml.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError

from lifecycle.config.base import Section
from lifecycle.config.evaluate import AgainstChampion, EvaluateConfig, Minimums, PromoteConfig
from lifecycle.config.ingest import IngestConfig, NearDupConfig, SourceConfig
from lifecycle.config.loader import Origins, deep_merge, describe, explain, find_conf_dir, origin_of, read_layers
from lifecycle.config.monitor import MonitorConfig
from lifecycle.config.preferences import AnnotateConfig, PreferencesConfig
from lifecycle.config.pretrain import (
    DistributedConfig,
    ModelArchConfig,
    OptimConfig,
    PretrainConfig,
    SampleConfig,
)
from lifecycle.config.rag_index import (
    RagAnnConfig,
    RagChunkConfig,
    RagEmbedConfig,
    RagEvalConfig,
    RagIndexConfig,
    RagRetentionConfig,
)
from lifecycle.config.rlhf import RlhfConfig
from lifecycle.config.run import ModelNames, RunConfig
from lifecycle.config.serve import AnswerConfig, SearchConfig, ServeConfig
from lifecycle.config.sft import SftConfig, SftDataConfig, SftEvalConfig
from lifecycle.config.tokenize import TokenizeConfig
from lifecycle.config.validate import ValidateConfig
from lifecycle.errors import ConfigError
from lifecycle.hashing import hash_json

__all__ = ["AgainstChampion", "AnnotateConfig", "AnswerConfig", "Config", "ConfigError", "DistributedConfig",
           "EvaluateConfig", "IngestConfig", "Minimums", "ModelArchConfig", "ModelNames", "MonitorConfig",
           "NearDupConfig",
           "OptimConfig", "PreferencesConfig", "PretrainConfig", "PromoteConfig", "RagAnnConfig", "RagChunkConfig",
           "RagEmbedConfig", "RagEvalConfig", "RagIndexConfig", "RagRetentionConfig", "RlhfConfig", "RunConfig",
           "SampleConfig", "SearchConfig", "Section", "ServeConfig", "SftConfig", "SftDataConfig", "SftEvalConfig",
           "SourceConfig", "TokenizeConfig", "ValidateConfig", "config_hash", "deep_merge", "find_conf_dir",
           "load_config"]


class Config(Section):
    run: RunConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    tokenize: TokenizeConfig
    pretrain: PretrainConfig
    sft: SftConfig
    preferences: PreferencesConfig
    rlhf: RlhfConfig
    rag_index: RagIndexConfig
    evaluate: EvaluateConfig
    promote: PromoteConfig
    serve: ServeConfig
    annotate: AnnotateConfig
    monitor: MonitorConfig

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    _origin: Origins = PrivateAttr(default_factory=dict)

    def section(self, name: str) -> Section:
        return getattr(self, "validate_" if name == "validate" else name)

    def dump(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def origin(self, path: str) -> str:
        """Where the value at dotted `path` came from: a YAML file, a profile or a `--set` override."""
        return origin_of(path, self._origin)


SECTIONS = [f.alias or name for name, f in Config.model_fields.items()]


def config_hash(cfg: Config) -> str:
    return hash_json(cfg.dump())


def load_config(conf_dir: Path, profile: str | None = None, overrides: list[str] | None = None,
                sources: list[str] | None = None) -> Config:
    """Read and validate every section; `sources` ('python-docs' or a file/dir/glob each) replace
    ingest.sources."""
    data, origin = read_layers(Path(conf_dir), SECTIONS, profile, overrides or [], sources or [])
    try:
        cfg = Config.model_validate(data)
    except ValidationError as err:
        raise ConfigError(explain(err, origin)) from None
    cfg._origin = origin
    check_harness_rules(cfg)
    return cfg


def check_harness_rules(cfg: Config) -> None:
    """Each promote.harness rule names a task evaluate.harness runs: a rule on any other could never be measured."""
    rules, tasks = cfg.promote.harness, cfg.evaluate.harness_tasks
    for group, keys in (rules.rule_keys if rules else {}).items():
        for key in keys:
            if (task := key.partition("/")[0]) not in tasks:
                ran = ", ".join(tasks) if tasks else "none: the harness is off"
                raise ConfigError("invalid configuration:\n" + describe(
                    f"promote.harness.{group}.{key}", getattr(rules, group)[key],
                    f"task {task!r} is not among evaluate.harness.tasks ({ran})", cfg._origin))
