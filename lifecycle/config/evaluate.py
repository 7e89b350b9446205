"""conf/evaluate.yaml (the evaluate stage: the candidate against the champion on the same held-out data)
and conf/promote.yaml (the promotion gate's rules)."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, field_validator

from lifecycle.config.base import Section


class Intervals(Section):
    """The seeded paired bootstrap behind every interval of the evaluation (lifecycle/evaluate/bootstrap.py)."""

    level: float = Field(gt=0, lt=1)  # e.g. 0.95: a 95% percentile interval
    resamples: int = Field(ge=100)
    seed: int


class HarnessConfig(Section):
    """Standard benchmarks through lm-evaluation-harness on every compared model (lifecycle/evaluate/harness.py)."""

    tasks: list[str]  # lm-eval task or group names (built-in, or from include_path); empty: off
    num_fewshot: int | None = Field(ge=0)  # null: each task's own default
    limit: int | None = Field(ge=1)  # examples per task (the first ones); null: all
    batch_size: int = Field(ge=1)
    include_path: str | None  # a folder of the user's own task YAMLs (its files are part of the stage's key)
    apply_chat_template: bool  # prompts through the model's chat template (lm-eval's default: plain text)

    @field_validator("tasks")
    @classmethod
    def _named_once(cls, tasks: list[str]) -> list[str]:
        if any(not t.strip() or "/" in t for t in tasks):
            raise ValueError(f"task names must be non-empty and hold no '/', got {tasks}")
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"a task is named twice in {tasks}")
        return tasks


class HumanEvaluation(Section):
    """A blind pairwise round after the automatic measurements: the candidate's answers against the champion's
    (the SFT model's when there is none) on held-out questions (lifecycle/evaluate/human.py)."""

    enabled: bool
    mode: Literal["human", "simulated"]  # people in the annotation app (the flow waits), or preferences.simulated
    prompts: int = Field(ge=1)  # the first held-out questions of the evaluation, answered by both models
    round: int = Field(ge=1)  # bump for a new batch between the same two models
    votes_per_item: int = Field(ge=1)  # people's votes each pair needs (simulated: every judge votes)
    min_agreement: float = Field(ge=-1, le=1)  # Krippendorff's alpha the batch must reach to resume by itself
    timeout_s: int = Field(ge=1)  # the flow waits this long for the votes, then fails (keeping every vote)
    poll_interval_s: int = Field(ge=1)


class EvaluateConfig(Section):
    questions: int = Field(ge=1)  # held-out python-docs questions (not among the preference prompts), answered
    max_new_tokens: int = Field(ge=1)  # per answer (fewer when the model's context leaves less room)
    batch_size: int = Field(ge=1)  # answers generated together
    text_bytes: int = Field(ge=1024)  # validation text (UTF-8 bytes) for bits per byte and perplexity
    latency_requests: int = Field(ge=1)  # single requests timed for latency and tokens/s
    samples: int = Field(ge=0)  # answers shown side by side in the report card
    device: str  # auto | cpu | cuda
    prices: dict[str, float]  # per device-hour, by device ("cpu", "cuda", or "cuda:<GPU name>")
    currency: str = Field(min_length=1)
    intervals: Intervals
    # absent (a conf folder from before it existed) or null: off, as `tasks: []`
    harness: HarnessConfig | None = None
    human: HumanEvaluation | None = None  # absent or null: no human round, as `enabled: false`

    @property
    def human_round(self) -> HumanEvaluation | None:
        """The human round's settings when it is on."""
        return self.human if self.human and self.human.enabled else None

    @property
    def harness_tasks(self) -> list[str]:
        """The lm-eval tasks to run; empty when the harness is off."""
        return list(self.harness.tasks) if self.harness else []


class AgainstChampion(Section):
    """Rules that compare the candidate with the champion (skipped when there is none)."""

    max_bpb_regression: float = Field(ge=0)  # candidate val_bpb - champion's <= this
    min_win_rate: float = Field(ge=0, le=1)  # reward-model win rate against the champion (ties count half)
    min_gold_win_rate: float = Field(ge=0, le=1)  # questions where the candidate's ROUGE-L is higher (ties half)
    max_rouge_l_drop: float = Field(ge=0)  # candidate ROUGE-L with retrieval - champion's >= -this


class AgainstSft(Section):
    """Rules that compare the candidate with the SFT model it was aligned from (skipped when not measured)."""

    min_gold_win_rate: float = Field(ge=0, le=1)  # questions where the candidate's ROUGE-L is higher (ties half)
    max_rouge_l_drop: float = Field(ge=0)  # candidate ROUGE-L with retrieval - the SFT model's >= -this


class Minimums(Section):
    """Absolute floors: every candidate must meet them (the only rules when there is no champion yet)."""

    max_bpb: float = Field(gt=0)
    min_rouge_l: float = Field(ge=0, le=1)  # ROUGE-L with retrieval against held-out references
    min_rag_gain: float  # ROUGE-L with retrieval minus without
    min_gain_over_base: float  # ROUGE-L with retrieval minus the base model's (same retrieval)
    min_recall: float = Field(ge=0, le=1)  # retrieval recall@recall_k of the paired index
    recall_k: int = Field(ge=1)
    no_rlhf_alarm: bool  # refuse a policy whose RLHF run raised a health (reward-hacking) alarm


AtLeast = Literal["estimate", "lower"]  # a ">=" rule: the estimate, or its interval's lower bound
AtMost = Literal["estimate", "upper"]  # a "<=" rule: the estimate, or its interval's upper bound


class Bounds(Section):
    """Per gate rule, the value of its interval compared with the threshold: the estimate, or the bound a model
    that is no better would still show (lower for an at-least rule, upper for an at-most rule)."""

    max_bpb: AtMost
    min_rouge_l: AtLeast
    min_rag_gain: AtLeast
    min_gain_over_base: AtLeast
    min_recall: AtLeast
    bpb_regression: AtMost
    win_rate: AtLeast
    gold_win_rate: AtLeast
    rouge_l_drop: AtLeast
    sft_gold_win_rate: AtLeast
    sft_rouge_l_drop: AtLeast
    human_win_rate: AtLeast = "lower"  # human.min_win_rate


class HarnessRules(Section):
    """Gate rules on evaluate.harness scores, each keyed "<task>/<metric>" (the names evaluation.json and the
    report card give them); "worse" follows lm-eval's higher_is_better for the metric."""

    minimums: dict[str, float]  # the candidate's score at least this
    maximums: dict[str, float]  # at most this (a lower-is-better metric: a perplexity)
    max_drop_vs_champion: dict[str, Annotated[float, Field(ge=0)]]  # at most this much worse than the champion's
    max_drop_vs_sft: dict[str, Annotated[float, Field(ge=0)]]  # ... than the SFT model's (skipped: not measured)
    bound: Literal["estimate", "interval"]  # interval: the bound of estimate ± z·stderr a model no better would show

    @field_validator("minimums", "maximums", "max_drop_vs_champion", "max_drop_vs_sft")
    @classmethod
    def _task_slash_metric(cls, rules: dict[str, float]) -> dict[str, float]:
        bad = [k for k in rules if not all(part.strip() for part in k.partition("/")[::2])]
        if bad:
            raise ValueError(f"keys are \"<task>/<metric>\" (e.g. arc_easy/acc_norm), got {bad}")
        return rules

    @property
    def rule_keys(self) -> dict[str, list[str]]:
        """{rule group: its "<task>/<metric>" keys}."""
        return {name: list(getattr(self, name)) for name in ("minimums", "maximums", "max_drop_vs_champion",
                                                             "max_drop_vs_sft")}


class CanaryRules(Section):
    """`lifecycle promote --from-canary`: the challenger's live numbers while it served a share of the traffic."""

    min_answers: int = Field(ge=0)  # requests it answered (its traces)
    min_compare_votes: int = Field(ge=0)  # side-by-side votes between it and the champion
    min_win_rate: float = Field(ge=0, le=1)  # its compare win rate (ties half), on the lower bound of its 95% interval
    min_ratings: int = Field(ge=0)  # thumbs on each version before max_thumbs_up_drop applies (skipped below)
    max_thumbs_up_drop: float = Field(ge=0, le=1)  # its thumbs-up share at most this below the champion's


class HumanRules(Section):
    """Rules on the human evaluation round (evaluate.human): skipped when the round is off."""

    min_win_rate: float = Field(ge=0, le=1)  # share of questions where people prefer the candidate (ties half)


class PromoteConfig(Section):
    against_champion: AgainstChampion
    against_sft: AgainstSft
    minimums: Minimums
    bounds: Bounds
    canary: CanaryRules
    harness: HarnessRules | None = None  # absent or null: no rules on harness scores
    human: HumanRules | None = None  # absent or null: no rule on the human round
