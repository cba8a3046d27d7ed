"""Check for exercise 01.4: fix the toy MoE that runs every expert on every token.

The learner writes `toy_moe_forward(toy, x_TD) -> y_TD` for a `minimoe.course.toys.ToyMoE`. The
answer must equal `minimoe.reference_moe` on the toy's own routing, and be sparse: the experts
together process T*K rows, counted by forward hooks, not E*T ("fake sparse",
kyegomez/SwitchTransformers issue #17).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_tokens
from minimoe.course.toys import RowCounter, ToyMoE
from minimoe.reference import reference_moe

TOY = Exercise("01.4", "fix the toy MoE")  # the experts are modules: no weight layout to get wrong

ATOL, RTOL = 1e-5, 1e-4  # float32 answers against the oracle on float32 weights


def _toy_variants(toy: ToyMoE) -> list[tuple[str, Callable]]:
    def weighted_all(weights: Callable) -> Callable:
        def fn(x):
            y = torch.zeros_like(x)
            for e, expert in enumerate(toy.experts):
                y = y + weights(x, e) * expert(x)
            return y

        return fn

    def probs(x):
        return toy.router(x).softmax(-1)

    def switch(x):
        r = toy.routing(x)
        g = probs(x).gather(1, r.expert_TK)
        return reference_moe(x, r.expert_TK, g, toy.expert_params())

    def first_only(x):
        r = toy.routing(x)
        return reference_moe(x, r.expert_TK[:, :1], r.gate_TK[:, :1], toy.expert_params())

    def no_gate(x):
        r = toy.routing(x)
        return reference_moe(x, r.expert_TK, torch.ones_like(r.gate_TK), toy.expert_params())

    return [
        ("this is still the toy's original forward", lambda x: toy(x)),
        (
            "added all E experts' outputs; only the K chosen experts of each token count",
            weighted_all(lambda x, e: 1.0),
        ),
        (
            "weighted every expert by its full softmax probability: that is a dense mixture; "
            "keep only the top-k experts",
            weighted_all(lambda x, e: probs(x)[:, e : e + 1]),
        ),
        (
            "forgot to renormalise: the toy's router (as Mixtral's) divides the top-k "
            "probabilities by their sum",
            switch,
        ),
        ("used only each token's first choice; add all K chosen experts", first_only),
        ("forgot the gate weights: multiply each chosen expert's output by its gate", no_gate),
    ]


def check_toy_fix(toy_moe_forward: Callable) -> None:
    """Check `toy_moe_forward(toy, x_TD) -> y_TD`: equal to the oracle on the toy's own routing,
    and sparse: the experts together process exactly T*K rows, not E*T."""
    # (T, D, F, E, K)
    cases = [
        (10, 8, 16, 4, 2),
        (1, 6, 5, 3, 1),
        (12, 8, 8, 3, 3),
        (32, 8, 8, 8, 2),
        (0, 4, 4, 2, 1),
    ]
    for i, (T, D, F_, E, K) in enumerate(cases):
        toy = ToyMoE(D, F_, E, K, seed=60 + i)
        x_TD = make_tokens(T, D, seed=70 + i)
        case = f"a ToyMoE(d_model={D}, d_ff={F_}, n_experts={E}, top_k={K}) on T={T} tokens"
        with torch.no_grad():
            with RowCounter(toy) as counter:
                out = TOY.call(toy_moe_forward, toy, x_TD.clone(), case=case)
            TOY.expect_tensor(out, (T, D), x_TD.dtype, case)
            r = toy.routing(x_TD)
            expected = reference_moe(x_TD, r.expert_TK, r.gate_TK, toy.expert_params())
            variants = _toy_variants(toy)
            diagnose(TOY, out, expected, variants, (x_TD,), case, atol=ATOL, rtol=RTOL)
        if T > 0 and counter.total == 0:
            raise TOY.fail(
                f"the experts processed no rows on {case}: call each expert module, "
                "toy.experts[e](x_rows), on the rows routed to it"
            )
        if counter.total != T * K:
            extra = " (every expert on every token: fake sparse)" if counter.total >= T * E else ""
            raise TOY.fail(
                f"the output is right, but the experts processed {counter.total} rows on {case}; "
                f"a sparse MoE runs each token through its K experts only: T*K = {T * K} rows"
                f"{extra}. Gather each expert's tokens and run the expert on those rows only"
            )
    TOY.passed(f"{len(cases)} toys, outputs equal the oracle, compute is T*K rows")
