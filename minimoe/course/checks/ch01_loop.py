"""Checks for chapter 01 (from dense FFN to experts): the expert FFN and the loop MoE.

Each compares the learner's function with the library on seeded inputs of several shapes (T = 0,
T = 1, an empty expert, every token on one expert, K = E, D = 100) and, when the answer is wrong,
names the known mistake whose output it matches. Parameter counting is in
`ch01_params`, the toy fix in `ch01_toy`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from minimoe.course.checks._common import (
    Exercise,
    diagnose,
    make_experts,
    make_routing,
    make_tokens,
)
from minimoe.einsum import einsum_moe
from minimoe.experts import ExpertParams, Experts, expert_ffn, ffn
from minimoe.layer import MoELayer
from minimoe.loop import loop_moe
from minimoe.reference import reference_moe
from minimoe.sorted import grouped_mm_moe, padded_bmm_moe

FFN = Exercise("01.1", "one expert FFN", library=(ffn, expert_ffn), weights=True)
# every experts step of the library computes the loop MoE's answer
EXPERTS_STEPS = (
    loop_moe,
    reference_moe,
    einsum_moe,
    grouped_mm_moe,
    padded_bmm_moe,
    Experts,
    MoELayer,
)
LOOP = Exercise("01.2", "the loop MoE", library=EXPERTS_STEPS, weights=True)

ATOL, RTOL = 1e-5, 1e-4  # float32 answers against a float64 reference


# --- 01.1 the expert FFN ---------------------------------------------------------------------


def _ffn_variants(activation: str) -> list[tuple[str, Callable]]:
    def glu(gate: Callable) -> Callable:
        return lambda x, w1, w2, w3, a: (gate(x @ w1.t()) * (x @ w3.t())) @ w2.t()

    def act(fn: Callable) -> Callable:
        return lambda x, w1, w2, w3, a: fn(x @ w1.t()) @ w2.t()

    if activation == "gelu":
        return [
            ("forgot the activation: w2 · (w1 x) is just one linear map", act(lambda h: h)),
            ("used ReLU; this expert uses GELU (F.gelu)", act(F.relu)),
            ("used SiLU; activation='gelu' means F.gelu", act(F.silu)),
            (
                "used the tanh approximation of GELU; use the exact one, F.gelu(h)",
                act(lambda h: F.gelu(h, approximate="tanh")),
            ),
            (
                "applied w2 before the activation: it is w2 · gelu(w1 x), not gelu(w2 · w1 x)",
                lambda x, w1, w2, w3, a: F.gelu(x @ w1.t() @ w2.t()),
            ),
            (
                "used the weights untransposed: they are stored (out, in) as in nn.Linear, "
                "so compute x @ w1.t(), not x @ w1",
                lambda x, w1, w2, w3, a: F.gelu(x @ w1) @ w2,
            ),
        ]
    return [
        ("forgot the activation: SwiGLU is silu(w1 x) * (w3 x)", glu(lambda h: h)),
        (
            "swapped w1 and w3: the SiLU goes on w1 x (the gate), w3 x is the plain 'up' branch",
            lambda x, w1, w2, w3, a: (F.silu(x @ w3.t()) * (x @ w1.t())) @ w2.t(),
        ),
        ("forgot w3: SwiGLU multiplies silu(w1 x) by w3 x", act(F.silu)),
        ("used GELU as the gate; SwiGLU uses SiLU (F.silu)", glu(F.gelu)),
        ("used a sigmoid gate (GLU); SwiGLU uses SiLU, x * sigmoid(x)", glu(torch.sigmoid)),
        ("used ReLU as the gate; SwiGLU uses SiLU (F.silu)", glu(F.relu)),
        ("ignored activation='swiglu' and computed a GELU FFN", act(F.gelu)),
        (
            "used the weights untransposed: they are stored (out, in) as in nn.Linear, "
            "so compute x @ w1.t(), not x @ w1",
            lambda x, w1, w2, w3, a: (F.silu(x @ w1) * (x @ w3)) @ w2,
        ),
    ]


def check_ffn(ffn_fn: Callable) -> None:
    """Check `ffn(x_ND, w1_FD, w2_DF, w3_FD, activation) -> y_ND` against `minimoe.ffn`."""
    # the square cases come first, so transposed weights run and can be diagnosed
    cases = [(5, 6, 6, "gelu"), (5, 6, 6, "swiglu"), (4, 8, 12, "gelu"), (3, 100, 7, "swiglu")]
    cases += [(1, 5, 9, "gelu"), (0, 4, 6, "swiglu")]
    for i, (N, D, F_, activation) in enumerate(cases):
        x_ND = make_tokens(N, D, seed=10 + i)
        p = make_experts(1, D, F_, activation, seed=20 + i)
        w3 = None if p.w3_EFD is None else p.w3_EFD[0]
        args = (x_ND, p.w1_EFD[0], p.w2_EDF[0], w3, activation)
        case = f"N={N}, D={D}, F={F_}, activation={activation!r}"
        out = FFN.call(ffn_fn, *(a.clone() if isinstance(a, torch.Tensor) else a for a in args))
        FFN.expect_tensor(out, (N, D), torch.float32, case)
        w3_64 = None if w3 is None else w3.double()
        expected = ffn(x_ND.double(), p.w1_EFD[0].double(), p.w2_EDF[0].double(), w3_64, activation)
        variants = _ffn_variants(activation)
        diagnose(FFN, out, expected, variants, args, case, atol=ATOL, rtol=RTOL)
    FFN.passed(f"{len(cases)} cases, GELU and SwiGLU")


# --- 01.2 the loop MoE -----------------------------------------------------------------------


def _slot_sum(x, expert_TK, gate_TK, params, keep_TK, *, weight, expert_of) -> torch.Tensor:
    """y[t] = sum_k weight(t, k) * FFN_{expert_of(t, k)}(x[t]), a template for wrong variants."""
    T, K = expert_TK.shape
    y = torch.zeros(T, x.shape[1], dtype=torch.float64)
    for t in range(T):
        for k in range(K):
            w = weight(t, k)
            if w != 0:
                e = expert_of(t, k)
                y[t] += w * _one(x[t : t + 1], params, e)[0]
    return y


def _one(x_1D: torch.Tensor, p: ExpertParams, e: int) -> torch.Tensor:
    w3 = None if p.w3_EFD is None else p.w3_EFD[e].double()
    return ffn(x_1D.double(), p.w1_EFD[e].double(), p.w2_EDF[e].double(), w3, p.activation)


def _keep(keep_TK: torch.Tensor | None, t: int, k: int) -> bool:
    return keep_TK is None or bool(keep_TK[t, k])


def _loop_variants() -> list[tuple[str, Callable]]:
    def slots(weight: Callable, expert_of: Callable | None = None) -> Callable:
        def fn(x, ex, g, p, keep):
            of = expert_of or (lambda t, k: int(ex[t, k]))
            return _slot_sum(
                x, ex, g, p, keep, weight=lambda t, k: weight(g, keep, t, k), expert_of=of
            )

        return fn

    def all_experts(x, ex, g, p, keep):
        return sum(_one(x, p, e) for e in range(p.n_experts))

    def last_slot_wins(x, ex, g, p, keep):
        y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
        for t in range(x.shape[0]):
            for k in range(ex.shape[1]):
                if _keep(keep, t, k):
                    y[t] = float(g[t, k]) * _one(x[t : t + 1], p, int(ex[t, k]))[0]
        return y

    def highest_expert_wins(x, ex, g, p, keep):
        y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
        for e in range(p.n_experts):
            for t in range(x.shape[0]):
                for k in range(ex.shape[1]):
                    if int(ex[t, k]) == e and _keep(keep, t, k):
                        y[t] = float(g[t, k]) * _one(x[t : t + 1], p, e)[0]
        return y

    def gate_on_input(x, ex, g, p, keep):
        y = torch.zeros(x.shape[0], x.shape[1], dtype=torch.float64)
        for t in range(x.shape[0]):
            for k in range(ex.shape[1]):
                if _keep(keep, t, k):
                    y[t] += _one(float(g[t, k]) * x[t : t + 1], p, int(ex[t, k]))[0]
        return y

    def resoftmax(x, ex, g, p, keep):
        return reference_moe(x.double(), ex, g.double().softmax(-1), _f64(p), keep)

    def as_KT(x, ex, g, p, keep):  # expert_TK, gate_TK and keep_TK read as (K, T)
        T, K = ex.shape
        e_KT, g_KT = ex.reshape(K, T), g.reshape(K, T)
        k_KT = None if keep is None else keep.reshape(K, T)
        return _slot_sum(
            x,
            ex,
            g,
            p,
            keep,
            weight=lambda t, k: float(g_KT[k, t]) * _keep(k_KT, k, t),
            expert_of=lambda t, k: int(e_KT[k, t]),
        )

    kept = _keep
    return [
        (
            "forgot the gate weight: each expert's output must be multiplied by gate_TK[t, k]",
            slots(lambda g, keep, t, k: float(kept(keep, t, k))),
        ),
        (
            "ignored keep_TK: a dropped slot (keep_TK[t, k] == False) must contribute nothing",
            slots(lambda g, keep, t, k: float(g[t, k])),
        ),
        (
            "used the slot index k as the expert id; the expert is expert_TK[t, k]",
            slots(lambda g, keep, t, k: float(g[t, k]) * kept(keep, t, k), lambda t, k: k),
        ),
        (
            "summed the outputs of all E experts; only the K experts in expert_TK[t] count",
            all_experts,
        ),
        (
            "used only each token's first choice (k = 0); add all K chosen experts",
            slots(lambda g, keep, t, k: float(g[t, k]) * kept(keep, t, k) * (k == 0)),
        ),
        (
            "overwrote y[t] instead of adding to it (y[t] += ..., or index_add_), so only the "
            "last slot counts",
            last_slot_wins,
        ),
        (
            "overwrote y[tokens] inside the loop over experts instead of adding (index_add_), "
            "so only the last expert counts",
            highest_expert_wins,
        ),
        ("multiplied the input by the gate; the gate scales the expert's output", gate_on_input),
        ("applied a softmax to gate_TK; the gates are given, use them as they are", resoftmax),
        (
            "the token and slot axes are mixed up: expert_TK, gate_TK and keep_TK are (T, K), "
            "token first, and the flat slot s = t * K + k. Reading them as (K, T) (a .view(K, T) "
            "or .reshape(K, T) where .t() was meant, or x repeated with .repeat(K, 1) beside "
            "expert_TK.reshape(-1)) pairs each token with another token's experts and gates",
            as_KT,
        ),
    ]


def _f64(p: ExpertParams) -> ExpertParams:
    w3 = None if p.w3_EFD is None else p.w3_EFD.double()
    return ExpertParams(p.w1_EFD.double(), p.w2_EDF.double(), w3, p.activation)


def check_loop_moe(loop_moe_fn: Callable) -> None:
    """Check `loop_moe(x_TD, expert_TK, gate_TK, params, keep_TK=None) -> y_TD` against the oracle
    `minimoe.reference_moe`."""
    # (T, D, F, E, K, activation, drop, only_expert, keep given)
    cases = [
        (6, 8, 16, 4, 2, "swiglu", 0.0, None, False),
        (7, 8, 12, 4, 2, "swiglu", 0.3, None, True),
        (5, 6, 10, 3, 1, "gelu", 0.0, None, True),
        (3, 8, 8, 6, 1, "swiglu", 0.0, None, True),  # at least three experts get no token
        (6, 8, 8, 4, 1, "gelu", 0.0, 2, True),  # every token on expert 2
        (4, 6, 8, 3, 3, "swiglu", 0.25, None, True),  # K = E
        (4, 100, 8, 3, 2, "gelu", 0.0, None, False),  # D = 100
        (1, 8, 8, 4, 2, "swiglu", 0.0, None, True),
        (0, 8, 8, 4, 2, "swiglu", 0.0, None, True),
    ]
    for i, (T, D, F_, E, K, act, drop, only, give_keep) in enumerate(cases):
        x_TD = make_tokens(T, D, seed=30 + i)
        params = make_experts(E, D, F_, act, seed=40 + i)
        expert_TK, gate_TK, keep_TK = make_routing(
            T, E, K, seed=50 + i, drop=drop, only_expert=only
        )
        keep = keep_TK if give_keep else None
        case = f"T={T}, D={D}, E={E}, K={K}, {act}" + (
            f", {int((~keep_TK).sum())} dropped slots" if give_keep else ", keep_TK=None"
        )
        args = (x_TD, expert_TK, gate_TK, params, keep)
        copies = (x_TD.clone(), expert_TK.clone(), gate_TK.clone(), params)
        out = LOOP.call(loop_moe_fn, *copies, None if keep is None else keep.clone(), case=case)
        LOOP.expect_tensor(out, (T, D), x_TD.dtype, case)
        expected = reference_moe(x_TD.double(), expert_TK, gate_TK.double(), _f64(params), keep)
        diagnose(LOOP, out, expected, _loop_variants(), args, case, atol=ATOL, rtol=RTOL)
    LOOP.passed(f"{len(cases)} cases, incl. T=0, T=1, K=E, empty experts, drops")
