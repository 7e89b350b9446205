"""The pretraining loop's parts and the loop itself on a tiny model: schedule, decay groups, the
deterministic sharded data order, bits per byte and the unigram baseline, FLOPs/MFU, and a short run
in which the loss falls, the weights change and the output loads with from_pretrained."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from lifecycle.config import load_config
from lifecycle.errors import ConfigError, LifecycleError
from lifecycle.model import build_model
from lifecycle.stages import stage_key
from tasks.graph import GRAPH
from lifecycle.train.data import BatchOrder, bits_per_byte, eval_shards, load_split, unigram_loss
from lifecycle.train.distributed import torchrun_command
from lifecycle.train.flops import detect_peak_flops, flops_per_token, mfu
from lifecycle.train.pretrain import train
from lifecycle.train.trainer import lr_factor, param_groups
from tests.pretrain_fixtures import make_tokenized, tiny_pretrain_config


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tokenized(tmp_path_factory.mktemp("tokenized"))


def test_schedule_warms_up_linearly_then_decays_by_cosine_to_the_floor() -> None:
    f = [lr_factor(s, warmup=10, max_steps=110, min_ratio=0.1) for s in range(111)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(f[:10], f[1:10]))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[60] == pytest.approx(0.55) and f[110] == pytest.approx(0.1)


def test_weight_decay_applies_to_matrices_only() -> None:
    model = build_model(tiny_pretrain_config().model, 320, 33, 1, 0)
    decay, no_decay = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and no_decay["weight_decay"] == 0.0
    assert all(p.dim() == 2 for p in decay["params"])
    embed = model.get_input_embeddings().weight
    assert any(p is embed for p in no_decay["params"]) and not any(p is embed for p in decay["params"])
    norms = [m.weight for m in model.modules() if "RMSNorm" in type(m).__name__]
    assert norms and all(any(p is n for p in no_decay["params"]) for n in norms)
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_batch_order_is_deterministic_covers_each_epoch_and_shards_by_rank() -> None:
    order = BatchOrder(n_blocks=10, batch_size=4, seed=7)
    assert np.array_equal(order.global_indices(3), BatchOrder(10, 4, 7).global_indices(3))
    assert not np.array_equal(order.global_indices(0), BatchOrder(10, 4, 8).global_indices(0))
    first_epoch = np.concatenate([order.global_indices(s) for s in range(5)])[:10]  # 20 positions = 2 epochs
    assert sorted(first_epoch) == list(range(10))

    blocks = np.arange(10)[:, None] * np.ones((1, 5), dtype=np.int64)  # row i is all i
    single = torch.cat(order.micro_batches(blocks, 2, rank=0, world_size=1, micro_batch_size=4))
    ranks = [torch.cat(order.micro_batches(blocks, 2, rank=r, world_size=2, micro_batch_size=1)) for r in (0, 1)]
    assert torch.equal(torch.cat(ranks), single)  # two processes see exactly what one process sees
    assert [b.shape for b in order.micro_batches(blocks, 2, 0, 1, 2)] == [(2, 5), (2, 5)]


def test_eval_shards_split_the_validation_blocks_across_ranks() -> None:
    blocks = np.arange(7)[:, None] * np.ones((1, 3), dtype=np.int64)
    parts = [torch.cat(eval_shards(blocks, None, r, 2, 2)) for r in (0, 1)]
    assert torch.cat(parts)[:, 0].tolist() == list(range(7))
    assert torch.cat(eval_shards(blocks, 4, 0, 1, 3))[:, 0].tolist() == [0, 1, 2, 3]


def test_bits_per_byte_and_the_unigram_baseline() -> None:
    stats = {"validation_tokens": 100, "validation_bytes": 300}
    assert bits_per_byte(math.log(2) * 3, stats) == pytest.approx(1.0)  # 3 bits/token over 3 bytes/token
    train_blocks = np.array([[0, 0, 0, 1]])  # counts 3, 1, 0 over a vocabulary of 3
    valid = np.array([[2, 0, 1]])  # targets 0 and 1
    expected = -(math.log(4 / 7) + math.log(2 / 7)) / 2  # add-one smoothing: (3+1)/(4+3), (1+1)/(4+3)
    assert unigram_loss(train_blocks, valid, vocab_size=3) == pytest.approx(expected)


def test_flops_and_mfu() -> None:
    assert flops_per_token(1_000, n_layer=2, d_model=8, context=4) == 6_000 + 12 * 2 * 8 * 4
    assert mfu(100.0, tokens_per_s=10.0, peak_flops=2_000.0, devices=2) == pytest.approx(0.25)
    assert mfu(100.0, 10.0, None) == 0.0
    assert detect_peak_flops(torch.device("cpu"), "fp32", configured=5e12) == (5e12, "config pretrain.peak_flops")
    peak, source = detect_peak_flops(torch.device("cpu"), "fp32")
    assert peak is None or (1e9 < peak < 1e15 and "cores" in source)


def test_load_split_reads_blocks_as_an_array(data: Path) -> None:
    train_blocks = load_split(data, "train")
    assert train_blocks.ndim == 2 and train_blocks.shape[1] == 33 and len(train_blocks) > 100
    with pytest.raises(LifecycleError, match="expected the tokenize stage's output"):
        load_split(data / "nope", "train")


def test_short_run_learns_and_saves_a_loadable_model(tmp_path: Path, data: Path) -> None:
    cfg = tiny_pretrain_config(max_steps=60, eval_every=30, checkpoint_every=30)
    torch.manual_seed(1337)
    init = build_model(cfg.model, 320, 33, 1, 0).state_dict()
    seen: list[tuple[dict, int]] = []
    texts: list[str] = []
    metrics = train(cfg, 1337, data, tmp_path / "out", tmp_path / "ckpt",
                    on_metrics=lambda m, s: seen.append((m, s)), on_text=lambda t, name: texts.append(name))
    losses = json.loads((tmp_path / "out" / "train_log.json").read_text())["losses"]
    assert len(losses) == 60
    assert np.mean(losses[-10:]) < np.mean(losses[:5]) - 1.0  # it learns
    assert metrics["val_bpb"] < metrics["unigram_bpb"]  # beyond token frequencies
    assert metrics["final_loss"] == losses[-1] and metrics["resumed_from_step"] == 0
    assert metrics["tokens_per_s"] > 0 and metrics["mfu"] > 0

    model = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out" / "model"))
    tok = AutoTokenizer.from_pretrained(str(tmp_path / "out" / "model"))
    assert model.generation_config.eos_token_id == tok.eos_token_id
    assert model.generation_config.pad_token_id == tok.pad_token_id
    changed = [k for k, v in model.state_dict().items() if k in init and not torch.equal(v, init[k])]
    assert len(changed) == len(init)  # every tensor moved (same seed -> same init as `init`)

    train_keys = {k for m, _ in seen for k in m if k.startswith("pretrain/train/")}
    assert {"pretrain/train/loss", "pretrain/train/lr", "pretrain/train/grad_norm", "pretrain/train/tokens_per_s",
            "pretrain/train/mfu", "pretrain/train/mem_gb"} <= train_keys
    assert [s for m, s in seen if "pretrain/eval/val_bpb" in m] == [30, 60]
    assert texts == ["pretrain/samples/step-000030.txt", "pretrain/samples/step-000060.txt"]
    assert (tmp_path / "ckpt" / "step-000030" / "model.safetensors").is_file()


def test_batch_must_divide_into_micro_batches_and_processes(tmp_path: Path, data: Path) -> None:
    with pytest.raises(Exception, match="batch_size=12 must be a multiple of micro_batch_size x distributed.nproc"):
        tiny_pretrain_config(batch_size=12, micro_batch_size=8)


def test_torchrun_command_is_standalone_on_one_node_and_a_rendezvous_on_several() -> None:
    one = tiny_pretrain_config(micro_batch_size=4, distributed={"nproc": 2}).distributed
    cmd = torchrun_command("lifecycle.train.pretrain", ["--data", "d"], one, "pretrain-abc")
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                       "-m", "lifecycle.train.pretrain", "--data", "d"]
    two = tiny_pretrain_config(micro_batch_size=1, distributed={"nproc": 4, "nnodes": 2, "node_rank": 1,
                                                                "rdzv_endpoint": "10.0.0.1:29500"}).distributed
    cmd = torchrun_command("lifecycle.train.pretrain", ["--data", "d"], two, "pretrain-abc")
    assert cmd[3:9] == ["--nnodes=2", "--node_rank=1", "--rdzv_backend=static", "--rdzv_endpoint=10.0.0.1:29500",
                        "--rdzv_id=pretrain-abc", "--nproc_per_node=4"]
    named = two.model_copy(update={"rdzv_id": "job-7", "rdzv_backend": "c10d"})
    assert {"--rdzv_id=job-7", "--rdzv_backend=c10d"} <= set(torchrun_command("m", [], named, "pretrain-abc"))


def test_several_nodes_need_a_rendezvous_endpoint_named_with_its_file(conf_dir: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(conf_dir, overrides=["pretrain.distributed.nnodes=2"])
    assert "pretrain.distributed.rdzv_endpoint = null: " in str(err.value) and "pretrain.yaml" in str(err.value)
    for bad, what in (("rlhf.distributed.rdzv_endpoint=node0", "expected HOST:PORT"),
                      ("pretrain.distributed.node_rank=1", "node_rank must be below nnodes (1)")):
        with pytest.raises(ConfigError, match=re.escape(what)):
            load_config(conf_dir, overrides=[bad])
    with pytest.raises(Exception, match=r"micro_batch_size x distributed.nproc x distributed.nnodes = 8 x 1 x 2"):
        tiny_pretrain_config(batch_size=8, micro_batch_size=8,
                             distributed={"nnodes": 2, "rdzv_endpoint": "10.0.0.1:29500"})


def test_node_rank_and_rendezvous_are_not_part_of_the_stage_key(conf_dir: Path) -> None:
    base = ["pretrain.distributed.nnodes=2", "pretrain.distributed.rdzv_endpoint=10.0.0.1:29500"]
    keys = {stage_key(GRAPH["pretrain"], load_config(conf_dir, overrides=base + extra), {"tokenize": "t"})
            for extra in ([], ["pretrain.distributed.node_rank=1", "pretrain.distributed.rdzv_id=x"])}
    assert len(keys) == 1  # every node computes the same key (and checkpoint folder, rendezvous id)
    wider = base + ["pretrain.distributed.nproc=2", "pretrain.micro_batch_size=8"]
    more = stage_key(GRAPH["pretrain"], load_config(conf_dir, overrides=wider), {"tokenize": "t"})
    assert more not in keys  # the number of processes is part of what was computed


def test_in_process_training_leaves_thread_settings_alone(tmp_path: Path, data: Path, two_threads: None) -> None:
    before = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    train(tiny_pretrain_config(max_steps=2, num_threads=1, deterministic=True, sample={"prompts": []}),
          1, data, tmp_path / "out", tmp_path / "ckpt")
    assert (torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()) == before
