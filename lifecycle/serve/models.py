"""What the server answers with: the chat model version an alias points at (or a pinned version), loaded
with the RAG index it was paired with, and a poller that follows alias moves.

    models = ServedModels(state_dir, "lifecycle-gpt", cfg.serve, primary="lifecycle-gpt@champion")
    models.load()                        # LifecycleError when the alias points nowhere
    served = models.lookup("lifecycle-gpt@challenger")   # or NAME, NAME@champion, NAME/VERSION
    models.start_polling(10.0)           # a thread: a moved alias is loaded fully, then swapped in

A reload never makes a request wait: the new version is loaded beside the old one and swapped in under a
lock; requests that already hold the old `Served` finish with it, later ones get the new one. A failed
load is logged and retried on the next poll, the old version serving meanwhile.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from lifecycle.config.serve import ServeConfig
from lifecycle.errors import LifecycleError
from lifecycle.registry import CHALLENGER, CHAMPION, ModelRef, get_alias, local_copy, resolve

log = logging.getLogger("lifecycle.serve")


@dataclass
class Served:
    """One loaded model version with its retriever. `lock` serialises generation on it (one CPU model)."""

    ref: ModelRef
    alias: str  # the alias it is served under ("" for a pinned version)
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    retriever: Any  # lifecycle.rag.search.Retriever
    index: dict[str, Any]  # the index.json it was paired with (or the current index)
    created: int  # the version's registration time, seconds
    loaded_at: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def served_as(self) -> str:
        """The alias it answers under, "pinned" for a pinned version (traces, headers, metrics)."""
        return self.alias or "pinned"

    @property
    def label(self) -> str:
        return f"{self.ref.name}@{self.alias}" if self.alias else str(self.ref)

    def describe(self) -> dict[str, Any]:
        return {"model": str(self.ref), "version": self.ref.version, "alias": self.alias or None,
                "loaded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.loaded_at)),
                "rag_index": {"table": self.index.get("table"), "version": self.index.get("version"),
                              "key": self.index.get("key"), "uri": self.index.get("uri")}}


def _created(ref: ModelRef) -> int:
    from mlflow.tracking import MlflowClient

    return int(MlflowClient().get_model_version(ref.name, ref.version).creation_timestamp // 1000)


def load_served(ref: ModelRef, alias: str, state_dir: Path, cfg: ServeConfig,
                retrievers: dict[str, Any] | None = None) -> Served:
    """Fetch and load `ref` with the index it was paired with (else the current index, with a warning);
    a retriever in `retrievers` for the same table version is reused."""
    from lifecycle.model import load_causal_lm
    from lifecycle.rag.pairing import paired_index
    from lifecycle.rag.search import open_index, read_current

    index = paired_index(state_dir, ref)
    if index is None:
        log.warning("%s was never paired with a RAG index: serving it with the current index", ref)
        index = read_current(state_dir)
    models = Path(state_dir) / "models"
    model, tokenizer = load_causal_lm(local_copy(ref, models), models)  # an adapter: its base fetched there too
    if not getattr(tokenizer, "chat_template", None):
        raise LifecycleError(f"{ref}: its tokenizer has no chat template, so it cannot be served as a chat model")
    model.eval()
    key = f"{index['uri']}#{index['table']}@{index['version']}"
    retriever = (retrievers or {}).get(key) or open_index(index, cfg.search)
    return Served(ref, alias, model, tokenizer, retriever, index, _created(ref))


class ServedModels:
    """The primary model (an alias to follow, or a pinned version) and, optionally, the challenger."""

    def __init__(self, state_dir: Path, name: str, cfg: ServeConfig, primary: str | None = None) -> None:
        self.state_dir, self.name, self.cfg = Path(state_dir), name, cfg
        self.primary = primary or f"{name}@{CHAMPION}"
        head, _, alias = self.primary.partition("@")
        self.follow = alias or ""  # "" : a pinned NAME/VERSION, never reloaded
        if self.follow:
            self.name = head.removeprefix("models:/")
        self._served: dict[str, Served] = {}  # "primary" | "challenger"
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.last_error: str | None = None
        self.on_event: Callable[[str, str], None] = lambda slot, event: None  # (slot, load | drop | reload_failed)

    # what is served
    def get(self, slot: str) -> Served | None:
        with self._lock:
            return self._served.get(slot)

    def all(self) -> dict[str, Served]:
        with self._lock:
            return dict(self._served)

    def lookup(self, model_id: str | None) -> Served:
        """The served model a request names: NAME, NAME@ALIAS or NAME/VERSION of a version being served."""
        served = self.all()
        primary = served["primary"]
        if not model_id or model_id in (primary.ref.name, f"models:/{primary.ref.name}"):
            return primary
        for s in served.values():
            spec = model_id.removeprefix("models:/")
            if spec in (str(s.ref), s.label):
                return s
        names = ", ".join(sorted(m for s in served.values() for m in (s.label, str(s.ref))))
        raise KeyError(f"model {model_id!r} is not served here; served: {primary.ref.name}, {names}")

    def route(self, model_id: str | None, sticky: str, challenger_share: float) -> Served:
        """The version to answer a request: the one it names; a request that names none (or the bare NAME) goes
        to the challenger if `sticky` (who asks) hashes below `challenger_share`, with the challenger's version
        in the hash (the same user, the same version, until the challenger changes)."""
        served = self.all()
        primary, challenger = served["primary"], served.get("challenger")
        if model_id and model_id not in (primary.ref.name, f"models:/{primary.ref.name}"):
            return self.lookup(model_id)
        if challenger is not None and challenger_share > 0:
            draw = hashlib.sha256(f"{challenger.ref}|{sticky}".encode()).digest()
            if int.from_bytes(draw[:8], "big") / 2**64 < challenger_share:
                return challenger
        return primary

    # loading and reloading
    def _target(self, slot: str) -> ModelRef | None:
        if slot == "challenger":
            return get_alias(self.name, CHALLENGER)
        return get_alias(self.name, self.follow) if self.follow else resolve(self.primary)

    def load(self) -> None:
        """Load what the aliases point at now; LifecycleError when the primary points nowhere."""
        ref = self._target("primary")
        if ref is None:
            raise LifecycleError(f"no chat model '{self.primary}' in {self.state_dir}: promote one (`lifecycle "
                                 "promote VERSION --reason ...`) or pass --model NAME/VERSION or NAME@ALIAS")
        if not self.follow:
            self.name = ref.name  # a pinned version answers to its own model name
        self._swap("primary", load_served(ref, self.follow, self.state_dir, self.cfg))
        self.check_challenger()

    def _retrievers(self) -> dict[str, Any]:
        return {f"{s.index['uri']}#{s.index['table']}@{s.index['version']}": s.retriever for s in self.all().values()}

    def _swap(self, slot: str, served: Served | None) -> None:
        """Put `served` in `slot` (None: empty it). A primary that is the challenger's version (it was promoted)
        drops the challenger in the same step: no request sees one version as both."""
        with self._lock:
            if served is None:
                self._served.pop(slot, None)
            else:
                self._served[slot] = served
                challenger = self._served.get("challenger")
                if slot == "primary" and challenger is not None and challenger.ref == served.ref:
                    del self._served["challenger"]
                    log.info("no challenger to compare with any more (%s is the primary now)", served.ref)
                    self.on_event("challenger", "drop")
        self.on_event(slot, "drop" if served is None else "load")
        if served is not None:
            log.info("serving %s as %s (RAG index %s version %s)", served.ref, served.label,
                     served.index.get("table"), served.index.get("version"))

    def check_challenger(self) -> bool:
        primary = self.get("primary")
        ref = self._target("challenger") if self.cfg.server.compare_with_challenger and self.follow else None
        current = self.get("challenger")
        if ref is None or (primary is not None and ref == primary.ref):
            if current is not None:
                log.info("no challenger to compare with any more (was %s)", current.ref)
                self._swap("challenger", None)
                return True
            return False
        if current is not None and current.ref == ref:
            return False
        self._swap("challenger", load_served(ref, CHALLENGER, self.state_dir, self.cfg, self._retrievers()))
        return True

    def check(self) -> bool:
        """Follow the aliases once: load what moved, swap it in. True when something changed."""
        changed = False
        try:
            primary = self.get("primary")
            if self.follow:
                ref = self._target("primary")
                if ref is None:
                    log.warning("%s points nowhere now; still serving %s", self.primary, primary and primary.ref)
                elif primary is None or ref != primary.ref:
                    log.info("%s moved to %s: loading it", self.primary, ref)
                    self._swap("primary", load_served(ref, self.follow, self.state_dir, self.cfg, self._retrievers()))
                    changed = True
            changed = self.check_challenger() or changed
            self.last_error = None
        except Exception as err:  # noqa: BLE001 - keep serving the loaded versions; retried on the next poll
            self.last_error = f"{type(err).__name__}: {err}"
            self.on_event("all", "reload_failed")
            log.exception("reloading the served models failed; still serving what was loaded")
        return changed

    def start_polling(self, interval_s: float) -> None:
        if interval_s <= 0 or self._thread is not None or not self.follow:
            return
        self._stop.clear()

        def poll() -> None:
            while not self._stop.wait(interval_s):
                self.check()

        self._thread = threading.Thread(target=poll, name="serve-alias-poller", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)
            self._thread = None
