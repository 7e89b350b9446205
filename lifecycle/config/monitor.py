"""conf/monitor.yaml: `lifecycle monitor` (lifecycle/monitor/): the window of served requests, the reference
questions, the thresholds that emit the drift and feedback events. In no stage's cache key."""

from __future__ import annotations

from pydantic import Field

from lifecycle.config.base import Section

BELOW = ("length_ks_p_value", "retrieval_ks_p_value")  # p-values: drift below the threshold; the rest above


class MonitorReferenceConfig(Section):
    max_questions: int = Field(ge=1)  # reference questions, a stable sample
    vocabulary_chunks: int = Field(ge=0)  # index chunks whose words join the reference vocabulary


class MonitorThresholds(Section):
    """Each figure's threshold (None: measured only). p-values alarm below theirs, the others above."""

    length_ks_p_value: float | None = Field(gt=0, lt=1)
    oov_share: float | None = Field(ge=0, le=1)
    vocabulary_js: float | None = Field(ge=0, le=1)
    embedding_distance: float | None = Field(ge=0, le=2)
    retrieval_ks_p_value: float | None = Field(gt=0, lt=1)
    low_score_share: float | None = Field(ge=0, le=1)


class MonitorFeedbackConfig(Section):
    min_ratings: int = Field(ge=1)  # a version with fewer thumbs is not judged
    max_negative_share: float = Field(ge=0, le=1)  # Wilson lower bound of its thumbs-down share above this: degraded


class CollectPreferencesConfig(Section):
    enabled: bool  # the drift event asks for a collect-preferences run on the drifted questions
    max_prompts: int = Field(ge=1)


class MonitorConfig(Section):
    window_hours: float = Field(gt=0)
    min_requests: int = Field(ge=1)
    reference: MonitorReferenceConfig
    low_score: float = Field(ge=-1, le=1)  # cosine similarity of a question's best chunk
    novel_similarity: float = Field(ge=-1, le=1)  # cosine similarity to the nearest reference question
    thresholds: MonitorThresholds
    feedback: MonitorFeedbackConfig
    collect_preferences: CollectPreferencesConfig
