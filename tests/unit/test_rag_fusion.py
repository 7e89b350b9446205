"""Hybrid fusion, its fit, the title boost and the cross-encoder reranker: weighted RRF and linear fusion
order hand-made rankings as their formulas say; the fit picks the stronger retriever and is never worse at
rank 1 than the better of dense and full-text; a tiny cross-encoder trained here reorders hits; bad
settings are refused naming their key."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from lifecycle.config import load_config
from lifecycle.config.serve import RerankConfig
from lifecycle.data.clean import text_id
from lifecycle.errors import ConfigError
from lifecycle.rag.evaluate import Question, evaluate_retrieval
from lifecycle.rag.fit import fit_search, scores
from lifecycle.rag.index import build_index
from lifecycle.rag.profile import fitted_yaml, save_profile
from lifecycle.rag.rerank import load_reranker
from lifecycle.rag.search import Hit, fuse, fuse_pair, open_index
from lifecycle.stages import stage_key
from tasks.graph import GRAPH
from tests.unit.test_rag_index import CONF, rag_config, search_config


def hit(cid: str, score: float = 0.0, doc: str | None = None) -> Hit:
    return Hit(cid, doc or cid, 0, f"text of {cid}", "", "", cid, "", score)


def ids(hits: list[Hit]) -> list[str]:
    return [h.chunk_id for h in hits]


# --- fusion on hand-made rankings ---------------------------------------------------------------------------

def test_weighted_rrf_follows_the_heavier_list() -> None:
    dense, fts = [hit("a"), hit("b"), hit("c")], [hit("c"), hit("d"), hit("a")]
    even = fuse([dense, fts], [0.5, 0.5], 4, "rrf", 0)  # 1/rank: a = 1 + 1/3 = c, a seen first
    assert ids(even) == ["a", "c", "b", "d"]  # b and d tie too: b was seen first (in dense)
    leaning_fts = fuse([dense, fts], [0.3, 0.7], 4, "rrf", 0)
    assert ids(leaning_fts) == ["c", "a", "d", "b"]
    assert leaning_fts[0].score == pytest.approx(0.3 / 3 + 0.7 / 1)
    flat = fuse([dense, fts], [0.3, 0.7], 4, "rrf", 60)  # a large k: ranks matter less, agreement more
    assert flat[0].score == pytest.approx(0.3 / 63 + 0.7 / 61) and ids(flat)[:2] == ["c", "a"]


def test_linear_fusion_sums_min_max_normalised_scores() -> None:
    dense = [hit("a", 0.9), hit("b", 0.8), hit("c", 0.5)]  # normalised 1, 0.75, 0
    fts = [hit("b", 12.0), hit("d", 10.0), hit("a", 2.0)]  # normalised 1, 0.8, 0
    fused = fuse_pair(dense, fts, 4, search_config("serve.search.fusion.method=linear",
                                                   "serve.search.fusion.dense_weight=0.5").fusion)
    assert ids(fused) == ["b", "a", "d", "c"]
    assert [h.score for h in fused] == pytest.approx([0.875, 0.5, 0.4, 0.0])
    same = fuse([[hit("x", 3.0), hit("y", 3.0)]], [1.0], 2, "linear", 60)  # all equal: each normalised to 1
    assert [h.score for h in same] == [1.0, 1.0] and ids(same) == ["x", "y"]


@pytest.mark.parametrize("method", ["rrf", "linear"])
def test_a_zero_weight_reproduces_the_other_list(method: str) -> None:
    dense = [hit("a", 0.9), hit("b", 0.7), hit("c", 0.1)]
    fts = [hit("c", 9.0), hit("e", 4.0), hit("a", 1.0)]
    assert ids(fuse([dense, fts], [0.0, 1.0], 4, method, 60)) == ["c", "e", "a", "b"]  # full-text, then dense's rest
    assert ids(fuse([dense, fts], [1.0, 0.0], 4, method, 60)) == ["a", "b", "c", "e"]


# --- the fit ----------------------------------------------------------------------------------------------------

class FakeRetriever:
    """Hand-made rankings per question: `dense[q]` and `fts[boost][q]` are lists of doc ids, best first."""

    def __init__(self, dense: dict[str, list[str]], fts: dict[float, dict[str, list[str]]], search_overrides=()):
        self.cfg = search_config(*search_overrides)
        self.dense_lists, self.fts_lists = dense, fts
        self.embedder = self
        self.asked: list[str] = []

    def embed(self, texts: list[str], desc: str = "") -> list[str]:
        return list(texts)  # the "vector" is the question itself

    def dense(self, qvec: str, k: int) -> list[Hit]:
        n = len(self.dense_lists[qvec])
        return [hit(d, 1.0 - i / n) for i, d in enumerate(self.dense_lists[qvec][:k])]

    def fts(self, query: str, k: int, title_boost: float) -> list[Hit]:
        ranking = self.fts_lists.get(title_boost, self.fts_lists[0.0])[query]
        return [hit(d, 10.0 - i) for i, d in enumerate(ranking[:k])]


def random_world(seed: int, n: int = 40, docs: int = 12) -> tuple[FakeRetriever, list[Question]]:
    """Questions whose answer each retriever puts at a random rank (sometimes first, sometimes not at all)."""
    rng = random.Random(seed)
    dense, fts, questions = {}, {0.0: {}, 2.0: {}}, []
    for i in range(n):
        q, answer = f"q{i}", f"doc{i}"
        others = [f"noise{j}" for j in rng.sample(range(docs * 3), docs)]
        for ranking, skill in ((dense, rng.random()), (fts[0.0], rng.random()), (fts[2.0], rng.random())):
            order = list(others)
            if rng.random() < 0.9:
                order.insert(0 if rng.random() < skill else rng.randrange(1, docs), answer)
            ranking[q] = order
        questions.append(Question(q, frozenset([answer])))
    return FakeRetriever(dense, fts), questions


def fit_cfg(*overrides: str):
    return load_config(CONF, overrides=list(overrides)).rag_index.evaluate.fit


def test_the_fit_picks_the_stronger_retriever() -> None:
    answers = [f"doc{i}" for i in range(10)]
    questions = [Question(f"q{i}", frozenset([a])) for i, a in enumerate(answers)]
    noise = [f"n{j}" for j in range(5)]
    good = {f"q{i}": [a, *noise] for i, a in enumerate(answers)}  # right first every time
    poor = {f"q{i}": [*noise[:2], a, *noise[2:]] if i % 5 else [a, *noise] for i, a in enumerate(answers)}  # 2 of 10

    strong_fts = fit_search(FakeRetriever(poor, {0.0: good}), questions, fit_cfg(), [1, 5])
    assert strong_fts.chosen.dense_weight < 0.5 and strong_fts.table[1]["recall_at_1"] == 1.0
    strong_dense = fit_search(FakeRetriever(good, {0.0: poor}), questions, fit_cfg(), [1, 5])
    assert strong_dense.chosen.dense_weight > 0.5 and strong_dense.table[1]["recall_at_1"] == 1.0
    assert strong_dense.search.mode == "hybrid" and strong_dense.search.fusion.dense_weight == \
        strong_dense.chosen.dense_weight
    boosted = {0.0: poor, 4.0: good}  # only the title boost finds the answers
    titled = fit_search(FakeRetriever(poor, boosted), questions, fit_cfg(), [1, 5])
    assert titled.chosen.title_boost == 4.0 and titled.table[1]["recall_at_1"] == 1.0


@pytest.mark.parametrize("seed", range(8))
def test_the_fit_is_never_worse_at_rank_1_than_the_better_single_retriever(seed: int) -> None:
    retriever, questions = random_world(seed)
    result = fit_search(retriever, questions, fit_cfg("rag_index.evaluate.fit.title_boosts=[0.0,2.0]"), [1, 5])
    rows = {row["setting"]: row for row in result.table}
    singles = [rows["dense alone"]["recall_at_1"], rows["full-text alone, title boost 0"]["recall_at_1"],
               rows["full-text alone, title boost 2"]["recall_at_1"]]
    assert rows["fitted"]["recall_at_1"] >= max(singles)
    assert rows["fitted"]["recall_at_1"] >= rows["configured"]["recall_at_1"]
    # and measured independently of the fit's own bookkeeping, with the serving code path:
    fused = [fuse_pair(retriever.dense(q.text, 20), retriever.fts(q.text, 20, result.chosen.title_boost), 1,
                       result.search.fusion) for q in questions]
    first = np.mean([f[0].doc_id in q.relevant for f, q in zip(fused, questions)])
    assert first == pytest.approx(rows["fitted"]["recall_at_1"])
    assert 0 <= result.cross_validated["recall_at_1"] <= 1 and result.cross_validated["folds"] == 2


def test_scores_of_a_rank_matrix() -> None:
    out = scores(np.array([[1, 2, 0, 6]]), [1, 5])
    assert out["recall_at_1"][0] == 0.25 and out["recall_at_5"][0] == 0.5
    assert out["mrr"][0] == pytest.approx((1 + 1 / 2 + 1 / 6) / 4)


def test_fitted_values_are_saved_as_a_profile_that_loads(tmp_path: Path) -> None:
    retriever, questions = random_world(0)
    result = fit_search(retriever, questions, fit_cfg("rag_index.evaluate.fit.title_boosts=[0.0,2.0]"), [1, 5])
    conf = tmp_path / "conf"
    conf.mkdir()
    for f in CONF.glob("*.yaml"):
        (conf / f.name).write_text(f.read_text())
    (conf / "profiles").mkdir()
    (conf / "profiles" / "base.yaml").write_text("serve:\n  search:\n    top_k: 3\n")
    text = fitted_yaml(result.overlay(), result.to_dict(), extends="base")
    assert text.startswith("# Written by `lifecycle eval-retrieval --fit`") and "recall@1" in text
    save_profile(conf, "fitted", text)
    cfg = load_config(conf, "fitted").serve.search
    assert cfg.top_k == 3 and cfg.mode == "hybrid"  # the base profile's values, and the fitted ones:
    assert (cfg.title_boost, cfg.fusion.dense_weight) == (result.chosen.title_boost, result.chosen.dense_weight)
    save_profile(conf, "fitted", text)  # a fit may replace what a fit wrote
    with pytest.raises(ConfigError, match="base.yaml exists and was not written by a fit"):
        save_profile(conf, "base", text)
    with pytest.raises(ConfigError, match="cannot extend itself"):
        save_profile(conf, "again", fitted_yaml(result.overlay(), result.to_dict(), extends="again"))


# --- configuration ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("override, key", [
    ("serve.search.fusion.dense_weight=1.5", "serve.search.fusion.dense_weight"),
    ("serve.search.fusion.method=max", "serve.search.fusion.method"),
    ("serve.search.title_boost=-1", "serve.search.title_boost"),
    ("serve.search.rerank.candidates=0", "serve.search.rerank.candidates"),
    ("rag_index.evaluate.fit.dense_weights=[0.2,0.5,1.0]", "rag_index.evaluate.fit.dense_weights"),
    ("rag_index.evaluate.fit.folds=1", "rag_index.evaluate.fit.folds"),
])
def test_bad_search_settings_are_refused_naming_the_key(override: str, key: str) -> None:
    with pytest.raises(ConfigError, match=key.replace(".", r"\.")):
        load_config(CONF, overrides=[override])


def test_search_settings_are_part_of_the_rag_index_key_and_answer_settings_are_not() -> None:
    def key(*overrides: str) -> str:
        return stage_key(GRAPH["rag_index"], load_config(CONF, overrides=list(overrides)), {"ingest": "k"})

    assert key("serve.search.fusion.dense_weight=0.9") != key()  # its recall metrics measure these settings
    assert key("serve.answer.max_new_tokens=7") == key()


# --- the title boost on a real (tiny) index -----------------------------------------------------------------

def tiny_docs() -> list[dict]:
    topics = {  # stemming makes `loads` and `load` one word: only the unstemmed title field tells them apart
        "store.load": "Read one record from the store's file and return it. The file is read as it loads.",
        "store.loads": "Parse one record from a string and return it.",
        "store.dump": "Write one record to the store's file.",
        "store.dumps": "Format one record as a string.",
    }
    return [{"id": text_id(t), "text": t, "source": "s", "path": "store.py", "title": n, "object": n,
             "split": "validation"} for n, t in topics.items()]


def test_the_title_boost_finds_the_document_a_question_names(tmp_path: Path) -> None:
    info = build_index(tiny_docs(), rag_config("rag_index.chunk.title_prefix=false"), str(tmp_path / "db"),
                       "docs").to_dict()
    plain = open_index(info, search_config("serve.search.title_boost=0"))
    assert plain.search("What does store.loads do?", "fts", 1)[0].title == "store.load"  # "loads" twice in its text
    titled = open_index(info, search_config("serve.search.title_boost=2"))
    assert titled.search("What does store.loads do?", "fts", 1)[0].title == "store.loads"
    assert titled.search("What does store.dumps do?", "hybrid", 1)[0].title == "store.dumps"


# --- the cross-encoder reranker ---------------------------------------------------------------------------------

def train_tiny_cross_encoder(folder: Path) -> Path:
    """A 1-layer BERT trained for a few seconds to score (question, passage) by whether the passage says 'yes'."""
    from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "yes", "no", "which", "one", "text", "of", "a", "b",
             "c", "d", "e", "f"]
    tokenizer = BertTokenizerFast(vocab={w: i for i, w in enumerate(words)})
    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(vocab_size=len(words), hidden_size=32, num_hidden_layers=1,
                                                     num_attention_heads=2, intermediate_size=64, num_labels=1,
                                                     max_position_embeddings=64, hidden_dropout_prob=0.0,
                                                     attention_probs_dropout_prob=0.0))
    rng = random.Random(0)
    optim = torch.optim.AdamW(model.parameters(), lr=2e-3)
    for _ in range(80):
        labels = [rng.random() < 0.5 for _ in range(16)]
        passages = [" ".join(rng.choices("abcdef", k=3) + ["yes" if y else "no"] + rng.choices("abcdef", k=2))
                    for y in labels]
        batch = tokenizer(["which one"] * 16, passages, padding=True, return_tensors="pt")
        loss = torch.nn.functional.binary_cross_entropy_with_logits(model(**batch).logits[:, 0],
                                                                    torch.tensor(labels, dtype=torch.float32))
        optim.zero_grad()
        loss.backward()
        optim.step()
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def cross_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return train_tiny_cross_encoder(tmp_path_factory.mktemp("cross-encoder"))


def rerank_cfg(model: Path | str, candidates: int = 10) -> RerankConfig:
    base = load_config(CONF).serve.search.rerank
    return base.model_copy(update={"model": str(model), "candidates": candidates})


def test_a_cross_encoder_reorders_hits(cross_encoder: Path, two_threads: None) -> None:
    reranker = load_reranker(rerank_cfg(cross_encoder))
    threads = torch.get_num_threads()
    first = [Hit(c, c, 0, text, "", "", "", "", 1.0 - i / 10) for i, (c, text) in enumerate(
        [("n1", "a b no c"), ("n2", "d no e f"), ("y1", "c yes a"), ("n3", "no f"), ("y2", "e b yes")])]
    out = reranker.rerank("which one", first, 3)
    assert {h.chunk_id for h in out[:2]} == {"y1", "y2"} and len(out) == 3
    assert out[0].score >= out[1].score >= out[2].score
    assert torch.get_num_threads() == threads  # rerank.threads applied while scoring only
    assert ids(load_reranker(rerank_cfg(cross_encoder, candidates=2)).rerank("which one", first, 3)) in (
        ["n1", "n2"], ["n2", "n1"])  # only the first stage's top 2 are re-scored
    assert reranker.rerank("which one", [], 3) == []


def test_a_missing_cross_encoder_is_refused_naming_the_key(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"serve\.search\.rerank\.model = '.*nowhere'"):
        load_reranker(rerank_cfg(tmp_path / "nowhere"))


def test_the_evaluation_reports_the_reranker_gain_next_to_its_latency(tmp_path: Path, cross_encoder: Path) -> None:
    docs = [{"id": text_id(t), "text": t, "source": "s", "path": "p", "title": "", "object": "", "split": "train"}
            for t in ("a b no c", "d no e f", "c yes a", "no f a", "e b yes")]
    info = build_index(docs, rag_config(), str(tmp_path / "db"), "docs").to_dict()
    cfg = search_config("serve.search.mode=dense", "serve.search.rerank.candidates=5")
    retriever = open_index(info, cfg.model_copy(update={"rerank": cfg.rerank.model_copy(
        update={"model": str(cross_encoder)})}))
    hits = retriever.search("which one", k=2)
    assert {h.text for h in hits} == {"c yes a", "e b yes"}
    yes = frozenset(d["id"] for d in docs if "yes" in d["text"])
    report = evaluate_retrieval(retriever, [Question("which one", yes)], [1, 2], modes=("dense",),
                                intervals={"level": 0.95, "resamples": 50, "seed": 0})
    row = report["reranked"]
    assert row["recall_at_1"] == 1.0 and row["gain_recall_at_1"] == 1.0 - report["dense"]["recall_at_1"]
    assert 0 < row["rerank_p50_ms"] <= row["p50_ms"] and row["recall_at_1_n"] == 1
    assert yaml.safe_dump(row)  # plain floats: loggable


# --- `lifecycle eval-retrieval --fit` end to end ------------------------------------------------------------------

def test_eval_retrieval_fit_logs_prints_and_saves_the_chosen_values(tmp_path: Path, capsys) -> None:
    import json
    import shutil

    from mlflow.tracking import MlflowClient

    from lifecycle.cli import main
    from lifecycle.tracking import tracking_uri
    from tests.unit.test_rag_evaluate import SQUAD

    path, conf, state = tmp_path / "squad.json", tmp_path / "conf", tmp_path / "state"
    path.write_text(json.dumps(SQUAD))
    shutil.copytree(CONF, conf)
    args = ["eval-retrieval", "--squad", str(path), "--fit", "--conf", str(conf), "--state-dir", str(state),
            "--set", "rag_index.ann.min_rows=1000", "--set", "rag_index.evaluate.ks=[1,2]",
            "--set", "rag_index.evaluate.fit.title_boosts=[0.0,2.0]"]
    assert main(args + ["--save-profile", "squad-fitted"]) == 0
    out, err = capsys.readouterr()
    result = json.loads(out)
    chosen = result["overlay"]["serve"]["search"]
    assert chosen == result["fit"]["chosen"] and chosen["mode"] == "hybrid"
    assert "Fitted serve.search" in err and "use it with --profile squad-fitted" in err
    rows = {r["setting"]: r for r in result["fit"]["table"]}
    assert rows["fitted"]["recall_at_1"] >= max(rows["dense alone"]["recall_at_1"],
                                                 rows["full-text alone, title boost 0"]["recall_at_1"])
    assert result["report"]["hybrid"]["recall_at_1"] == rows["fitted"]["recall_at_1"]  # measured as served
    assert set(result["report"]) == {"hybrid_configured", "dense", "fts", "hybrid"}
    assert result["report"]["hybrid"]["recall_at_1_n"] == 4
    run = MlflowClient(tracking_uri(state)).get_run(result["mlflow_run_id"])
    assert run.data.params["fit.fusion.dense_weight"] == str(chosen["fusion"]["dense_weight"])
    assert "rag_eval/fit_cv_recall_at_1" in run.data.metrics
    saved = load_config(conf, "squad-fitted").serve.search
    assert (saved.title_boost, saved.fusion.method) == (chosen["title_boost"], chosen["fusion"]["method"])
    assert main(["eval-retrieval", "--squad", str(path), "--save-profile", "x", "--conf", str(conf)]) == 2
    assert "--save-profile needs --fit" in capsys.readouterr().err
