"""lifecycle/engine.py and the sharded data steps: results in shard order, outputs that do not depend on
the shard size (the Ray path is tested end to end in tests/integration/test_engine_ray.py)."""

from __future__ import annotations

from functools import partial
from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer

from lifecycle.config import load_config
from lifecycle.data.clean import minhash_signatures
from lifecycle.engine import LOCAL, Engine, shards
from lifecycle.tokenizer import encode_documents, load_blocks, train_and_pack


def test_shards_cover_items_in_order() -> None:
    assert shards(list(range(7)), 3) == [[0, 1, 2], [3, 4, 5], [6]]
    assert shards([], 3) == []
    assert LOCAL.map(lambda xs: sum(xs), shards(list(range(10)), 4), "sum") == [6, 22, 17]


def test_engine_from_config(conf_dir: Path) -> None:
    cfg = load_config(conf_dir, overrides=["run.engine=ray", "run.ray.num_cpus=2"])
    assert Engine.from_config(cfg.run) == Engine("ray", None, 2)
    assert Engine.from_config(load_config(conf_dir).run) == LOCAL
    with pytest.raises(Exception, match="engine"):
        load_config(conf_dir, overrides=["run.engine=spark"])


def test_minhash_signatures_do_not_depend_on_the_shard_size() -> None:
    texts = [f"text number {i} with a few shared words and some of its own {i * 7}" for i in range(25)]
    sign = partial(minhash_signatures, num_perm=32, shingle_words=3)
    whole = sign(texts)
    for size in (1, 4, 25):
        assert np.array_equal(np.concatenate(LOCAL.map(sign, shards(texts, size), "minhash")), whole)


@pytest.mark.parametrize("batch_size", [3, 1000])
def test_packed_blocks_are_the_whole_stream_cut_into_blocks(tmp_path: Path, conf_dir: Path,
                                                            batch_size: int) -> None:
    from lifecycle.data.ingest import ingest_documents, load_documents

    cfg = load_config(conf_dir, overrides=[
        "ingest.sources=[{name: py, kind: python-docs, include: [json, textwrap]}]", "tokenize.vocab_size=400",
        "tokenize.context_length=16", f"tokenize.batch_size={batch_size}"])
    ingest_documents(cfg.ingest, tmp_path)
    train_and_pack(cfg.tokenize, tmp_path, tmp_path)
    texts = list(load_documents(tmp_path)["train"]["text"])
    eos = AutoTokenizer.from_pretrained(tmp_path / "tokenizer").eos_token_id
    stream = encode_documents(texts, str(tmp_path / "tokenizer"), eos)
    blocks = np.asarray(load_blocks(tmp_path)["train"]["input_ids"][:])
    assert blocks.shape == (len(stream) // 16, 16)  # only the last, partial block is dropped
    assert np.array_equal(blocks.reshape(-1), stream[: blocks.size])
