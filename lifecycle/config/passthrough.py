"""Sections that configure a third-party trainer (TRL's `SFTConfig`, `RewardConfig`, `RLOOConfig`,
`GRPOConfig`, `DPOConfig`) pass through as mappings: they are checked by constructing the trainer's own
config, and its complaint is reported with the key, the value and the file it came from.

    args = trainer_config(trl.SFTConfig, cfg, "sft", device="cpu", forced={"output_dir": "ckpt", ...})
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import sys
from typing import TYPE_CHECKING, Any

from lifecycle.config.loader import describe
from lifecycle.errors import ConfigError

if TYPE_CHECKING:
    from lifecycle.config import Config


def device_defaults(device: str) -> dict[str, Any]:
    """What a trainer needs to run where `device` resolves: TRL's defaults (bf16, activation
    checkpointing) refuse to start on a CPU and are slow there. Keys in the section win."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but no CUDA GPU is visible; use device: auto or cpu")
    if device == "cpu" or (device == "auto" and not torch.cuda.is_available()):
        return {"use_cpu": True, "bf16": False, "fp16": False, "activation_checkpointing": False}
    return {"bf16": torch.cuda.is_bf16_supported(), "activation_checkpointing": False}


def trainer_config(cls: type, cfg: Config, section: str, device: str, forced: dict[str, Any],
                   defaults: dict[str, Any] | None = None) -> Any:
    """`cls(**defaults, **cfg.<section>.trainer, **forced)` (or the mapping at a dotted `section` path, e.g.
    "rlhf.policy.rloo"); a bad key or value is a ConfigError naming its path, value and file. `forced`
    keys belong to the stage."""
    first, *rest = section.split(".")  # a section ("sft") or a path to a trainer mapping ("rlhf.policy.rloo")
    node: Any = cfg.section(first)
    for part in rest:
        node = getattr(node, part)
    values: dict[str, Any] = node if isinstance(node, dict) else node.trainer
    where = section if isinstance(node, dict) else f"{section}.trainer"

    def fail(key: str | None, what: str) -> ConfigError:
        path = f"{where}.{key}" if key else where
        value = values.get(key) if key else values
        return ConfigError("invalid configuration:\n" + describe(path, value, what, cfg._origin))

    for key in sorted(set(values) & set(forced)):
        raise fail(key, f"set by the {first} stage itself (to {forced[key]!r}); remove it")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            raise fail(key, f"not a {cls.__name__} option{f' (did you mean {close[0]}?)' if close else ''}")
        expected = _simple_type(fields[key])
        if expected and not _fits(value, expected):
            raise fail(key, f"expected {'true or false' if expected is bool else 'a number'} for "
                            f"{cls.__name__}.{key}")
    try:
        return cls(**{**device_defaults(device), "disable_tqdm": not sys.stderr.isatty(), **(defaults or {}),
                      **values, **forced})
    except (TypeError, ValueError) as err:  # which key: the one the message names, else the one whose value it quotes
        message = str(err)
        key = (next((k for k in values if re.search(rf"\b{re.escape(k)}\b", message)), None)
               or next((k for k, v in values.items() if isinstance(v, str) and v and v in message), None))
        raise fail(key, f"{cls.__name__} rejected it: {message}") from None


def _simple_type(field: dataclasses.Field) -> type | None:
    default = field.default
    return type(default) if type(default) in (bool, int, float) else None


def _fits(value: Any, expected: type) -> bool:
    """Only clear mistakes: a flag that is not true/false, a number that is not a number."""
    if expected is bool:
        return isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)
