"""Standard benchmarks through lm-evaluation-harness (conf/evaluate.yaml `harness`): the tasks it names, run by
lm-eval's Hugging Face model class (HFLM) on each compared model as the evaluate stage loaded it (its local
copy, on the stage's device), with every score and its standard error kept per model beside the other
measurements (metrics.py saves them in the model's part, so a killed evaluation resumes with them).

Scores are named "<task>/<metric>" (a metric under an lm-eval filter other than `none`: "<metric>_<filter>"),
the keys of conf/promote.yaml `harness` rules (gate.py). evaluation.json `harness`:

    {"scores": {role: {"<task>/<metric>": {"value", "stderr" | null, "n" | null, "higher_is_better" | null,
                                           "interval": {"estimate", "low", "high", "n", "level"} | null}}},
     "tasks": {role: {task: {"version", "n_shot", "n"}}},
     "seconds": {role: wall time of lm-eval on that model}}

`interval` is estimate ± z·stderr at evaluate's `intervals.level` (lm-eval's stderr: the analytic one of a
mean, its own bootstrap with `intervals.resamples` otherwise).

    check_harness(cfg)                                         # before any work: names, include_path
    found = run_harness(model, tokenizer, cfg.evaluate.harness, cfg.evaluate.intervals)
    harness_metrics(evaluation["harness"])                     # {"harness/<role>/<task>/<metric>": value, ...}

lm_eval is imported inside the functions that run it: a cached run, or one with the harness off, never loads it.
"""

from __future__ import annotations

import difflib
import functools
import logging
import math
import time
from pathlib import Path
from statistics import NormalDist
from typing import TYPE_CHECKING, Any

from lifecycle.config.evaluate import HarnessConfig, Intervals
from lifecycle.config.loader import describe
from lifecycle.errors import ConfigError
from lifecycle.hashing import file_sha256, hash_json

if TYPE_CHECKING:
    from lm_eval.tasks import TaskManager
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

    from lifecycle.config import Config

log = logging.getLogger("lifecycle.evaluate")


def own_tasks(harness: HarnessConfig) -> Path | None:
    """include_path as an absolute folder (relative to the working directory), if set."""
    return Path(harness.include_path).expanduser().absolute() if harness.include_path else None


def include_folder(cfg: Config) -> Path | None:
    """evaluate.harness.include_path when the harness is on; a ConfigError naming the key if it is no folder."""
    harness = cfg.evaluate.harness
    folder = own_tasks(harness) if harness and harness.tasks else None
    if folder is not None and not folder.is_dir():
        raise ConfigError("invalid configuration:\n" + describe(
            "evaluate.harness.include_path", harness.include_path, f"not a folder ({folder})", cfg._origin))
    return folder


def folder_digest(folder: Path) -> str:
    """The content of every file under `folder` (the task YAMLs, their Python helpers, data kept beside them)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts)
    return hash_json({str(p.relative_to(folder)): file_sha256(p) for p in files})


def harness_files(cfg: Config) -> dict[str, str]:
    """The evaluate stage's key extra: include_path's content, so an edited task means a new evaluation."""
    folder = include_folder(cfg)
    return {} if folder is None else {"harness_tasks": folder_digest(folder)}


def task_manager(harness: HarnessConfig) -> TaskManager:
    """lm-eval's task index: the include_path folder alone when it holds every task named (indexing lm-eval's
    ~15,000 built-in task files takes seconds), else with the built-in tasks too (built once per process and
    folder content)."""
    include = own_tasks(harness)
    digest = folder_digest(include) if include is not None and include.is_dir() else ""
    if include is not None:
        own = _task_index(str(include), False, digest)
        if set(harness.tasks) <= set(own.all_tasks):
            return own
    return _task_index(str(include) if include else None, True, digest)


@functools.lru_cache(maxsize=4)
def _task_index(include: str | None, defaults: bool, digest: str) -> TaskManager:
    from lm_eval.tasks import TaskManager

    return TaskManager(include_path=include, include_defaults=defaults)


def check_harness(cfg: Config, scratch: Path | None = None) -> None:
    """The evaluate stage's pre-flight (`Stage.check`): every task name is one lm-eval knows (built in, or in
    include_path); else a ConfigError naming evaluate.harness.tasks, the unknown names and where they were set."""
    include = include_folder(cfg)
    harness = cfg.evaluate.harness
    if harness is None or not harness.tasks:
        return
    known = task_manager(harness).all_tasks
    unknown = [t for t in harness.tasks if t not in known]
    if unknown:
        hints = [f"{t} (did you mean {close[0]}?)" if (close := difflib.get_close_matches(t, known, n=1)) else t
                 for t in unknown]
        where = f"lm-eval's built-in tasks or {include}" if include else "lm-eval's built-in tasks (no include_path)"
        raise ConfigError("invalid configuration:\n" + describe(
            "evaluate.harness.tasks", harness.tasks, f"unknown task {', '.join(hints)}: not among {where}",
            cfg._origin))


def run_harness(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, harness: HarnessConfig,
                intervals: Intervals) -> dict[str, Any]:
    """{"scores": {"<task>/<metric>": score}, "tasks": {task: {"version", "n_shot", "n"}}, "seconds"} of one model."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM

    from lifecycle.model import context_window, evaluating

    started = time.perf_counter()
    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=harness.batch_size,
              max_length=context_window(model, tokenizer))
    with evaluating(model):
        out = lm_eval.simple_evaluate(model=lm, tasks=list(harness.tasks), num_fewshot=harness.num_fewshot,
                                      limit=harness.limit, task_manager=task_manager(harness),
                                      bootstrap_iters=intervals.resamples, log_samples=False,
                                      apply_chat_template=harness.apply_chat_template)
    found = read_results(out, intervals.level) | {"seconds": time.perf_counter() - started}
    log.info("evaluate: harness: %s", ", ".join(f"{k} {s['value']:.3f}" for k, s in found["scores"].items()))
    return found


def read_results(out: dict[str, Any], level: float) -> dict[str, Any]:
    """The scores and task facts of lm-eval's `simple_evaluate` result (its "metric,filter" keys renamed)."""
    scores, tasks = {}, {}
    for task, row in out["results"].items():
        n = (out.get("n-samples") or {}).get(task, {}).get("effective")
        if task in (out.get("n-shot") or {}):
            tasks[task] = {"version": (out.get("versions") or {}).get(task), "n_shot": out["n-shot"][task], "n": n}
        better = (out.get("higher_is_better") or {}).get(task) or {}
        for key, value in row.items():
            metric, _, kind = key.partition(",")
            if not kind or metric.endswith("_stderr") or not _number(value):
                continue
            stderr = row.get(f"{metric}_stderr,{kind}")
            stderr = float(stderr) if _number(stderr) else None
            name = f"{task}/{metric}" if kind == "none" else f"{task}/{metric}_{kind}"
            scores[name] = {"value": float(value), "stderr": stderr, "n": n, "higher_is_better": better.get(metric),
                            "interval": score_interval(float(value), stderr, n, level)}
    return {"scores": scores, "tasks": tasks}


def score_interval(value: float, stderr: float | None, n: int | None, level: float) -> dict[str, Any] | None:
    """estimate ± z·stderr (a normal interval at `level`); None without a standard error."""
    if stderr is None:
        return None
    z = NormalDist().inv_cdf((1 + level) / 2)
    return {"estimate": value, "low": value - z * stderr, "high": value + z * stderr, "n": n or 0, "level": level}


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def harness_metrics(harness: dict[str, Any]) -> dict[str, float]:
    """The evaluate run's MLflow metrics: `harness/<role>/<task>/<metric>` and its `_stderr`, and
    `harness/seconds` (lm-eval's wall time over every model)."""
    found = {"harness/seconds": sum(harness.get("seconds", {}).values())}
    for role, scores in harness["scores"].items():
        for name, score in scores.items():
            found[f"harness/{role}/{name}"] = score["value"]
            if score["stderr"] is not None:
                found[f"harness/{role}/{name}_stderr"] = score["stderr"]
    return found


def harness_lines(evaluation: dict[str, Any]) -> list[str]:
    """The report card's section: one row per "<task>/<metric>", a column per model, value ± stderr."""
    from lifecycle.evaluate.plots import format_number, table_lines

    harness = evaluation.get("harness")
    if not harness:
        return []
    roles = list(harness["scores"])
    names = list(dict.fromkeys(name for scores in harness["scores"].values() for name in scores))
    facts = harness["tasks"].get("candidate") or next(iter(harness["tasks"].values()), {})

    def cell(role: str, name: str) -> str:
        score = harness["scores"][role].get(name)
        if score is None:
            return "—"
        err = "" if score["stderr"] is None else f" ± {format_number(score['stderr'])}"
        return f"{format_number(score['value'])}{err}"

    def shots(name: str) -> str:
        task = facts.get(name.partition("/")[0])
        return "—" if task is None else f"{task['n_shot']} / {task['n'] if task['n'] is not None else '—'}"

    rows = [[f"`{name}`", *(cell(r, name) for r in roles), shots(name),
             {True: "higher", False: "lower"}.get(harness["scores"]["candidate"].get(name, {}).get("higher_is_better"),
                                                   "—")] for name in names]
    return ["## Standard benchmarks (lm-evaluation-harness)", "",
            "Each score ± its standard error (lm-eval's); n-shot / examples per task.", ""] + table_lines(
        ["task/metric", *roles, "n-shot / n", "better"], rows) + [""]
