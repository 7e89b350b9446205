"""Every name the project writes where other tools read it, in one place: MLflow run and model-version tags,
Prefect event names, and the `stage/metric` metric names. Code and tests use these constants, never the
strings (tests/unit/test_names.py checks that no other module spells a `lifecycle.` tag).

    tag_version(ref, {STAGE: "sft", STAGE_KEY: key})
    mlflow.log_metrics({metric("sft", "eval_loss"): 0.58})             # "sft/eval_loss"
"""

from __future__ import annotations

# --- a stage's MLflow run (tasks/common.py run_stage) -----------------------------------------------------
STAGE = "lifecycle.stage"  # the stage a run or a version belongs to
KEY = "lifecycle.key"  # the stage's cache key, on its run
CONFIG_HASH = "lifecycle.config_hash"  # the stage's section (on a stage run) or the whole config (parent run)
PIPELINE_CONFIG_HASH = "lifecycle.pipeline_config_hash"
INPUT = "lifecycle.input."  # + input stage or key extra: what the key took from it
CACHE_HIT = "lifecycle.cache_hit"
CACHED_FROM_RUN = "lifecycle.cached_from_run"
DEVICE = "lifecycle.device"  # "cpu" or "cuda:<GPU name>": what the report card prices a stage's time by
DEVICE_COUNT = "lifecycle.device_count"
MODEL = "lifecycle.model"  # the version a stage (or a decision) is about, NAME/VERSION
FILES_SHA256 = "lifecycle.files_sha256"  # on a version: the digest of its files as registered

# --- the pipeline's parent run (tasks/context.py, lifecycle/tracking.py, lifecycle/orphans.py) -------------
ROLE = "lifecycle.role"  # "pipeline"
PROFILE = "lifecycle.profile"
STAGES = "lifecycle.stages"  # the planned stages, comma-separated
PROCESS = "lifecycle.process"  # host:pid:start time of the process that owns a parent run
CLOSED_BY = "lifecycle.closed_by_run"  # on a run closed because its process died: the run that closed it
RESUMES_RUN = "lifecycle.resumes_run"  # killed runs of the same config this run goes on from
RESUMED = "lifecycle.resumed"  # how many times a parent run was re-attached
CANDIDATE = "lifecycle.candidate"
CHAMPION = "lifecycle.champion"

# --- a model version's lineage (what it was built from) ---------------------------------------------------
STAGE_KEY = "lifecycle.stage_key"  # the stage key a version was registered for
BASE_MODEL = "lifecycle.base_model"
PEFT = "lifecycle.peft"  # on a version trained with LoRA: "merged" (plain weights) or "adapter" (adapter files)
ADAPTER_BASE = "lifecycle.adapter_base"  # on an adapter version: the base it applies to (models:/NAME/VERSION, ...)
DATA_KEY = "lifecycle.data_key"
VALIDATION_KEY = "lifecycle.validation_key"
VALIDATION = "lifecycle.validation"  # "passed N/M" (a version), "passed"/"failed" (the validate run)
TOKENIZER_KEY = "lifecycle.tokenizer_key"
PREFERENCE_SET_HASH = "lifecycle.preference_set_hash"
SFT_DATA_HASH = "lifecycle.sft_data_hash"
SECTION_HASH = "lifecycle.{section}_config_hash"  # .format(section=...): the stage's section of the config
REWARD_MODEL = "lifecycle.reward_model"
PIPELINE_RUN_ID = "lifecycle.pipeline_run_id"
RLHF_METHOD = "lifecycle.rlhf.method"
RLHF_ALARM = "lifecycle.rlhf.alarm"  # "none" or the reasons: the promotion gate reads it
REWARD_ACCURACY = "lifecycle.reward.accuracy"
REWARD_FLAGGED = "lifecycle.reward.flagged"
INIT = "lifecycle.init"  # on a base model: pretrain.init, the checkpoint it started from (absent: from scratch)
INIT_REVISION = "lifecycle.init.revision"  # ... a hub id's resolved commit
INIT_SHA256 = "lifecycle.init.sha256"  # ... the digest of its files as read
REWARD_BASE = "lifecycle.reward.base"  # on a reward model: rlhf.reward.model ("policy": the SFT model, base_model)
REWARD_BASE_SHA256 = "lifecycle.reward.base_sha256"  # an encoder's: the digest of the checkpoint it started from
REWARD_INPUT = "lifecycle.reward.input"  # "chat" (prompt + answer, chat template) or "pair" ((answer, context))
PAIRED_MODEL = "lifecycle.paired_model"  # on a rag_index run: the model its index was paired with
RAG_INDEX_VERSION = "lifecycle.rag_index_version"  # on a version: the LanceDB table version it serves with
RAG_INDEX_KEY = "lifecycle.rag_index_key"
RAG_INDEX_TABLE = "lifecycle.rag_index_table"
EVAL = "lifecycle.eval."  # + metric, run_id, against: the evaluation a version had

# --- preferences ------------------------------------------------------------------------------------------
PREFERENCES_MODE = "lifecycle.preferences.mode"
PREFERENCES_SYNTHETIC = "lifecycle.preferences.synthetic"
PREFERENCES_MODEL = "lifecycle.preferences.model"
PREFERENCES_BATCH = "lifecycle.preferences.batch"
PREFERENCES_RESUMED_BY = "lifecycle.preferences.resumed_by"

# --- promotion decisions (lifecycle/evaluate/gate.py, promotion.py, registry.py) -------------------------
DECISION = "lifecycle.decision"  # "promoted", "refused", "promoted by hand", "rolled back",
# "promoted (canary)", "refused (canary)" (`lifecycle promote --from-canary`)
DECISION_MODE = "lifecycle.decision.mode"
DECISION_REASON = "lifecycle.decision.reason"
DECISION_BY = "lifecycle.decision.by"
DECISION_RUN_ID = "lifecycle.decision.run_id"
GATE = "lifecycle.gate."  # + rule: each rule's verdict on the version
MANUAL = "lifecycle.manual"
PREVIOUS_CHAMPION = "lifecycle.previous_champion"  # on a champion: the version it replaced ("none" first)
CHAMPION_RAG_INDEX_VERSION = "lifecycle.champion.rag_index_version"
PROMOTED_AT = "lifecycle.promoted_at"
ROLLED_BACK_TO = "lifecycle.rolled_back_to"
ROLLED_BACK_AT = "lifecycle.rolled_back_at"

# --- serving ----------------------------------------------------------------------------------------------
ALIAS = "lifecycle.alias"  # on a trace: the alias that answered ("pinned" for a pinned version)

# --- Prefect events (infra/prefect.yaml triggers on them) ------------------------------------------------
PREFERENCE_SET_EXPORTED = "lifecycle.preference-set.exported"
CHAMPION_PROMOTED = "lifecycle.champion.promoted"
PREFERENCE_SET = "lifecycle.preference-set"  # + "." + content hash: an event's resource id
MODEL_RESOURCE = "lifecycle.model"  # + "." + model name: an event's resource id
DRIFT_DETECTED = "lifecycle.drift.detected"  # lifecycle monitor: served questions drifted from the reference
FEEDBACK_DEGRADED = "lifecycle.feedback.degraded"  # lifecycle monitor: a served version's thumbs-down share
MONITOR_RESOURCE = "lifecycle.monitor"  # + "." + profile: the monitor events' resource id
COLLECT_PREFERENCES = "lifecycle.collect-preferences"  # a drift event's label: "true" asks for a preferences run


def metric(stage: str, name: str) -> str:
    """A stage's metric as MLflow shows it: `stage/name`."""
    return f"{stage}/{name}"


def section_hash(section: str) -> str:
    """The version tag holding the hash of a stage's config section (`lifecycle.sft_config_hash`)."""
    return SECTION_HASH.format(section=section)
