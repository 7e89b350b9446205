"""The alignment commands of `lifecycle`:

    lifecycle eval-reward --pairs FILE [--model NAME/VERSION|NAME@ALIAS|FOLDER]   # JSON: accuracy vs baseline

`--pairs` is any file the preference import reads (TRL prompt/chosen/rejected with strings or message
lists, Anthropic HH-RLHF transcripts; .jsonl, .json, .parquet). The default model is the reward model the
chat model @candidate (the last pipeline run's) was optimised against.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lifecycle import names
from lifecycle.errors import LifecycleError


def add_parsers(sub: argparse._SubParsersAction, config_args: Callable[..., None]) -> None:
    ev = sub.add_parser("eval-reward", help="pairwise accuracy of a reward model on a preference file, next to the "
                                            "longer-answer-wins baseline (JSON)")
    config_args(ev, with_sources=False)
    ev.add_argument("--pairs", required=True, metavar="FILE", help="TRL preference or HH-RLHF file")
    ev.add_argument("--model", help="reward model: NAME/VERSION, NAME@ALIAS or a folder (default: the reward model "
                                    "of the chat model @candidate)")
    ev.add_argument("--batch-size", type=int, default=32)


def cmd_eval_reward(args: argparse.Namespace, load: Callable[[argparse.Namespace], Any]) -> int:
    from lifecycle.preferences.export import pairs_to_rows
    from lifecycle.preferences.importers import read_preference_file
    from lifecycle.runtime import quiet_environment, resolve_state_dir

    cfg = load(args)
    quiet_environment()
    pairs, refused = read_preference_file(Path(args.pairs).expanduser())
    for line in refused[:10]:
        print(f"refused: {line}", file=sys.stderr)
    folder, label = reward_folder(args.model, cfg, resolve_state_dir(args.state_dir, cfg.run.state_dir))
    from lifecycle.align.reward import evaluate_reward

    result = evaluate_reward(folder, pairs_to_rows(pairs), batch_size=args.batch_size)
    print(json.dumps({"model": label, "file": str(args.pairs), "refused_rows": len(refused), **result}, indent=2))
    return 0


def reward_folder(model: str | None, cfg: Any, state_dir: Path) -> tuple[Path, str]:
    """(a folder holding the reward model and its tokenizer, a label)."""
    from lifecycle.registry import CANDIDATE, get_alias, local_copy, resolve, version_tags
    from lifecycle.tracking import use_tracking

    if model and Path(model).expanduser().is_dir():
        return Path(model).expanduser(), model
    if not (Path(state_dir) / "mlflow" / "mlflow.db").is_file():
        raise LifecycleError(f"no registry in {state_dir}: pass --model with a folder, or run the pipeline through "
                             "rlhf first")
    use_tracking(Path(state_dir))
    if model:
        ref = resolve(model)
    else:
        chat = get_alias(cfg.run.models.chat, CANDIDATE)
        tag = version_tags(chat).get(names.REWARD_MODEL) if chat else None
        if not tag:
            raise LifecycleError(f"{cfg.run.models.chat}@{CANDIDATE} has no reward model (run the pipeline through "
                                 "rlhf with method rloo or grpo), or pass --model")
        ref = resolve(tag)
    return local_copy(ref, Path(state_dir) / "models"), str(ref)


HANDLERS = {"eval-reward": cmd_eval_reward}
