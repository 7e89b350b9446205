"""LoRA and QLoRA for the training stages: `sft.peft`, `rlhf.reward.peft`, `rlhf.policy.peft` and `rlhf.dpo.peft`
(null: full fine-tuning). The mapping passes through to `peft.LoraConfig` (r, lora_alpha, lora_dropout,
target_modules, ...; unset target_modules: peft's choice for the architecture, q_proj/v_proj on Llama, c_attn on
GPT-2, query/value on BERT) and is checked by constructing it. `task_type` is the stage's (CAUSAL_LM; SEQ_CLS for
the reward model, whose score head is then trained in full). Two keys are ours:

- `register`: what the stage registers. `merged` (default): the adapter merged into the base, a plain model
  every loader reads. `adapter`: peft's adapter files (adapter_config.json + adapter_model.safetensors) with the
  tokenizer; adapter_config.json's `base_model_name_or_path` names the base (the registry URI of the version it
  was trained from, models:/NAME/VERSION, or an encoder's folder or hub id).
- `load_in_4bit`: QLoRA, the frozen base quantised to 4-bit NF4 by bitsandbytes (CUDA only; the `gpu` extra).

An adapter is loaded by fetching its base (`lifecycle.registry.local_copy`; a base that is an adapter itself
is merged first), loading it, applying the adapter with `PeftModel.from_pretrained` and merging. transformers'
own adapter methods are never called: they need peft >= 0.22, and 0.21.2 is the newest on the index here.

    lora = lora_settings(cfg, "sft", device="cpu")        # None: full fine-tuning; a ConfigError names a bad key
    trainer = trl.SFTTrainer(..., peft_config=lora.config if lora else None)
    model = save_trained(trainer, out_dir / "model", lora, base_dir, load_base)   # merged weights or the adapter
    point_to(adapter_dir, ref.uri)                           # the registered adapter's base: a registry version
    model = merge_adapter(base_model, adapter_dir)           # what the loaders do with an adapter folder
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lifecycle.config.loader import describe
from lifecycle.errors import ConfigError, LifecycleError

if TYPE_CHECKING:
    from peft import LoraConfig
    from transformers import PreTrainedModel

    from lifecycle.config import Config

ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
REGISTRY = "models:/"
REGISTER = ("merged", "adapter")
OURS = {"register": "merged", "load_in_4bit": False}  # our keys (default); the rest is LoraConfig's
TASK_TYPES = {"sft": "CAUSAL_LM", "rlhf.reward": "SEQ_CLS", "rlhf.policy": "CAUSAL_LM", "rlhf.dpo": "CAUSAL_LM"}


@dataclass(frozen=True)
class LoraSettings:
    config: LoraConfig
    register: str  # "merged" | "adapter"
    load_in_4bit: bool

    def quantization(self) -> Any:
        """QLoRA's base: 4-bit NF4 with double quantisation, computing in bf16 (the QLoRA paper's recipe)."""
        if not self.load_in_4bit:
            return None
        import torch
        from transformers import BitsAndBytesConfig

        return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                                  bnb_4bit_compute_dtype=torch.bfloat16)


def lora_settings(cfg: Config, section: str, device: str) -> LoraSettings | None:
    """The `<section>.peft` mapping as a LoraConfig (None: full fine-tuning), checked before any work: an unknown
    key, a value LoraConfig refuses, a `register` other than merged/adapter, or load_in_4bit where bitsandbytes
    cannot run (no CUDA GPU, `device: cpu`, bitsandbytes not installed) is a ConfigError naming the key, the value
    and the file it was set in."""
    from peft import LoraConfig

    first, *rest = section.split(".")
    node: Any = cfg.section(first)
    for part in rest:
        node = getattr(node, part)
    values: dict[str, Any] | None = node.peft
    if values is None:
        return None
    where = f"{section}.peft"

    def fail(key: str | None, what: str) -> ConfigError:
        path, value = (f"{where}.{key}", values.get(key)) if key else (where, values)
        return ConfigError("invalid configuration:\n" + describe(path, value, what, cfg._origin))

    ours = OURS | {k: values[k] for k in OURS if k in values}
    if ours["register"] not in REGISTER:
        raise fail("register", f"expected one of {', '.join(REGISTER)}: merged registers the adapter merged into its "
                               "base, adapter the adapter files with a reference to the base")
    if not isinstance(ours["load_in_4bit"], bool):
        raise fail("load_in_4bit", "expected true or false")
    if ours["load_in_4bit"] and (reason := no_qlora(device)):
        raise fail("load_in_4bit", f"QLoRA quantises the base with bitsandbytes, which needs a CUDA GPU: {reason}")
    passed = {k: v for k, v in values.items() if k not in OURS}
    fields = {f.name for f in dataclasses.fields(LoraConfig)}
    for key in passed:
        if key == "task_type":
            raise fail(key, f"set by the stage itself (to {TASK_TYPES[section]}); remove it")
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise fail(key, f"not a peft.LoraConfig option{f' (did you mean {close[0]}?)' if close else ''}")
    try:
        config = LoraConfig(**passed, task_type=TASK_TYPES[section])
    except (TypeError, ValueError) as err:  # the key the message names, else the one whose value it quotes
        message = str(err)
        key = (next((k for k in passed if re.search(rf"\b{re.escape(k)}\b", message)), None)
               or next((k for k, v in passed.items() if isinstance(v, str) and v and v in message), None))
        raise fail(key, f"peft.LoraConfig rejected it: {message}") from None
    return LoraSettings(config=config, register=ours["register"], load_in_4bit=ours["load_in_4bit"])


def no_qlora(device: str) -> str | None:
    """Why 4-bit quantisation cannot run for a stage on `device` (None: it can)."""
    import torch

    if device == "cpu":
        return "the stage's device is cpu"
    if not torch.cuda.is_available():
        return "no CUDA GPU is visible"
    if importlib.util.find_spec("bitsandbytes") is None:
        return "bitsandbytes is not installed (pip install 'llm-lifecycle[gpu]')"
    return None


def lora_tags(lora: LoraSettings | None) -> dict[str, str]:
    """The version tag of a model trained with LoRA: what it holds (merged weights or the adapter)."""
    from lifecycle.names import PEFT

    return {PEFT: lora.register} if lora is not None else {}


def trainable_share(model: PreTrainedModel) -> dict[str, float]:
    """Trainable and total parameters, and the trainable share: what LoRA leaves to the optimiser."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return {"trainable_params": float(trainable), "total_params": float(total), "trainable_share": trainable / total}


def save_trained(trainer: Any, out: Path, lora: LoraSettings | None, base_dir: Path,
                 load_base: Callable[[Path], PreTrainedModel]) -> PreTrainedModel:
    """Write the trained model to `out` (the main process) and return it as a plain model, for use in
    memory. Full fine-tuning and `register: adapter`: what the trainer holds (an adapter names `base_dir` as its
    base, until `point_to` names the registry version); `merged`: the adapter merged into its base. A 4-bit base
    is merged into a full-precision copy, `load_base(base_dir)`."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    if lora is None or lora.register == "adapter":
        trainer.save_model(str(out))  # by the main process only (under torchrun: global rank 0)
        if lora is not None and trainer.is_world_process_zero():
            point_to(out, str(base_dir))
        return merged_model(model)
    if lora.load_in_4bit:
        with tempfile.TemporaryDirectory() as tmp:
            model.save_pretrained(tmp)
            merged = merge_adapter(load_base(base_dir), Path(tmp))
    else:
        merged = merged_model(model)
    if trainer.is_world_process_zero():
        merged.save_pretrained(str(out))
    return merged


def load_for_training(path: Path, lora: LoraSettings | None) -> tuple[PreTrainedModel, Any]:
    """The causal LM a stage trains, with its tokenizer: as load_causal_lm, or with QLoRA its weights quantised
    to 4 bits on the GPU as they load."""
    from lifecycle.model import find_hf_dirs, load_causal_lm

    if lora is None or not lora.load_in_4bit:
        return load_causal_lm(path)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir, tok_dir = find_hf_dirs(Path(path))
    model = AutoModelForCausalLM.from_pretrained(str(model_dir), use_safetensors=True, **quantized(lora))
    return model, AutoTokenizer.from_pretrained(str(tok_dir))


def quantized(lora: LoraSettings | None) -> dict[str, Any]:
    """from_pretrained's arguments for QLoRA's 4-bit base (on the current GPU); none without it."""
    if lora is None or not lora.load_in_4bit:
        return {}
    import torch

    return {"quantization_config": lora.quantization(), "device_map": {"": torch.cuda.current_device()},
            "dtype": torch.bfloat16}


def merged_model(model: Any) -> PreTrainedModel:
    """The PeftModel's adapter merged into its base weights (a plain transformers model); any other model as is."""
    from peft import PeftModel

    return model.merge_and_unload() if isinstance(model, PeftModel) else model


def merge_adapter(base: PreTrainedModel, adapter_dir: Path) -> PreTrainedModel:
    """`base` with the adapter in `adapter_dir` applied through PeftModel (never transformers' own adapter
    methods) and merged, in eval mode."""
    from peft import PeftModel

    if not (Path(adapter_dir) / ADAPTER_WEIGHTS).is_file():  # peft would fall back to a pickle (torch.load)
        raise LifecycleError(f"{adapter_dir}: no {ADAPTER_WEIGHTS}; adapter weights are read from safetensors only")
    model = PeftModel.from_pretrained(base, str(adapter_dir)).merge_and_unload()
    model.eval()
    return model


def adapter_base(folder: Path) -> str | None:
    """The base an adapter folder names (its adapter_config.json's base_model_name_or_path); None: not an adapter."""
    config = Path(folder) / ADAPTER_CONFIG
    if not config.is_file():
        return None
    base = json.loads(config.read_text()).get("base_model_name_or_path")
    if not base:
        raise LifecycleError(f"{config}: names no base model (base_model_name_or_path), so the adapter cannot load")
    return str(base)


def point_to(adapter_dir: Path, base: str) -> None:
    """Make the adapter in `adapter_dir` name `base` (a registry URI, a folder or a hub id) as its base."""
    config = Path(adapter_dir) / ADAPTER_CONFIG
    data = json.loads(config.read_text())
    data["base_model_name_or_path"] = base
    tmp = config.with_name(f".{config.name}.{uuid.uuid4().hex[:8]}")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
    os.replace(tmp, config)


@contextmanager
def base_cache(models_dir: Path | None) -> Iterator[Path]:
    """Where an adapter's base is fetched: `models_dir` (the registry's local copies), else a temporary folder
    removed after loading."""
    if models_dir is not None:
        yield Path(models_dir)
        return
    with tempfile.TemporaryDirectory(prefix="lifecycle-base-") as tmp:
        yield Path(tmp)


def fetch_base(base: str, models_dir: Path) -> Path:
    """A plain model folder for an adapter's base: a registry version (models:/NAME/VERSION) fetched into
    `models_dir`, merged there when it is an adapter itself; a folder or a hub id in the local cache as is."""
    if base.startswith(REGISTRY):
        from lifecycle.registry import local_copy, resolve

        return plain_copy(local_copy(resolve(base), models_dir), models_dir)
    from lifecycle.hub import local_checkpoint

    try:
        return plain_copy(local_checkpoint(base), models_dir)
    except FileNotFoundError as err:
        raise LifecycleError(f"the adapter's base {base!r} cannot be found: {err}") from None


def plain_copy(folder: Path, models_dir: Path) -> Path:
    """`folder` when it holds a plain model; a causal-LM adapter merged into its base and saved once under
    `models_dir/.merged/<digest of the adapter's files>` (written aside, then renamed), so a trainer that reloads
    its model from its folder (TRL's reference model) finds full weights."""
    from lifecycle.hub import checkpoint_digest
    from lifecycle.model import load_causal_lm

    if adapter_base(folder) is None:
        return Path(folder)
    dest = Path(models_dir) / ".merged" / checkpoint_digest(Path(folder))[:24]
    if not dest.is_dir():
        model, tokenizer = load_causal_lm(folder, models_dir)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(f".tmp-{dest.name}-{uuid.uuid4().hex[:8]}")
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        try:
            os.replace(tmp, dest)
        except OSError:  # another process put it in place first
            if not dest.is_dir():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest
