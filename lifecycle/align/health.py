"""RLHF health: what a policy run looked like step by step, and the reward-hacking alarm.

A policy that learns to please its reward model can do it honestly, or by drifting far from the SFT model
(KL to the reference runs away) or by padding its answers (length grows, and reward tracks length). The
`HealthMonitor` callback records, per logged step, what TRL's RLOO/GRPO trainers log (`reward`, `kl`,
`completions/mean_length`, `entropy`) plus the correlation of reward with completion length, which
`LengthTracker` measures by wrapping the reward functions. `assess` turns the history into a verdict, with the
proxy vs gold curve of `lifecycle.align.gold.GoldMonitor` where there is one: proxy reward rising on held-out
prompts while the gold judge falls there is over-optimisation of the reward model, an alarm of its own.

    tracker = LengthTracker()
    monitor = HealthMonitor(tracker, on_metrics=hook)                 # hook({"rlhf/health/kl": ...}, step)
    trainer = trl.RLOOTrainer(..., reward_funcs=tracker.wrap(funcs), callbacks=[monitor])
    report = assess(monitor.history, cfg.rlhf.health, gold.history, cfg.rlhf.gold, notes)  # gold: a GoldMonitor
    report.alarm, report.reasons, report.markdown()                   # the markdown: a Prefect artifact
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
from transformers import TrainerCallback

from lifecycle.align.callbacks import MetricsHook
from lifecycle.align.gold import GoldPoint
from lifecycle.config.rlhf import GoldConfig, HealthConfig

log = logging.getLogger("lifecycle.rlhf.health")
RewardFunc = Callable[..., list[float | None]]
NAN = float("nan")
# what TRL 1.16's RLOOTrainer and GRPOTrainer log per step -> our names (kl only when beta > 0)
TRL_KEYS = {"reward": "reward", "kl": "kl", "completions/mean_length": "length", "entropy": "entropy"}
CORR_KEY = "health/reward_length_corr"  # added to the trainer's log history, so it survives a resume


@dataclass(frozen=True)
class HealthPoint:
    step: int
    reward: float
    kl: float = NAN
    length: float = NAN
    entropy: float = NAN
    reward_length_corr: float = NAN  # Pearson, over the completions scored since the previous logged step


@dataclass(frozen=True)
class HealthReport:
    alarm: bool
    reasons: list[str]
    summary: dict[str, float]
    bounds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what the gold curve is, or why there is none

    def markdown(self) -> str:
        """A short table a person reads: the verdict, then each number with its bound, then the notes."""
        s, b = self.summary, self.bounds

        def n(value: float, spec: str = ".4g") -> str:
            return "–" if value is None or math.isnan(value) else format(value, spec)

        rows = []
        if s["logged_steps"] or not s.get("gold_points"):
            rows += [("reward (first -> last quarter)", f"{n(s['reward_first'])} -> {n(s['reward_last'])}",
                      f"rises when > +{n(b.get('min_reward_rise', NAN), '.3g')}"),
                     ("KL to reference (max / last quarter)", f"{n(s['kl_max'])} / {n(s['kl_last'])}",
                      f"<= {n(b.get('max_kl', NAN))}"),
                     ("completion length (first -> last quarter)", f"{n(s['length_first'])} -> "
                      f"{n(s['length_last'])} (x{n(s['length_growth'], '.3g')})",
                      f"<= x{n(b.get('max_length_growth', NAN), '.3g')}"),
                     ("reward-length correlation (last step)", n(s["reward_length_corr"], ".3g"), ""),
                     ("mean entropy", n(s["entropy_mean"]), ""),
                     ("logged steps", f"{s['logged_steps']:.0f}", "")]
        if s.get("gold_points"):
            rows += [("held-out proxy reward (first -> last)", f"{n(s['proxy_first'])} -> {n(s['proxy_last'])}",
                      f"rises when > +{n(b.get('min_proxy_rise', NAN), '.3g')}"),
                     ("held-out gold judge, ROUGE-L (first -> last)", f"{n(s['gold_first'])} -> {n(s['gold_last'])}",
                      f"falls when < -{n(b.get('min_gold_fall', NAN), '.3g')}: alarm if the proxy rises"),
                     ("held-out KL to reference (max / last)", f"{n(s['gold_kl_max'])} / {n(s['gold_kl_last'])}",
                      f"<= {n(b.get('max_kl', NAN))}"),
                     ("gold measurements", f"{s['gold_points']:.0f}", "")]
        head = ("**Reward hacking alarm**: " + "; ".join(self.reasons) if self.alarm
                else "**Healthy**: no alarm" if s["logged_steps"] or s.get("gold_points")
                else "**No training steps were logged**")
        lines = [head, "", "| metric | value | bound |", "|---|---|---|"]
        lines += [f"| {name} | {value} | {bound} |" for name, value, bound in rows]
        return "\n".join(lines + ([""] + [f"- {note}" for note in self.notes] if self.notes else [])) + "\n"


def pearson(x: Sequence[float], y: Sequence[float]) -> float:
    """Pearson correlation; NaN when there are fewer than two points or either side is constant."""
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(a) < 2 or a.std() == 0 or b.std() == 0:
        return NAN
    return float(np.corrcoef(a, b)[0, 1])


class LengthTracker:
    """Wraps reward functions so every scored completion's total reward (weighted sum over the functions)
    and token length are recorded; `drain()` hands over what was scored since the last call."""

    def __init__(self, weights: Sequence[float] | None = None) -> None:
        self.weights = list(weights) if weights else None
        self._rewards: list[float] = []
        self._lengths: list[int] = []
        self._batch: np.ndarray | None = None  # the current generation batch's running weighted sum

    def wrap(self, funcs: Sequence[RewardFunc]) -> list[RewardFunc]:
        weights = self.weights or [1.0] * len(funcs)
        return [self._wrap(f, i, len(funcs), weights[i]) for i, f in enumerate(funcs)]

    def _wrap(self, func: RewardFunc, index: int, count: int, weight: float) -> RewardFunc:
        def scored(completions: list[Any], completion_ids: list[list[int]], **kwargs: Any) -> list[float | None]:
            rewards = func(completions=completions, completion_ids=completion_ids, **kwargs)
            values = np.array([NAN if r is None else float(r) for r in rewards])
            # TRL calls the functions in order on one batch: the first starts it, the last completes it
            self._batch = weight * values if index == 0 or self._batch is None else self._batch + weight * values
            if index == count - 1:
                self._rewards += self._batch.tolist()
                self._lengths += [len(ids) for ids in completion_ids]
                self._batch = None
            return rewards

        scored.__name__ = getattr(func, "__name__", type(func).__name__)  # TRL names the reward/<name>/mean logs
        return scored

    def drain(self) -> tuple[list[float], list[int]]:
        rewards, lengths = self._rewards, self._lengths
        self._rewards, self._lengths = [], []
        keep = [i for i, r in enumerate(rewards) if not math.isnan(r)]
        return [rewards[i] for i in keep], [lengths[i] for i in keep]


def point_from_log(logs: dict[str, Any], step: int) -> HealthPoint | None:
    """A HealthPoint from one training log entry of TRL's RLOO/GRPO trainers (None for other entries)."""
    if not isinstance(logs.get("reward"), (int, float)):
        return None
    values = {ours: float(logs[theirs]) if isinstance(logs.get(theirs), (int, float)) else NAN
              for theirs, ours in TRL_KEYS.items()}
    corr = logs.get(CORR_KEY)
    return HealthPoint(step=step, reward_length_corr=float(corr) if corr is not None else NAN, **values)


class HealthMonitor(TrainerCallback):
    """Records a HealthPoint per logged training step (restoring earlier ones from the trainer's log history
    on a resume) and forwards `<prefix>/<name>` metrics to `on_metrics(dict, step)`."""

    def __init__(self, tracker: LengthTracker | None = None, on_metrics: MetricsHook | None = None,
                 prefix: str = "rlhf/health") -> None:
        self.tracker = tracker
        self.on_metrics = on_metrics
        self.prefix = prefix
        self.history: list[HealthPoint] = []

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        # a resumed run's state holds the log history up to its checkpoint
        self.history = [p for entry in state.log_history
                        if (p := point_from_log(entry, int(entry.get("step", 0)))) is not None]
        if self.tracker:
            self.tracker.drain()

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None, **kwargs: Any) -> None:
        logs = logs or {}
        if "reward" not in logs:
            return
        if self.tracker:
            corr = pearson(*self.tracker.drain())
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1][CORR_KEY] = corr  # saved with the checkpoint: a resumed run keeps it
            logs = {**logs, CORR_KEY: corr}
        point = point_from_log(logs, state.global_step)
        if point is None:
            return
        self.history.append(point)
        if self.on_metrics and state.is_world_process_zero:
            numbers = {f"{self.prefix}/{k}": v for k, v in asdict(point).items() if k != "step" and not math.isnan(v)}
            self.on_metrics(numbers, state.global_step)


def _mean(values: Sequence[float]) -> float:
    finite = [v for v in values if not math.isnan(v)]
    return float(np.mean(finite)) if finite else NAN


def summarize(history: Sequence[HealthPoint]) -> dict[str, float]:
    """first/last: means over the first and last quarter of the logged steps (one step is noisy)."""
    q = max(1, len(history) // 4)
    first, last = history[:q], history[-q:]

    def quarter(points: Sequence[HealthPoint], name: str) -> float:
        return _mean([getattr(p, name) for p in points])

    kls = [p.kl for p in history if not math.isnan(p.kl)]
    corrs = [p.reward_length_corr for p in history if not math.isnan(p.reward_length_corr)]
    length_first, length_last = quarter(first, "length"), quarter(last, "length")
    return {"logged_steps": float(len(history)),
            "reward_first": quarter(first, "reward"), "reward_last": quarter(last, "reward"),
            "kl_max": max(kls) if kls else NAN, "kl_last": quarter(last, "kl"),
            "length_first": length_first, "length_last": length_last,
            "length_growth": length_last / length_first if length_first > 0 else NAN,
            "reward_length_corr": corrs[-1] if corrs else NAN,
            "entropy_mean": _mean([p.entropy for p in history])}


def summarize_gold(points: Sequence[GoldPoint]) -> dict[str, float]:
    """first/last: the first (step 0, before any update) and the last measurement; greedy answers make each
    point deterministic, so no averaging."""
    first, last = (points[0], points[-1]) if points else (None, None)

    def at(point: GoldPoint | None, name: str) -> float:
        return NAN if point is None else float(getattr(point, name))

    kls = [p.kl for p in points if not math.isnan(p.kl)]
    return {"gold_points": float(len(points)), "proxy_first": at(first, "proxy"), "proxy_last": at(last, "proxy"),
            "gold_first": at(first, "gold"), "gold_last": at(last, "gold"),
            "gold_kl_max": max(kls) if kls else NAN, "gold_kl_last": at(last, "kl")}


def assess(history: Sequence[HealthPoint], bounds: HealthConfig, gold: Sequence[GoldPoint] = (),
           gold_bounds: GoldConfig | None = None, notes: Sequence[str] = ()) -> HealthReport:
    """Alarm when reward rises (last-quarter mean > first-quarter mean + min_reward_rise) while the KL to
    the reference exceeds max_kl at any logged step, or completions grow beyond max_length_growth x; and,
    with a gold curve (held-out prompts, `gold_bounds`), when the proxy rises by more than min_proxy_rise
    while gold falls by more than min_gold_fall (over-optimisation). A run without a training history of
    reward and KL (DPO) has its KL leash checked on the gold curve: proxy up while the measured KL > max_kl."""
    s = summarize(history) | summarize_gold(gold)
    rise = s["reward_last"] - s["reward_first"]
    reasons: list[str] = []
    if rise > bounds.min_reward_rise:
        if s["kl_max"] > bounds.max_kl:
            reasons.append(f"reward rose by {rise:.3g} while KL to the reference reached {s['kl_max']:.3g} "
                           f"(max_kl {bounds.max_kl:g})")
        if s["length_growth"] > bounds.max_length_growth:
            reasons.append(f"reward rose by {rise:.3g} while mean completion length grew x{s['length_growth']:.3g}"
                           f" ({s['length_first']:.3g} -> {s['length_last']:.3g} tokens; max_length_growth "
                           f"{bounds.max_length_growth:g})")
    proxy_rise, gold_fall = s["proxy_last"] - s["proxy_first"], s["gold_first"] - s["gold_last"]
    if gold_bounds is not None and len(gold) > 1 and proxy_rise > gold_bounds.min_proxy_rise:
        if gold_fall > gold_bounds.min_gold_fall:
            reasons.append(f"over-optimisation: on held-out prompts the proxy reward rose by {proxy_rise:.3g} "
                           f"({s['proxy_first']:.3g} -> {s['proxy_last']:.3g}) while the gold judge fell by "
                           f"{gold_fall:.3g} ({s['gold_first']:.3g} -> {s['gold_last']:.3g}; min_proxy_rise "
                           f"{gold_bounds.min_proxy_rise:g}, min_gold_fall {gold_bounds.min_gold_fall:g})")
        if math.isnan(s["kl_max"]) and s["gold_kl_max"] > bounds.max_kl:
            reasons.append(f"proxy reward rose by {proxy_rise:.3g} on held-out prompts while KL to the reference "
                           f"there reached {s['gold_kl_max']:.3g} (max_kl {bounds.max_kl:g})")
    for reason in reasons:
        log.warning("rlhf health: %s", reason)
    bound_values = bounds.model_dump() | ({"min_proxy_rise": gold_bounds.min_proxy_rise,
                                           "min_gold_fall": gold_bounds.min_gold_fall} if gold_bounds else {})
    return HealthReport(alarm=bool(reasons), reasons=reasons, summary=s, bounds=bound_values, notes=list(notes))
