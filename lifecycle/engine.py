"""Where the data stages' shard work runs (`run.engine`). A stage cuts its work into shards of a size that
is its own setting (records to clean, texts to sign, documents to encode, chunks to embed), maps one
function over them and puts the results back in shard order, so the output never depends on the engine:

- `local`: the shards run one after another in this process;
- `ray`: each shard is a Prefect task run (visible under the stage's task run) executed on a Ray cluster
  through prefect-ray's `RayTaskRunner`: a local cluster started for the run (`run.ray.num_cpus` worker
  CPUs), or an existing one at `run.ray.address` ("auto", or `ray://HOST:10001`), whose nodes must have
  this package installed and reach the Prefect API (PREFECT_API_URL is passed on).

    engine = Engine.from_config(cfg.run)
    parts = engine.map(partial(minhash_signatures, num_perm=128, shingle_words=5), shards(texts, 2000), "minhash")
"""

from __future__ import annotations

import atexit
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from lifecycle.progress import progress

if TYPE_CHECKING:
    from lifecycle.config.run import RunConfig

log = logging.getLogger("lifecycle.engine")
T = TypeVar("T")
R = TypeVar("R")
FORWARDED = ("PREFECT_API_URL", "PREFECT_API_KEY", "MLFLOW_TRACKING_URI", "HF_HUB_OFFLINE")


def shards(items: Sequence[T], size: int) -> list[Sequence[T]]:
    """`items` cut into consecutive pieces of `size` (the last may be shorter)."""
    return [items[i:i + size] for i in range(0, len(items), size)]


@dataclass(frozen=True)
class Engine:
    kind: str = "local"  # local | ray
    address: str | None = None  # ray: None starts a local cluster; "auto" or ray://HOST:PORT joins one
    num_cpus: int | None = None  # ray, local cluster: worker CPUs (None: all)

    @classmethod
    def from_config(cls, run: RunConfig) -> Engine:
        return cls(run.engine, run.ray.address, run.ray.num_cpus)

    def map(self, fn: Callable[[T], R], items: Sequence[T], name: str) -> list[R]:
        """[fn(item) for item in items], in order; on Ray, one Prefect task run `name` per item."""
        if self.kind == "local" or not items:
            return [fn(item) for item in progress(items, desc=name, logger=log)]
        return self._ray_map(fn, items, name)

    def _ray_map(self, fn: Callable[[T], R], items: Sequence[T], name: str) -> list[R]:
        from prefect import task
        from prefect.cache_policies import NO_CACHE
        from prefect_ray import RayTaskRunner

        start_ray(self.address, self.num_cpus)
        shard_task = task(_call, name=name, cache_policy=NO_CACHE, persist_result=False)
        with RayTaskRunner() as runner:  # joins the cluster started above
            futures = [runner.submit(shard_task, {"fn": fn, "item": item}) for item in items]
            log.info("%s: %d shards submitted to Ray", name, len(futures))
            return [future.result() for future in progress(futures, desc=name, logger=log)]


LOCAL = Engine()


def _call(fn: Callable[[T], R], item: T) -> R:
    return fn(item)


def start_ray(address: str | None, num_cpus: int | None) -> None:
    """Connect this process to Ray once: a local cluster (stopped at exit) or the one at `address`."""
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": False, "logging_level": logging.WARNING, "namespace": "lifecycle"}
    if address:  # the cluster's workers do not inherit this environment: pass on where the APIs are
        env = {k: os.environ[k] for k in FORWARDED if os.environ.get(k)}
        context = ray.init(address=address, runtime_env={"env_vars": env}, **options)
    else:  # a local cluster's workers inherit it
        context = ray.init(num_cpus=num_cpus, **options)
        atexit.register(ray.shutdown)
    resources = ray.cluster_resources()
    log.info("Ray %s: %d node(s), %g CPUs%s", address or "local cluster", len(ray.nodes()), resources.get("CPU", 0),
             f", dashboard {context.dashboard_url}" if context.dashboard_url else "")
