"""Preference-vote statistics against values worked out by hand (the arithmetic is in the comments)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from lifecycle.preferences.stats import BatchStats, Judgement, batch_stats, plot_stats


def vote(item: str, annotator: str, choice: str, left: str = "a", len_a: int = 10, len_b: int = 10,
         **kw: object) -> Judgement:
    return Judgement(item_id=item, annotator=annotator, choice=choice, left=left, len_a=len_a, len_b=len_b,
                     **kw)  # type: ignore[arg-type]


def table(rows: dict[str, dict[str, str]]) -> list[Judgement]:
    """{item: {annotator: choice}} -> votes."""
    return [vote(item, ann, c) for item, votes in rows.items() for ann, c in votes.items()]


def test_cohen_kappa_two_annotators_and_single_votes_are_ignored() -> None:
    votes = table({"i1": {"u1": "a", "u2": "a"}, "i2": {"u1": "a", "u2": "b"},
                   "i3": {"u1": "b", "u2": "b"}, "i4": {"u1": "b", "u2": "b"},
                   "i5": {"u1": "tie"}})  # i5: one vote only, nothing to agree with
    s = batch_stats(votes)
    # Cohen on i1..i4: p_o = 3/4; u1 marginals a 2/4, b 2/4; u2 a 1/4, b 3/4
    # p_e = 1/2*1/4 + 1/2*3/4 = 1/2; kappa = (3/4 - 1/2) / (1 - 1/2) = 0.5
    assert s.cohen_kappa == pytest.approx(0.5)
    assert s.cohen_pairs == 1
    # Fleiss (2 raters): P_i = 1, 0, 1, 1 -> P-bar 3/4; p_a = 3/8, p_b = 5/8 -> P_e = 9/64 + 25/64 = 34/64
    # kappa = (48/64 - 34/64) / (30/64) = 14/30 = 7/15
    assert s.fleiss_kappa == pytest.approx(7 / 15)
    # Krippendorff: coincidences o_aa = 2 (i1), o_ab = o_ba = 1 (i2), o_bb = 4 (i3, i4); n_a = 3, n_b = 5, n = 8
    # D_o = 2/8; D_e = 2 * 3 * 5 / (8 * 7) = 30/56; alpha = 1 - (2/8) / (30/56) = 1 - 14/30 = 8/15
    assert s.krippendorff_alpha == pytest.approx(8 / 15)
    assert (s.votes, s.items, s.annotators) == (9, 5, 2)
    assert s.tie_share == pytest.approx(1 / 9)
    assert s.majority_agreement == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_fleiss_and_krippendorff_three_raters_four_items() -> None:
    s = batch_stats(table({"i1": {"r1": "a", "r2": "a", "r3": "a"}, "i2": {"r1": "a", "r2": "a", "r3": "b"},
                           "i3": {"r1": "b", "r2": "b", "r3": "tie"}, "i4": {"r1": "a", "r2": "b", "r3": "tie"}}))
    # P_i = n_ij(n_ij-1) summed / (3*2): i1 6/6 = 1, i2 2/6 = 1/3, i3 2/6 = 1/3, i4 0 -> P-bar = (5/3)/4 = 5/12
    # counts a 6, b 4, tie 2 of 12 -> p = 1/2, 1/3, 1/6; P_e = 9/36 + 4/36 + 1/36 = 7/18
    # kappa = (5/12 - 7/18) / (1 - 7/18) = (1/36) / (22/36) = 1/22
    assert s.fleiss_kappa == pytest.approx(1 / 22)
    # coincidences (each ordered pair of raters weighs 1/(3-1)): i1 o_aa += 3; i2 o_aa += 1, o_ab = o_ba += 1;
    # i3 o_bb += 1, o_bt = o_tb += 1; i4 every off-diagonal cell += 1/2
    # -> o_aa 4, o_bb 1, o_tt 0, o_ab 1.5, o_at 0.5, o_bt 1.5 (symmetric); n_a 6, n_b 4, n_t 2, n 12
    # D_o = 2 * (1.5 + 0.5 + 1.5) / 12 = 7/12; D_e = (144 - 36 - 16 - 4) / (12 * 11) = 88/132 = 2/3
    # alpha = 1 - (7/12) / (2/3) = 1 - 7/8 = 1/8
    assert s.krippendorff_alpha == pytest.approx(1 / 8)
    # majority shares 3/3, 2/3, 2/3, 1/3 -> mean 2/3
    assert s.majority_agreement == pytest.approx(2 / 3)
    assert s.cohen_pairs == 3


def test_fleiss_with_varying_raters_per_item() -> None:
    s = batch_stats(table({"i1": {"r1": "a", "r2": "a", "r3": "b"}, "i2": {"r1": "a", "r2": "a"},
                           "i3": {"r1": "b", "r3": "tie"}}))
    # P_i: i1 2/(3*2) = 1/3, i2 2/(2*1) = 1, i3 0 -> P-bar = 4/9
    # ratings a 4, b 2, tie 1 of 7 -> P_e = (16 + 4 + 1) / 49 = 3/7
    # kappa = (4/9 - 3/7) / (4/7) = (1/63) * (7/4) = 1/36
    assert s.fleiss_kappa == pytest.approx(1 / 36)


def test_perfect_agreement_is_one() -> None:
    s = batch_stats(table({"i1": {"u1": "a", "u2": "a", "u3": "a"}, "i2": {"u1": "b", "u2": "b", "u3": "b"},
                           "i3": {"u1": "tie", "u2": "tie", "u3": "tie"}}))
    assert s.cohen_kappa == pytest.approx(1.0) and s.cohen_pairs == 3
    assert s.fleiss_kappa == pytest.approx(1.0)
    assert s.krippendorff_alpha == pytest.approx(1.0)
    assert s.majority_agreement == pytest.approx(1.0)


def test_one_category_throughout_leaves_chance_corrected_measures_undefined() -> None:
    s = batch_stats(table({"i1": {"u1": "a", "u2": "a"}, "i2": {"u1": "a", "u2": "a"}}))
    assert s.cohen_kappa is None and s.cohen_pairs == 0
    assert s.fleiss_kappa is None and s.krippendorff_alpha is None
    assert s.majority_agreement == pytest.approx(1.0)
    assert "cohen_kappa" not in s.to_metrics() and "fleiss_kappa" not in s.to_metrics()


def test_position_bias_counts_gold_too_and_skips_ties() -> None:
    s = batch_stats([vote("i1", "u1", "a", left="a"),  # left won
                     vote("i2", "u1", "a", left="b"),  # right won
                     vote("i3", "u1", "b", left="b"),  # left won
                     vote("i4", "u1", "tie", left="a"),  # tie: not counted
                     vote("g1", "u1", "a", left="a", gold="a")])  # gold, left won
    assert s.position_bias == pytest.approx(3 / 4)
    assert s.tie_share == pytest.approx(1 / 5)


def test_length_bias_counts_longer_winner() -> None:
    s = batch_stats([vote("i1", "u1", "b", len_a=10, len_b=20),  # longer (b) won
                     vote("i2", "u1", "a", len_a=30, len_b=5),  # longer (a) won
                     vote("i3", "u1", "b", len_a=30, len_b=5),  # shorter won
                     vote("i4", "u1", "a", len_a=7, len_b=7),  # same length: not counted
                     vote("i5", "u1", "tie", len_a=3, len_b=9)])  # tie: not counted
    assert s.length_bias == pytest.approx(2 / 3)


def test_gold_accuracy_and_gold_items_left_out_of_agreement() -> None:
    s = batch_stats([vote("g1", "u1", "a", gold="a"), vote("g2", "u1", "b", gold="a"),
                     vote("g3", "u1", "tie", gold="tie"), vote("g3", "u2", "tie", gold="tie"),
                     vote("g1", "u2", "b", gold="a"),  # u2's gold item disagrees with u1 but is not agreement data
                     vote("i1", "u3", "a"), vote("i1", "u1", "a")])
    assert s.gold_accuracy == pytest.approx({"u1": 2 / 3, "u2": 1 / 2})
    assert "u3" not in s.gold_accuracy
    assert s.items == 1 and s.annotators == 3
    assert s.majority_agreement == pytest.approx(1.0)
    assert s.cohen_pairs == 0  # u1 and u3 share one non-gold item only
    assert s.to_metrics()["gold_accuracy_mean"] == pytest.approx((2 / 3 + 1 / 2) / 2)


def test_swapped_pair_is_not_a_contradiction_but_a_flip_is() -> None:
    votes = [vote("i1", "u1", "a", pair=("r1", "r2"), prompt_id="p"),  # r1 wins
             vote("i2", "u1", "b", pair=("r2", "r1"), prompt_id="p"),  # r1 wins again (stored swapped)
             vote("i1", "u2", "a", pair=("r1", "r2"), prompt_id="p"),  # r1 wins
             vote("i2", "u2", "a", pair=("r2", "r1"), prompt_id="p"),  # r2 wins: contradicts the vote above
             vote("i1", "u3", "a", pair=("r1", "r2"), prompt_id="p"),
             vote("i2", "u3", "tie", pair=("r2", "r1"), prompt_id="p"),  # tie vs strict: contradiction
             vote("i1", "u4", "b", pair=("r1", "r2"), prompt_id="p")]  # differs from others: not self-contradiction
    assert batch_stats(votes).contradictions == {"u1": 0, "u2": 1, "u3": 1, "u4": 0}


def test_intransitive_three_cycle_counts_once() -> None:
    def cycle(annotator: str, prompts: tuple[str, str, str], last: str, first: str = "a") -> list[Judgement]:
        return [vote(f"{annotator}1", annotator, first, pair=("x", "y"), prompt_id=prompts[0]),  # x > y if "a"
                vote(f"{annotator}2", annotator, first, pair=("y", "z"), prompt_id=prompts[1]),  # y > z if "a"
                vote(f"{annotator}3", annotator, last, pair=("z", "x"), prompt_id=prompts[2])]

    votes = (cycle("u1", ("p", "p", "p"), "a")  # z > x: x > y > z > x, one cycle
             + cycle("u2", ("p", "p", "p"), "b")  # x > z: transitive
             + cycle("u3", ("p", "p", "q"), "a")  # the closing vote is about another prompt
             + cycle("u4", ("p", "p", "p"), "tie")  # a tie closes no cycle
             + cycle("u5", ("p", "p", "p"), "b", first="b"))  # y > x, z > y, x > z: the other direction
    s = batch_stats(votes)
    assert s.contradictions == {"u1": 1, "u2": 0, "u3": 0, "u4": 0, "u5": 1}
    assert s.to_metrics()["contradictions_total"] == 2.0


def test_empty_input() -> None:
    s = batch_stats([])
    assert s == BatchStats()
    assert (s.votes, s.items, s.annotators, s.cohen_pairs) == (0, 0, 0, 0)
    assert s.cohen_kappa is None and s.position_bias is None and s.tie_share is None
    assert s.gold_accuracy == {} and s.contradictions == {}
    assert s.to_metrics() == {"votes": 0.0, "items": 0.0, "annotators": 0.0, "synthetic_votes": 0.0,
                              "cohen_pairs": 0.0, "contradictions_total": 0.0}


@pytest.mark.parametrize(("bad", "seen"), [({"choice": "left"}, "'left'"), ({"left": "c"}, "'c'"),
                                           ({"gold": "A"}, "'A'")])
def test_bad_value_names_item_and_value(bad: dict[str, str], seen: str) -> None:
    fields = {"choice": "a", "left": "a"} | bad
    votes = [vote("ok", "u1", "a"), vote("item-42", "u2", **fields)]  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item-42") as err:
        batch_stats(votes)
    assert seen in str(err.value)


def test_metrics_and_dict_are_flat_floats_and_json() -> None:
    s = batch_stats([vote("i1", "u1", "a", synthetic=True), vote("i1", "u2", "b"), vote("g", "u1", "a", gold="a")])
    metrics = s.to_metrics()
    assert all(isinstance(v, float) for v in metrics.values())
    assert metrics["synthetic_votes"] == 1.0 and metrics["position_bias"] == pytest.approx(2 / 3)
    assert json.loads(json.dumps(s.to_dict()))["gold_accuracy"] == {"u1": 1.0}


@pytest.mark.parametrize("empty", [False, True])
def test_plot_stats_writes_png_atomically(tmp_path: Path, empty: bool) -> None:
    import matplotlib.pyplot as plt

    votes = [] if empty else table({"i1": {"u1": "a", "u2": "a"}, "i2": {"u1": "b", "u2": "a"},
                                    "i3": {"u1": "tie", "u2": "tie"}})
    before = plt.get_fignums()
    out = plot_stats(batch_stats(votes), tmp_path / "plots" / "stats.png")
    assert out == tmp_path / "plots" / "stats.png"
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    assert [p.name for p in out.parent.iterdir()] == ["stats.png"]  # no temp file left behind
    assert plt.get_fignums() == before  # no pyplot figure leaked
