"""One typed, validated configuration for every stage.

Values live in conf/<section>.yaml (one file per section); a profile (conf/profiles/<name>.yaml) is an
overlay that holds only the keys it changes; `--set a.b=c` overrides win over both. Unknown keys are
rejected, and every error names the key path, the value seen, what was expected and the file it came from.

    cfg = load_config(Path("conf"), profile="quickstart", overrides=["tokenize.vocab_size=512"])
"""

from __future__ import annotations

import hashlib
import json
import os
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


class ModelArchConfig(Section):
    """The decoder-only transformer, built from config by lifecycle/model.py."""

    arch: Literal["llama", "gpt2"]
    n_layer: int = Field(ge=1)
    n_head: int = Field(ge=1)
    n_kv_head: int = Field(ge=1)  # llama: key/value heads (grouped-query attention); gpt2 ignores it
    d_model: int = Field(ge=8)
    d_ff: int = Field(ge=8)  # MLP hidden size
    dropout: float = Field(ge=0, lt=1)
    tie_embeddings: bool
    rope_theta: float = Field(gt=0)  # llama only
    init_std: float = Field(gt=0)

    @model_validator(mode="after")
    def _heads_divide(self) -> ModelArchConfig:
        if self.d_model % self.n_head:
            raise ValueError(f"d_model={self.d_model} must be a multiple of n_head={self.n_head}")
        if self.n_head % self.n_kv_head:
            raise ValueError(f"n_head={self.n_head} must be a multiple of n_kv_head={self.n_kv_head}")
        return self


class OptimConfig(Section):
    lr: float = Field(gt=0)  # peak learning rate, after warmup
    min_lr_ratio: float = Field(ge=0, le=1)  # cosine decays to lr * min_lr_ratio at max_steps
    warmup_steps: int = Field(ge=0)
    weight_decay: float = Field(ge=0)  # on matrices only; norms, biases and embeddings get none
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    eps: float = Field(gt=0)
    grad_clip: float = Field(ge=0)  # max global grad norm; 0 = no clipping


class SampleConfig(Section):
    prompts: list[str]  # greedy continuations logged at every evaluation (empty: none)
    max_new_tokens: int = Field(ge=1)


class DistributedConfig(Section):
    nproc: int = Field(ge=1)  # processes on this node; > 1 launches torchrun
    strategy: Literal["ddp", "fsdp"]
    backend: Literal["auto", "nccl", "gloo"]  # auto: nccl on CUDA, gloo on CPU


class PretrainConfig(Section):
    model: ModelArchConfig
    optim: OptimConfig
    sample: SampleConfig
    distributed: DistributedConfig
    max_steps: int = Field(ge=1)
    batch_size: int = Field(ge=1)  # sequences per optimizer step, all processes together
    micro_batch_size: int = Field(ge=1)  # sequences per forward/backward in one process
    eval_every: int = Field(ge=0)  # steps; 0 = only at the end
    eval_batches: int | None = Field(ge=1)  # micro-batches per evaluation; null = the whole validation split
    log_every: int = Field(ge=1)
    checkpoint_every: int = Field(ge=0)  # steps; 0 = never (no resume)
    keep_checkpoints: int = Field(ge=1)
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "fp32", "bf16"]  # auto: bf16 autocast on CUDA, fp32 on CPU
    compile: Literal["auto"] | bool  # auto: torch.compile on CUDA only
    num_threads: int | None = Field(ge=1)  # CPU threads per process; null = torch's default
    deterministic: bool  # torch.use_deterministic_algorithms (bit-exact resume on CPU)
    peak_flops: float | None = Field(gt=0)  # per device, for MFU; null = detect (lifecycle/train/flops.py)

    @model_validator(mode="after")
    def _batch_divides(self) -> PretrainConfig:
        per_step = self.micro_batch_size * self.distributed.nproc
        if self.batch_size % per_step:
            raise ValueError(f"batch_size={self.batch_size} must be a multiple of micro_batch_size x "
                             f"distributed.nproc = {self.micro_batch_size} x {self.distributed.nproc}")
        return self


class RagChunkConfig(Section):
    unit: Literal["tokens", "characters"]  # tokens: of the embedding model's tokenizer
    size: int = Field(ge=16)  # tokens: keep under the model's max_seq_length (256 for MiniLM) minus the title
    overlap: int = Field(ge=0)
    title_prefix: bool  # embed and full-text index "title\ntext" when the chunk does not start with its title

    @model_validator(mode="after")
    def _overlap_below_size(self) -> RagChunkConfig:
        if self.overlap >= self.size:
            raise ValueError(f"overlap={self.overlap} must be smaller than size={self.size}")
        return self


class RagEmbedConfig(Section):
    model: str = Field(min_length=1)  # sentence-transformers model: a local folder or a name
    device: Literal["auto", "cpu", "cuda"]
    dtype: Literal["auto", "float32", "bfloat16"]  # auto: bfloat16 on GPUs and CPUs with native bf16 (AMX, AVX512-BF16)
    batch_size: int = Field(ge=1)  # most texts per forward pass
    max_batch_tokens: int = Field(ge=16)  # most padded tokens per forward pass (texts are length-sorted)
    threads: int = Field(ge=0)  # torch CPU threads; 0 = all cores


class RagAnnConfig(Section):
    kind: Literal["ivf_pq", "ivf_flat", "hnsw_sq"]
    min_rows: int = Field(ge=0)  # smaller tables get no ANN index: exact search is as fast there
    partitions_per_sqrt_rows: float = Field(gt=0)  # num_partitions = round(this * sqrt(rows))
    num_sub_vectors: int = Field(ge=1)  # ivf_pq: must divide the embedding dimension
    nprobes: int = Field(ge=1)
    refine_factor: int | None = Field(ge=1)  # re-rank nprobes' candidates x this with exact distances


class RagSearchConfig(Section):
    mode: Literal["dense", "fts", "hybrid"]
    top_k: int = Field(ge=1)
    rrf_k: int = Field(ge=1)  # reciprocal-rank fusion constant: score = sum 1 / (rrf_k + rank)
    query_threads: int = Field(ge=0)  # torch CPU threads to embed one query (0: embed.threads)


class RagEvalConfig(Section):
    max_questions: int = Field(ge=0)  # python-docs objects asked about (0: no evaluation in the stage)
    ks: list[int] = Field(min_length=1)
    question_template: str = Field(pattern=r"\{object\}")


class RagAnswerConfig(Section):
    top_k: int = Field(ge=1)  # chunks retrieved; as many as fit the model's context are used
    max_new_tokens: int = Field(ge=1)
    system_prompt: str = Field(min_length=1)


class RagIndexConfig(Section):
    table: str = Field(pattern=r"^[A-Za-z0-9_-]+$")  # LanceDB table under <state_dir>/rag/lancedb
    chunk: RagChunkConfig
    embed: RagEmbedConfig
    ann: RagAnnConfig
    search: RagSearchConfig
    evaluate: RagEvalConfig
    answer: RagAnswerConfig


class Config(Section):
    run: RunConfig
    ingest: IngestConfig
    validate_: ValidateConfig = Field(alias="validate")
    tokenize: TokenizeConfig
    pretrain: PretrainConfig
    rag_index: RagIndexConfig

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


def find_conf_dir(value: str | Path | None = None) -> Path:
    """--conf, then LIFECYCLE_CONF, then ./conf, then the conf/ beside this package (a source checkout)."""
    for candidate in (value, os.environ.get("LIFECYCLE_CONF"), "conf", Path(__file__).resolve().parents[1] / "conf"):
        if candidate and Path(candidate).is_dir():
            return Path(candidate)
    raise ConfigError(f"configuration folder not found (tried --conf {value!r}, LIFECYCLE_CONF, ./conf)")


def load_config(conf_dir: Path, profile: str | None = None, overrides: list[str] | None = None,
                sources: list[str] | None = None) -> Config:
    """Read conf/<section>.yaml, overlay the profile, then `--set` overrides, then `--source` paths
    (which replace ingest.sources: 'python-docs' or a file/dir/glob each); validate it all."""
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
        deep_merge(data, overlay)
        _record(origin, "", overlay, str(path))
    for item in overrides or []:
        key, value = _parse_override(item)
        _set_path(data, key, value)
        origin[key] = f"--set {item}"
    if sources:
        data["ingest"]["sources"] = [
            {"name": "python-docs", "kind": "python-docs"} if s == "python-docs" else
            {"name": f"cli-{i}", "kind": "files", "paths": [s]} for i, s in enumerate(sources, 1)]
        origin["ingest.sources"] = "--source"
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


def deep_merge(base: dict[str, Any], overlay: dict[str, Any]) -> None:
    """Overlay nested mappings onto `base` in place (how profiles apply)."""
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_merge(base[key], value)
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
