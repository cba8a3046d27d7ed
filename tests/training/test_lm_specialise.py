"""The specialisation measure: character classes, counts, mutual information and its baseline,
against hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch

from minimoe.lm.specialise import (
    CHAR_CLASSES,
    DIGIT,
    KEYWORD,
    LETTER,
    PUNCTUATION,
    WHITESPACE,
    char_classes,
    class_entropy,
    class_expert_counts,
    measure_specialisation,
    mutual_information,
    normalised_mutual_information,
    random_router_baseline,
    route_text,
)
from minimoe.testing import assert_close

W, L, D, P, K = WHITESPACE, LETTER, DIGIT, PUNCTUATION, KEYWORD


def classes_of(text: bytes) -> list[int]:
    return char_classes(text).tolist()


# --- character classes ---------------------------------------------------------------------------


def test_class_names_and_indices() -> None:
    assert CHAR_CLASSES == ("whitespace", "letter", "digit", "punctuation", "keyword")
    assert [W, L, D, P, K] == [0, 1, 2, 3, 4]


def test_each_basic_class() -> None:
    assert classes_of(b" \t\n\r\f\v") == [W] * 6
    assert classes_of(b"azAZ") == [L] * 4
    assert classes_of(b"0459") == [D] * 4
    assert classes_of(b"_()[]:.,'\"#=+-*/\\") == [P] * 17
    assert classes_of("é".encode()) == [P, P]  # both bytes of a UTF-8 character
    assert classes_of(b"\x00\x7f") == [P, P]


def test_keywords_on_a_snippet() -> None:
    text = b"if x:\n    return elif_x and 3"
    expected = [K, K, W, L, P, W] + [W] * 4 + [K] * 6 + [W] + [L] * 4 + [P] + [L] + [W]
    expected += [K] * 3 + [W, D]
    assert classes_of(text) == expected


def test_keywords_need_word_boundaries() -> None:
    # "iffy", "_if", "if_", "if2", "Notable" hold a keyword's letters but are not keywords
    for word in (b"iffy", b"_if", b"if_", b"if2", b"Notable", b"classes", b"xor"):
        assert KEYWORD not in classes_of(word), word
    # keywords next to punctuation, at both ends of the text, and the capitalised constants
    assert classes_of(b"(None)") == [P] + [K] * 4 + [P]
    assert classes_of(b"True") == [K] * 4
    assert classes_of(b"x.not") == [L, P, K, K, K]  # lexical: a keyword after a dot still counts
    assert classes_of(b"for in") == [K, K, K, W, K, K]  # longest keywords first: "for", not "or"


def test_str_is_encoded_and_empty_text_works() -> None:
    assert classes_of(b"def f(): pass") == char_classes("def f(): pass").tolist()
    out = char_classes(b"")
    assert out.shape == (0,) and out.dtype == torch.long
    with pytest.raises(TypeError, match="bytes or str"):
        char_classes([1, 2, 3])


# --- counts ---------------------------------------------------------------------------------------


def test_counts_by_hand() -> None:
    class_T = torch.tensor([0, 0, 1, 2, 2, 2])
    expert_T = torch.tensor([1, 1, 0, 1, 2, 1])
    counts = class_expert_counts(class_T, expert_T, 4, 3)
    expected = torch.tensor([[0, 2, 0], [1, 0, 0], [0, 2, 1], [0, 0, 0]])
    assert torch.equal(counts, expected)
    assert class_expert_counts(torch.zeros(0), torch.zeros(0), 2, 3).sum() == 0


def test_counts_reject_bad_input() -> None:
    with pytest.raises(ValueError, match="same length"):
        class_expert_counts(torch.zeros(3), torch.zeros(4), 2, 2)
    with pytest.raises(ValueError, match="expert_T must lie in"):
        class_expert_counts(torch.zeros(3), torch.tensor([0, 1, 2]), 2, 2)
    with pytest.raises(ValueError, match="class_T must lie in"):
        class_expert_counts(torch.tensor([-1, 0, 0]), torch.zeros(3), 2, 2)


# --- mutual information ---------------------------------------------------------------------------


def test_independent_table_has_zero_mi() -> None:
    counts = torch.tensor([[1, 1], [2, 2], [5, 5]])
    assert mutual_information(counts) == pytest.approx(0.0, abs=1e-12)
    assert mutual_information(torch.tensor([[7]])) == 0.0  # one class, one expert


def test_deterministic_routing_gives_class_entropy() -> None:
    counts = torch.tensor([[3, 0], [0, 1]])
    h_class = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert mutual_information(counts) == pytest.approx(h_class, rel=1e-12)
    assert class_entropy(counts) == pytest.approx(h_class, rel=1e-12)
    assert normalised_mutual_information(counts) == pytest.approx(1.0)
    # a permutation of the experts changes nothing
    assert mutual_information(counts.flip(1)) == pytest.approx(h_class, rel=1e-12)


def test_mi_by_hand() -> None:
    # p(c,e) = [[1/2, 1/4], [0, 1/4]], p(c) = (3/4, 1/4), p(e) = (1/2, 1/2)
    counts = torch.tensor([[2, 1], [0, 1]])
    mi = 0.5 * math.log(0.5 / (0.75 * 0.5)) + 0.25 * math.log(0.25 / (0.75 * 0.5))
    mi += 0.25 * math.log(0.25 / (0.25 * 0.5))
    assert mutual_information(counts) == pytest.approx(mi, rel=1e-12)
    assert mutual_information(counts.t()) == pytest.approx(mi, rel=1e-12)  # symmetric
    h_class = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert normalised_mutual_information(counts) == pytest.approx(mi / h_class, rel=1e-12)
    # scale invariant: the same proportions from 100x the bytes
    assert mutual_information(100 * counts) == pytest.approx(mi, rel=1e-12)


def test_two_classes_sharing_an_expert() -> None:
    # 4 equally frequent classes; classes 0 and 1 share expert 0, 2 -> 1, 3 -> 2
    counts = torch.tensor([[5, 0, 0], [5, 0, 0], [0, 5, 0], [0, 0, 5]])
    # I = H(class) - H(class | expert) = log 4 - (1/2) log 2
    assert mutual_information(counts) == pytest.approx(math.log(4) - 0.5 * math.log(2))
    assert normalised_mutual_information(counts) == pytest.approx(0.75)


def test_mi_edge_cases_and_errors() -> None:
    empty = torch.zeros(5, 4, dtype=torch.long)
    assert mutual_information(empty) == 0.0
    assert normalised_mutual_information(empty) == 0.0
    assert normalised_mutual_information(torch.tensor([[3, 4, 0]])) == 0.0  # H(class) = 0
    with pytest.raises(ValueError, match="2-D"):
        mutual_information(torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        mutual_information(torch.tensor([[1, -1], [0, 2]]))


def test_mi_from_text_and_routing_end_to_end() -> None:
    text = b"for i in range(10):\n    x = i + 1\n"
    class_T = char_classes(text)
    # a router that sends each class to its own expert recovers all of H(class)
    counts = class_expert_counts(class_T, class_T, len(CHAR_CLASSES), len(CHAR_CLASSES))
    assert_close(torch.tensor(mutual_information(counts)), torch.tensor(class_entropy(counts)))
    # a router that sends every byte to expert 0 tells nothing
    zeros = torch.zeros_like(class_T)
    assert mutual_information(class_expert_counts(class_T, zeros, 5, 4)) == 0.0


# --- the random-router baseline --------------------------------------------------------------------


def test_baseline_matches_the_plug_in_bias_for_large_t() -> None:
    gen = torch.Generator().manual_seed(0)
    T, C, E = 20_000, 5, 4
    class_T = torch.randint(0, C, (T,), generator=gen)
    base = random_router_baseline(class_T, E, trials=20, seed=1)
    bias = (C - 1) * (E - 1) / (2 * T)  # Miller's first-order bias of the plug-in MI, 3e-4 nats
    assert 0.5 * bias < base.mean < 1.6 * bias, (base, bias)
    assert 0 < base.std < base.mean and base.trials == 20
    # far below what a router that reads the class scores
    routed = mutual_information(class_expert_counts(class_T, class_T % E, C, E))
    assert base.mean < 1e-3 * routed


def test_baseline_keeps_the_loads_and_is_seeded() -> None:
    class_T = char_classes(b"while True:\n    pass  # 42\n" * 20)
    load = torch.tensor([100, 0, 300, class_T.numel() - 400])
    a = random_router_baseline(class_T, 4, load_E=load, trials=5, seed=3)
    b = random_router_baseline(class_T, 4, load_E=load, trials=5, seed=3)
    assert a == b
    # every byte on one expert: every shuffle scores exactly 0
    one = torch.tensor([0, class_T.numel(), 0, 0])
    assert random_router_baseline(class_T, 4, load_E=one, trials=3) == (0.0, 0.0, 3)


def test_baseline_edge_cases_and_errors() -> None:
    assert random_router_baseline(torch.zeros(0, dtype=torch.long), 4, trials=2).mean == 0.0
    assert random_router_baseline(torch.tensor([3]), 4, trials=2).mean == 0.0  # T = 1
    with pytest.raises(ValueError, match="summing to T=3"):
        random_router_baseline(torch.tensor([0, 1, 2]), 2, load_E=torch.tensor([1, 1]))
    with pytest.raises(ValueError, match="trials"):
        random_router_baseline(torch.tensor([0, 1, 2]), 2, trials=0)


# --- routing a text through a model ----------------------------------------------------------------


def tiny_model(**kw):
    from minimoe.lm.model import LMConfig, TinyLM

    torch.manual_seed(0)
    cfg = dict(seq_len=8, d_model=16, n_layers=2, n_heads=2, n_experts=4, top_k=2, d_ff=16)
    return TinyLM(LMConfig(**{**cfg, **kw}))


TEXT = b"def f(x):\n    return x + 1  # one\n"  # 35 bytes: 4 windows of 8 and one of 3


def test_route_text_matches_the_model_window_by_window() -> None:
    model = tiny_model()
    routed = route_text(model, TEXT)
    assert len(routed) == 2 and all(r.shape == (len(TEXT),) for r in routed)
    model.eval()
    with torch.no_grad():
        for start in range(0, len(TEXT), 8):
            idx = torch.tensor([list(TEXT[start : start + 8])])
            _, results = model(idx)
            for layer, result in enumerate(results):
                first = result.routing.expert_TK[:, 0]
                assert torch.equal(routed[layer][start : start + 8], first), (layer, start)


def test_route_text_runs_in_eval_mode_and_restores_the_mode() -> None:
    model = tiny_model(noise="gumbel")  # selection noise in training mode only
    model.train()
    first, second = route_text(model, TEXT), route_text(model, TEXT)
    assert model.training
    assert all(torch.equal(a, b) for a, b in zip(first, second))  # no noise: deterministic
    model.eval()
    assert all(torch.equal(a, b) for a, b in zip(first, route_text(model, TEXT)))
    assert not model.training


def test_route_text_edge_cases() -> None:
    model = tiny_model()
    assert [r.shape for r in route_text(model, b"")] == [(0,), (0,)]
    assert [r.shape for r in route_text(model, "x")] == [(1,), (1,)]  # T = 1, a str
    assert route_text(tiny_model(moe_every=0), TEXT) == []  # a dense model has no router


def test_measure_specialisation_per_layer() -> None:
    model = tiny_model()
    layers = measure_specialisation(model, TEXT * 4, trials=5, seed=0)
    assert [s.layer for s in layers] == [0, 1]
    class_T = char_classes(TEXT * 4)
    for s, expert_T in zip(layers, route_text(model, TEXT * 4)):
        counts = class_expert_counts(class_T, expert_T, len(CHAR_CLASSES), 4)
        assert torch.equal(s.counts_CE, counts)
        assert s.mi == pytest.approx(mutual_information(counts))
        assert s.normalised == pytest.approx(s.mi / class_entropy(counts))
        load = counts.sum(0)
        assert s.baseline == random_router_baseline(class_T, 4, load_E=load, trials=5, seed=0)
        assert s.z_score == pytest.approx((s.mi - s.baseline.mean) / s.baseline.std)
