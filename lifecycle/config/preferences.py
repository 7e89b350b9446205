"""conf/preferences.yaml: the preferences stage (part of its cache key) and conf/annotate.yaml: the
annotation app and the preference store (in no cache key: moving the database or the port never
invalidates a preference set)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from lifecycle.config.base import Section


class PromptsConfig(Section):
    held_out: int = Field(ge=0)  # held-out SFT pairs asked (their reference answers guide the simulated judge)
    files: list[str]  # your prompts: JSONL, one {"prompt": str | [messages]} per line


class SamplingConfig(Section):
    responses: int = Field(ge=2, le=8)  # sampled per prompt; every pair of them is one comparison item
    temperatures: list[float] = Field(min_length=1)  # response i is sampled at temperatures[i % len]
    top_p: float = Field(gt=0, le=1)
    max_new_tokens: int = Field(ge=1)
    seed: int  # answer i of every prompt is sampled with torch seeded by seed + i


class HumanConfig(Section):
    votes_per_item: int = Field(ge=1)  # independent votes each item needs (the batch's quota: items x this)
    gold_items: int = Field(ge=0)  # gold items: the reference answer against an answer to another question
    min_agreement: float = Field(ge=-1, le=1)  # Krippendorff's alpha the batch must reach to resume by itself
    timeout_s: int = Field(ge=1)  # the flow waits this long for the votes, then fails (keeping every vote)
    poll_interval_s: int = Field(ge=1)


class SimulatedConfig(Section):
    judges: int = Field(ge=1)  # simulated annotators, each voting on every item
    noise: float = Field(ge=0, le=0.5)  # the probability a judge flips its decision (deterministic by hash)


class ImportConfig(Section):
    files: list[str]  # TRL preference files (strings or message lists) or Anthropic HH-RLHF transcripts


class ExportConfig(Section):
    ties: Literal["drop", "both"]  # both: a>b and b>a rows, which cancel in a Bradley-Terry loss
    min_agreement: float = Field(ge=0, le=1)  # items whose majority holds a smaller share of votes are dropped
    min_votes: int = Field(ge=1)


class PreferencesConfig(Section):
    mode: Literal["human", "simulated", "import"]
    round: int = Field(ge=1)  # bump for a new batch from the same model and prompts
    prompts: PromptsConfig
    sampling: SamplingConfig
    human: HumanConfig
    simulated: SimulatedConfig
    import_: ImportConfig = Field(alias="import")
    export: ExportConfig

    @model_validator(mode="after")
    def _files_for_import(self) -> PreferencesConfig:
        if self.mode == "import" and not self.import_.files:
            raise ValueError("mode 'import' needs preferences.import.files")
        return self


class AnnotateConfig(Section):
    store_url: str | None  # SQLAlchemy URL; null: SQLite (WAL) at <state_dir>/preferences/preferences.db
    host: str
    port: int = Field(ge=1, le=65535)
    public_url: str | None  # the address people open, when not http://host:port (a proxy)
    gold_every: int = Field(ge=0)  # every n-th item shown is a gold item, while unseen ones remain (0: never)
    assignment_ttl_s: int = Field(ge=1)  # an unanswered assignment holds its slot this long
    max_body_bytes: int = Field(ge=1024)  # larger request bodies are refused (413)
    max_reason_chars: int = Field(ge=0)
    rate_limit_per_minute: int = Field(ge=0)  # requests per token or session, refilled evenly (0: no limit)
    rate_limit_burst: int = Field(ge=1)  # requests a credential may make at once before the rate applies
