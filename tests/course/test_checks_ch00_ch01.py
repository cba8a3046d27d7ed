"""The chapter 00 and 01 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer below is written the way a learner would write it (not taken from the checks'
own list of variants), so these tests show that every hint a check can give is reachable.
"""

from __future__ import annotations

import functools

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

import minimoe
from minimoe import count_decoder_params, ffn, loop_moe, reference_moe, route
from minimoe.course.checks import (
    check_count_params,
    check_ffn,
    check_loop_moe,
    check_softmax_topk,
    check_toy_fix,
)
from minimoe.course.toys import RowCounter, ToyMoE

# --- 00.1 softmax_topk -------------------------------------------------------------------------


def test_softmax_topk_passes(capsys) -> None:
    check_softmax_topk(lambda l, k: torch.topk(torch.softmax(l, dim=-1), k, dim=-1))
    assert "✓ Exercise 00.1" in capsys.readouterr().out


def test_softmax_topk_refuses_the_library() -> None:
    def wraps_route(l, k):
        r = route(l, k, "switch")
        return r.gate_TK, r.expert_TK

    fails_with(check_softmax_topk, wraps_route, "Exercise 00.1", "calls the library's own `route`")


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda l, k: torch.topk(l, k), ["forgot the softmax"]),
        (lambda l, k: torch.topk(l.softmax(0), k), ["dim=0"]),
        (lambda l, k: torch.topk(l.log_softmax(-1), k), ["log_softmax"]),
        (
            lambda l, k: (lambda v, i: (v / v.sum(-1, keepdim=True), i))(*l.softmax(-1).topk(k)),
            ["renormalised"],
        ),
        (lambda l, k: tuple(t.flip(-1) for t in l.softmax(-1).topk(k)), ["reversed"]),
        (lambda l, k: l.softmax(-1).topk(k, largest=False), ["smallest"]),
        (lambda l, k: l.softmax(-1).topk(k)[::-1], ["probabilities first"]),
        (lambda l, k: None, ["return a pair"]),
        (lambda l, k: l.softmax(-1).topk(1), ["shape"]),
        (lambda l, k: (l.softmax(-1).topk(k)[0], l.softmax(-1).topk(k)[0]), ["integer"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_softmax_topk_wrong(answer, words) -> None:
    fails_with(check_softmax_topk, answer, "Exercise 00.1", *words)


# --- 01.1 ffn ----------------------------------------------------------------------------------


def test_ffn_passes(capsys) -> None:
    check_ffn(_ffn())
    assert "✓ Exercise 01.1 (one expert FFN): passed" in capsys.readouterr().out


def _ffn(gelu=F.gelu, gate=F.silu, swap=False, use_w3=True, transpose=True, w2_first=False):
    def answer(x, w1, w2, w3, activation):
        t = (lambda w: w.t()) if transpose else (lambda w: w)
        if activation == "gelu":
            if w2_first:
                return gelu(x @ t(w1) @ t(w2))
            return gelu(x @ t(w1)) @ t(w2)
        a, b = (w3, w1) if swap else (w1, w3)
        h = gate(x @ t(a)) * (x @ t(b)) if use_w3 else gate(x @ t(a))
        return h @ t(w2)

    return answer


@pytest.mark.parametrize(
    "answer, words",
    [
        (_ffn(gelu=lambda h: h), ["forgot the activation"]),
        (_ffn(gate=lambda h: h), ["forgot the activation"]),
        (_ffn(gelu=F.relu), ["ReLU; this expert uses GELU"]),
        (_ffn(gelu=F.silu), ["used SiLU"]),
        (_ffn(gate=F.relu), ["ReLU as the gate"]),
        (_ffn(gelu=lambda h: F.gelu(h, approximate="tanh")), ["tanh"]),
        (_ffn(w2_first=True), ["w2 before the activation"]),
        (_ffn(transpose=False), ["untransposed"]),
        (_ffn(swap=True), ["swapped w1 and w3"]),
        (_ffn(use_w3=False), ["forgot w3"]),
        (_ffn(gate=F.gelu), ["GELU as the gate"]),
        (_ffn(gate=torch.sigmoid), ["sigmoid"]),
        (lambda x, w1, w2, w3, a: F.gelu(x @ w1.t()) @ w2.t(), ["ignored activation='swiglu'"]),
        (lambda x, w1, w2, w3, a: (F.silu(x @ w1.t()) * (x @ w3.t())) @ w2.t(), ["w3 is None"]),
        (lambda x, w1, w2, w3, a: None, ["returned None", "return"]),
        (lambda x, w1, w2, w3, a: (x @ w1.t()).double() @ w2.t().double(), ["dtype"]),
        (lambda x, w1, w2, w3, a: (x @ w1.t()).numpy(), ["ndarray"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_ffn_wrong(answer, words) -> None:
    fails_with(check_ffn, answer, "Exercise 01.1", *words)


def test_ffn_untransposed_swiglu_only() -> None:
    right, wrong = _ffn(), _ffn(transpose=False)

    def answer(x, w1, w2, w3, activation):
        return (wrong if activation == "swiglu" else right)(x, w1, w2, w3, activation)

    fails_with(check_ffn, answer, "swiglu", "untransposed")


def test_ffn_unknown_mistake_reports_the_difference() -> None:
    message = fails_with(check_ffn, lambda x, w1, w2, w3, a: 1.01 * _ffn()(x, w1, w2, w3, a))
    assert "max abs diff" in message


@pytest.mark.parametrize(
    "answer, words",
    [
        (ffn, ["library's own `ffn`", "minimoe.experts.ffn", "write your own"]),
        (minimoe.ffn, ["library's own `ffn`"]),
        (functools.partial(ffn), ["library's own `ffn`"]),
        (functools.wraps(ffn)(lambda *a: ffn(*a)), ["library's own `ffn`"]),
        (lambda x, w1, w2, w3, a: ffn(x, w1, w2, w3, a), ["calls the library's own `ffn`"]),
        (loop_moe, ["library's own `loop_moe`"]),
    ],
)
def test_ffn_refuses_the_library(answer, words) -> None:
    """The library's own function, imported, wrapped or called, is not an answer."""
    fails_with(check_ffn, answer, "Exercise 01.1", *words)


def test_an_answer_calling_the_library_after_a_crash_names_the_library() -> None:
    def answer(x, w1, w2, w3, a):
        ffn(x, w1, w2, w3, a)
        raise ValueError("later")

    fails_with(check_ffn, answer, "calls the library's own `ffn`")


# --- 01.2 loop_moe -----------------------------------------------------------------------------


def test_loop_moe_passes(capsys) -> None:
    check_loop_moe(_experts_loop())
    check_loop_moe(_per_slot(lambda g, keep, t, k: g[t, k] * _kept(keep, t, k)))
    assert capsys.readouterr().out.count("✓ Exercise 01.2") == 2


@pytest.mark.parametrize(
    "answer, words",
    [
        (loop_moe, ["library's own `loop_moe`", "minimoe.loop"]),
        (reference_moe, ["library's own `reference_moe`"]),
        (minimoe.einsum_moe, ["library's own `einsum_moe`"]),
        (lambda x, ex, g, p, keep=None: loop_moe(x, ex, g, p, keep), ["calls the library's own"]),
        (
            lambda x, ex, g, p, keep=None: minimoe.grouped_mm_moe(x, ex, g, p, keep),
            ["calls the library's own `grouped_mm_moe`"],
        ),
    ],
)
def test_loop_moe_refuses_the_library(answer, words) -> None:
    fails_with(check_loop_moe, answer, "Exercise 01.2", *words)


def _as_KT(x, expert_TK, gate_TK, params, keep_TK=None):
    """expert_TK and gate_TK read as (K, T) with .reshape where .t() was meant."""
    T, K = expert_TK.shape
    e_KT, g_KT = expert_TK.reshape(K, T), gate_TK.reshape(K, T)
    keep_KT = None if keep_TK is None else keep_TK.reshape(K, T)
    y = torch.zeros_like(x)
    for k in range(K):
        for t in range(T):
            if keep_KT is None or keep_KT[k, t]:
                e = int(e_KT[k, t])
                w3 = None if params.w3_EFD is None else params.w3_EFD[e]
                h = ffn(x[t : t + 1], params.w1_EFD[e], params.w2_EDF[e], w3, params.activation)
                y[t] += g_KT[k, t] * h[0]
    return y


def _repeat_not_interleave(x, expert_TK, gate_TK, params, keep_TK=None):
    """Slots flattened token-major (reshape(-1)) but x repeated k-major (.repeat(K, 1))."""
    T, K = expert_TK.shape
    keep_N = torch.ones(T * K, dtype=torch.bool) if keep_TK is None else keep_TK.reshape(-1)
    expert_N, gate_N, x_ND = expert_TK.reshape(-1), gate_TK.reshape(-1), x.repeat(K, 1)
    token_N = torch.arange(T).repeat(K)  # the token of slot n, read k-major
    y = torch.zeros_like(x)
    for e in range(params.n_experts):
        n = torch.nonzero((expert_N == e) & keep_N).squeeze(1)
        w3 = None if params.w3_EFD is None else params.w3_EFD[e]
        h = ffn(x_ND[n], params.w1_EFD[e], params.w2_EDF[e], w3, params.activation)
        y.index_add_(0, token_N[n], gate_N[n, None] * h)
    return y


@pytest.mark.parametrize("answer", [_as_KT, _repeat_not_interleave])
def test_loop_moe_token_and_slot_axes_swapped(answer) -> None:
    message = fails_with(check_loop_moe, answer, "Exercise 01.2", "token and slot axes", "(K, T)")
    assert "elements differ" not in message


def _per_slot(weight, expert=lambda ex, t, k: int(ex[t, k]), assign=False):
    """A learner's per-token loop with one mistake plugged in."""

    def answer(x, expert_TK, gate_TK, params, keep_TK=None):
        y = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for k in range(expert_TK.shape[1]):
                w = weight(gate_TK, keep_TK, t, k)
                e = expert(expert_TK, t, k)
                w3 = None if params.w3_EFD is None else params.w3_EFD[e]
                out = w * ffn(
                    x[t : t + 1], params.w1_EFD[e], params.w2_EDF[e], w3, params.activation
                )
                if assign:
                    if keep_TK is None or keep_TK[t, k]:
                        y[t] = out[0]
                else:
                    y[t] = y[t] + out[0]
        return y

    return answer


def _kept(keep, t, k):
    return 1.0 if keep is None or keep[t, k] else 0.0


def _experts_loop(assign=False, all_experts=False):
    def answer(x, expert_TK, gate_TK, params, keep_TK=None):
        y = torch.zeros_like(x)
        keep = torch.ones_like(expert_TK, dtype=torch.bool) if keep_TK is None else keep_TK
        for e in range(params.n_experts):
            w3 = None if params.w3_EFD is None else params.w3_EFD[e]
            if all_experts:
                y = y + ffn(x, params.w1_EFD[e], params.w2_EDF[e], w3, params.activation)
                continue
            t, k = torch.nonzero((expert_TK == e) & keep, as_tuple=True)
            out = gate_TK[t, k, None] * ffn(
                x[t], params.w1_EFD[e], params.w2_EDF[e], w3, params.activation
            )
            if assign:
                y[t] = out
            else:
                y = y.index_add(0, t, out)
        return y

    return answer


@pytest.mark.parametrize(
    "answer, words",
    [
        (_per_slot(lambda g, keep, t, k: _kept(keep, t, k)), ["forgot the gate weight"]),
        (_per_slot(lambda g, keep, t, k: g[t, k]), ["ignored keep_TK"]),
        (
            _per_slot(lambda g, keep, t, k: g[t, k] * _kept(keep, t, k), lambda ex, t, k: k),
            ["slot index k"],
        ),
        (_experts_loop(all_experts=True), ["all E experts"]),
        (_per_slot(lambda g, keep, t, k: g[t, k] * _kept(keep, t, k) * (k == 0)), ["first choice"]),
        (_per_slot(lambda g, keep, t, k: g[t, k], assign=True), ["overwrote y[t]"]),
        (_experts_loop(assign=True), ["overwrote y[tokens]"]),
        (
            lambda x, ex, g, p, keep=None: _experts_loop()(x, ex, g.softmax(-1), p, keep),
            ["applied a softmax to gate_TK"],
        ),
        (lambda x, ex, g, p, keep=None: _experts_loop()(x, ex, g, p, keep).double(), ["dtype"]),
        (lambda x, ex, g, p, keep=None: _experts_loop()(x, ex, g, p, keep)[:1], ["shape"]),
        (lambda x, ex, g, p, keep=None: None, ["returned None"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_loop_moe_wrong(answer, words) -> None:
    fails_with(check_loop_moe, answer, "Exercise 01.2", *words)


def test_loop_moe_gate_on_input() -> None:
    def answer(x, expert_TK, gate_TK, params, keep_TK=None):
        y = torch.zeros_like(x)
        for t in range(x.shape[0]):
            for k in range(expert_TK.shape[1]):
                if keep_TK is None or keep_TK[t, k]:
                    e = int(expert_TK[t, k])
                    w3 = None if params.w3_EFD is None else params.w3_EFD[e]
                    xg = gate_TK[t, k] * x[t : t + 1]
                    y[t] += ffn(xg, params.w1_EFD[e], params.w2_EDF[e], w3, params.activation)[0]
        return y

    fails_with(check_loop_moe, answer, "multiplied the input by the gate")


def test_loop_moe_crash_is_reported() -> None:
    fails_with(check_loop_moe, lambda x, ex, g, p, keep=None: x @ x, "raised RuntimeError")


# --- 01.3 count_params -------------------------------------------------------------------------


def right_count(**c):
    return _count("")(**c)


def test_count_params_passes(capsys) -> None:
    check_count_params(right_count)
    assert "46.7B total / 12.9B active" in capsys.readouterr().out


def _count(mistake: str):
    """A learner's count with one mistake."""

    def answer(
        vocab_size, hidden_size, n_layers, n_heads, n_kv_heads, intermediate_size, n_experts,
        top_k, tied_embeddings,
    ):  # fmt: skip
        D, F_, E, K = hidden_size, intermediate_size, n_experts, top_k
        hd = D // n_heads
        kv = D if mistake == "kv" else n_kv_heads * hd
        attn = D * D + 2 * D * kv + (0 if mistake == "o" else D * D)
        norms = 0 if mistake == "norms" else 2 * D
        router = 0 if mistake == "router" else E * D
        expert = (2 if mistake == "w3" else 3) * D * F_
        n_emb = 1 if tied_embeddings else 2
        if mistake == "lm_head":
            n_emb = 2 if tied_embeddings else 1
        emb = n_emb * vocab_size * D + (0 if mistake == "norms" else D)
        total = emb + n_layers * (attn + norms + router + E * expert)
        k_active = {"all": E, "one": 1}.get(mistake, K)
        active = (0 if mistake == "active_emb" else emb) + n_layers * (
            attn + norms + router + k_active * expert
        )
        return total, active

    return answer


@pytest.mark.parametrize(
    "mistake, words",
    [
        ("all", ["every expert as active"]),
        ("one", ["one expert as active"]),
        ("router", ["forgot the router"]),
        ("w3", ["forgot w3"]),
        ("kv", ["n_kv_heads"]),
        ("o", ["output projection"]),
        ("norms", ["RMSNorm"]),
        ("lm_head", ["lm_head"]),
        ("active_emb", ["embeddings out of the active"]),
    ],
)
def test_count_params_wrong(mistake, words) -> None:
    fails_with(check_count_params, _count(mistake), "Exercise 01.3", *words)


def test_count_params_other_failures() -> None:
    fails_with(check_count_params, lambda **c: None, "return a pair")
    fails_with(check_count_params, lambda **c: ("a", "b"), "must be ints")
    fails_with(check_count_params, not_done, "not solved yet")
    message = fails_with(check_count_params, lambda **c: tuple(n + 1 for n in right_count(**c)))
    assert "off by +1" in message


def test_count_params_refuses_the_library() -> None:
    fails_with(check_count_params, count_decoder_params, "library's own `count_decoder_params`")
    fails_with(
        check_count_params,
        lambda **c: count_decoder_params(**c),
        "calls the library's own `count_decoder_params`",
    )


# --- 01.4 the toy fix --------------------------------------------------------------------------


def sparse_fix(toy, x_TD):
    r = toy.routing(x_TD)
    y_TD = torch.zeros_like(x_TD)
    for e, expert in enumerate(toy.experts):
        t, k = torch.nonzero(r.expert_TK == e, as_tuple=True)
        if t.numel():
            y_TD = y_TD.index_add(0, t, expert(x_TD[t]) * r.gate_TK[t, k, None])
    return y_TD


def test_toy_fix_passes(capsys) -> None:
    check_toy_fix(sparse_fix)
    assert "✓ Exercise 01.4" in capsys.readouterr().out


def test_toy_bug_is_wrong_and_dense() -> None:
    toy = ToyMoE(8, 16, 4, 2, seed=0)
    x_TD = torch.randn(10, 8)
    with torch.no_grad(), RowCounter(toy) as counter:
        y_bug = toy(x_TD)
    assert counter.total == 4 * 10  # E * T rows: every expert on every token
    with torch.no_grad(), RowCounter(toy) as counter:
        y_fix = sparse_fix(toy, x_TD)
    assert counter.total == 2 * 10  # T * K rows
    r = toy.routing(x_TD)
    oracle = reference_moe(x_TD, r.expert_TK, r.gate_TK, toy.expert_params())
    assert torch.allclose(y_fix, oracle, atol=1e-5)
    assert not torch.allclose(y_bug, oracle, atol=1e-2)


def _dense_right(toy, x_TD):
    """Right values, but every expert runs on every token (fake sparse)."""
    r = toy.routing(x_TD)
    y_TD = torch.zeros_like(x_TD)
    for e, expert in enumerate(toy.experts):
        w_T = (r.gate_TK * (r.expert_TK == e)).sum(-1, keepdim=True)
        y_TD = y_TD + w_T * expert(x_TD)
    return y_TD


def _weighted_all(weight):
    def answer(toy, x_TD):
        probs_TE = toy.router(x_TD).softmax(-1)
        return sum(weight(probs_TE, e) * ex(x_TD) for e, ex in enumerate(toy.experts))

    return answer


def _top_k(renormalise=True, first_only=False, gates=True):
    def answer(toy, x_TD):
        gate_TK, expert_TK = toy.router(x_TD).softmax(-1).topk(toy.top_k, dim=-1)
        if renormalise:
            gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True)
        if not gates:
            gate_TK = torch.ones_like(gate_TK)
        K = 1 if first_only else toy.top_k
        y_TD = torch.zeros_like(x_TD)
        for e, expert in enumerate(toy.experts):
            t, k = torch.nonzero(expert_TK[:, :K] == e, as_tuple=True)
            y_TD = y_TD.index_add(0, t, expert(x_TD[t]) * gate_TK[t, k, None])
        return y_TD

    return answer


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda toy, x: toy(x), ["original forward"]),
        (_weighted_all(lambda p, e: 1.0), ["all E experts"]),
        (_weighted_all(lambda p, e: p[:, e : e + 1]), ["dense mixture"]),
        (_top_k(renormalise=False), ["renormalise"]),
        (_top_k(first_only=True), ["first choice"]),
        (_top_k(gates=False), ["gate weights"]),
        (_dense_right, ["output is right", "fake sparse", "T*K"]),
        (
            lambda toy, x: toy.expert_params().w1_EFD.sum() * 0 + sparse_fix(toy, x) * 0,
            ["wrong values"],
        ),
        (
            lambda toy, x: reference_moe(
                x, *(lambda r: (r.expert_TK, r.gate_TK))(toy.routing(x)), toy.expert_params()
            ),
            ["processed no rows"],
        ),
        (not_done, ["not solved yet"]),
    ],
)
def test_toy_fix_wrong(answer, words) -> None:
    fails_with(check_toy_fix, answer, "Exercise 01.4", *words)


def test_toy_rejects_bad_top_k() -> None:
    with pytest.raises(ValueError, match="top_k"):
        ToyMoE(4, 4, 2, 3)


def test_route_matches_toy_topk() -> None:
    # the toy's routing is the "mixtral" convention: softmax, top-k, renormalise
    toy = ToyMoE(6, 6, 5, 2, seed=3)
    x_TD = torch.randn(7, 6)
    with torch.no_grad():
        gate_TK, expert_TK = toy.router(x_TD).softmax(-1).topk(2)
        r = route(toy.router(x_TD), 2, "mixtral")
    assert torch.equal(r.expert_TK, expert_TK)
    assert torch.allclose(r.gate_TK, gate_TK / gate_TK.sum(-1, keepdim=True))


# --- the checks' inputs and the notebooks' check cells -----------------------------------------


@pytest.mark.parametrize("only_expert", [None, 0, 3])
def test_make_routing_gives_distinct_experts(only_expert) -> None:
    from minimoe.course.checks._common import make_routing

    expert_TK, gate_TK, keep_TK = make_routing(50, 6, 3, seed=1, drop=0.3, only_expert=only_expert)
    assert all(len(set(row)) == 3 for row in expert_TK.tolist())
    if only_expert is not None:
        assert (expert_TK[:, 0] == only_expert).all()
    assert torch.allclose(gate_TK.sum(-1), torch.ones(50))
    assert 0 < int((~keep_TK).sum()) < 150


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/00 and 01 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch00_warmup as ch00
    from minimoe.course.checks import ch01_loop as ch01
    from minimoe.course.checks import ch01_params, ch01_toy

    exercises = (ch00.WARMUP, ch01.FFN, ch01.LOOP, ch01_params.PARAMS, ch01_toy.TOY)
    assert_check_cells_match(["00_start_here.ipynb", "01_dense_to_experts.ipynb"], exercises)


def test_toy_fix_refuses_the_toys_own_forward() -> None:
    fails_with(check_toy_fix, ToyMoE.forward, "Exercise 01.4", "library's own `ToyMoE.forward`")


def test_the_library_watch_leaves_a_profiler_it_did_not_set() -> None:
    """The watch for calls into the library never replaces nor removes another profiler (one the
    answer set stays visible to whoever looks for it afterwards)."""
    import sys

    def profiler(frame, event, arg):
        return None

    def answer(x, w1, w2, w3, a):
        sys.setprofile(profiler)
        return _ffn()(x, w1, w2, w3, a)

    try:
        check_ffn(answer)
        assert sys.getprofile() is profiler
    finally:
        sys.setprofile(None)
    check_ffn(_ffn())
    assert sys.getprofile() is None
