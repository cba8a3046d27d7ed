"""Check for exercise 08.5: one step of the layerwise recurrent router (Qiu et al. 2024,
"Layerwise Recurrent Router for Mixture-of-Experts", arXiv 2408.06793).

Each layer's router projects the token to the router state size Z, feeds the projection and the
previous layer's routing state to a shared GRU cell, and scores the experts from the NEW state,
which it hands on to the next layer:

    r_TZ = x_TD @ w_proj_ZD.T;   h_next_TZ = GRUCell(r_TZ, h_TZ);   logits_TE = h_next_TZ @ w_out_EZ.T

The learner writes `recurrent_router_step(x_TD, h_TZ, w_proj_ZD, cell, w_out_EZ) ->
(logits_TE, h_next_TZ)`, compared with `minimoe.zoo.recurrent_router_step`, outputs and gradients.
Known wrong variants: the logits from the projection r (the recurrence skipped), from the old
state h, the GRU's two inputs swapped (cell(h, r): both are (T, Z), so it runs), the old state
handed on instead of the new one.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_generator
from minimoe.zoo import recurrent_router_step

RECURRENT = Exercise("08.5", "one step of the recurrent router", library=(recurrent_router_step,),
                     weights=True)  # fmt: skip

ATOL, RTOL = 1e-5, 1e-4


def _step(x, h, w_proj, cell, w_out, *, logits_from="new", swap=False, hand_on="new"):
    """The right step, with switches that make it a learner's mistake."""
    r = x @ w_proj.t()
    h_next = cell(h, r) if swap else cell(r, h)
    source = {"new": h_next, "old": h, "r": r}[logits_from]
    return torch.cat([source @ w_out.t(), h_next if hand_on == "new" else h], dim=1).double()


def _variants() -> list[tuple[str, Callable]]:
    def v(**kw):
        return lambda *a: _step(*a, **kw)

    return [
        ("the logits come from the projection r, so the recurrence does nothing for the "
         "routing: score the experts from the NEW state, logits = h_next @ w_out_EZ.T",
         v(logits_from="r")),
        ("the logits come from the previous layer's state h; score the experts from the NEW "
         "state h_next = cell(r, h), which already holds this layer's token",
         v(logits_from="old")),
        ("the GRU's inputs are swapped: torch.nn.GRUCell takes (input, hidden), so call "
         "cell(r_TZ, h_TZ) (both are (T, Z), so the swapped call runs and is wrong)",
         v(swap=True)),
        ("the old state is handed on; return the NEW state h_next, which the next layer's "
         "router continues from", v(hand_on="old")),
    ]  # fmt: skip


def _cases():
    for i, (T, D, Z, E) in enumerate([(6, 8, 5, 4), (3, 4, 4, 6), (1, 5, 3, 2), (0, 4, 3, 3)]):
        g = make_generator(880 + i)
        with torch.random.fork_rng():  # GRUCell's own initialisation, seeded
            torch.manual_seed(890 + i)
            cell = torch.nn.GRUCell(Z, Z)
        x = torch.randn(T, D, generator=g)
        h = torch.randn(T, Z, generator=g) * 0.5
        w_proj = torch.randn(Z, D, generator=g) / D**0.5
        w_out = torch.randn(E, Z, generator=g) / Z**0.5
        yield f"T={T}, D={D}, Z={Z}, E={E}", (x, h, w_proj, cell, w_out)


def check_recurrent_router_step(recurrent_router_step_fn: Callable) -> None:
    """Check `recurrent_router_step(x_TD, h_TZ, w_proj_ZD, cell, w_out_EZ)` against the library."""
    n = 0
    for case, args in _cases():
        x, h, w_proj, cell, w_out = args
        T, E, Z = x.shape[0], w_out.shape[0], h.shape[1]
        w_proj_g = w_proj.clone().requires_grad_(True)
        out = RECURRENT.call(recurrent_router_step_fn, x.clone(), h.clone(), w_proj_g, cell,
                             w_out.clone(), case=case)  # fmt: skip
        if not isinstance(out, (tuple, list)) or len(out) != 2:
            raise RECURRENT.fail(f"return the pair (logits_TE, h_next_TZ) on {case}")
        logits, h_next = out
        RECURRENT.expect_tensor(logits, (T, E), x.dtype, case + " (logits_TE)")
        RECURRENT.expect_tensor(h_next, (T, Z), x.dtype, case + " (h_next_TZ)")
        want_logits, want_h = recurrent_router_step(x, h, w_proj, cell, w_out)
        got = torch.cat([logits, h_next], dim=1).double()
        want = torch.cat([want_logits, want_h], dim=1).double()
        diagnose(RECURRENT, got, want, _variants(), args, case, atol=ATOL, rtol=RTOL)
        if T:
            (grad,) = torch.autograd.grad(logits.sum(), w_proj_g, allow_unused=True)
            w_ref = w_proj.clone().requires_grad_(True)
            (want_grad,) = torch.autograd.grad(
                recurrent_router_step(x, h, w_ref, cell, w_out)[0].sum(), w_ref
            )
            if grad is None or not torch.allclose(grad, want_grad, atol=1e-5, rtol=1e-4):
                raise RECURRENT.fail(
                    f"the gradient w.r.t. w_proj_ZD is wrong on {case}: the router learns "
                    "through the projection, so keep it in the graph"
                )
        n += 1
    RECURRENT.passed(f"{n} cases, outputs and the projection's gradient")
