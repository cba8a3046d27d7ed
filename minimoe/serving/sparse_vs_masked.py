"""Native sparse dispatch or no saving: every expert run on every token (masked) against only the
chosen ones (sparse), for a decode step and a prefill step.

A serving stack without a sparse MoE kernel can still run an MoE model: run all E experts on
every token and multiply each output by the token's gate for that expert, zero for the experts
it did not choose (`masked_moe`). The result is the same; the cost is that of a dense model E/K
times wider than the active one. The course's guide says an MoE model saves money at inference
only when dispatch is native; `measure` shows the ratio on this CPU, with the loop over experts
(`minimoe.loop_moe`, which runs each expert on its own tokens only) as the sparse side.

A decode step has few tokens (B, one per sequence): the sparse side runs only the experts the
batch touched (`expected_experts_touched`); a prefill step has B * S tokens and touches every
expert, each on about K/E of the tokens. Timings are medians of interleaved repeats in one run;
their ratio is what carries over to another machine, not the milliseconds.
"""

from __future__ import annotations

import time

import torch

from minimoe.experts import ExpertParams, activate
from minimoe.loop import loop_moe
from minimoe.validate import check_int

__all__ = ["masked_moe", "measure"]


def masked_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """Every expert on every token, weighted by a dense (T, E) gate matrix that is zero outside
    each token's K choices; same signature and result as `minimoe.reference_moe`."""
    T, E = x_TD.shape[0], params.n_experts
    gate_TK = gate_TK if keep_TK is None else gate_TK * keep_TK
    gate_TE = torch.zeros(T, E, dtype=x_TD.dtype, device=x_TD.device)
    gate_TE.scatter_add_(1, expert_TK, gate_TK.to(x_TD.dtype))
    h_ETF = torch.einsum("td,efd->etf", x_TD, params.w1_EFD)
    u_ETF = None if params.w3_EFD is None else torch.einsum("td,efd->etf", x_TD, params.w3_EFD)
    y_ETD = torch.einsum("etf,edf->etd", activate(h_ETF, u_ETF, params.activation), params.w2_EDF)
    return torch.einsum("etd,te->td", y_ETD, gate_TE)


def _times_ms(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return times


@torch.no_grad()
def measure(
    batch_sizes: tuple[int, ...] = (1, 4, 16, 64),
    *,
    prefill_len: int = 64,
    d_model: int = 512,
    d_ff: int = 1024,
    n_experts: int = 8,
    top_k: int = 2,
    repeats: int = 7,
    seed: int = 0,
) -> list[dict]:
    """Masked against sparse experts steps, decode (B tokens) and prefill (B * prefill_len).

    Returns:
        One dict per (phase, batch): phase, batch, tokens, experts_touched (mean per layer),
        masked_ms, sparse_ms (medians), masked_over_sparse, max_abs_diff (of the outputs).
    """
    E, K = (
        check_int("n_experts", n_experts, low=1),
        check_int("top_k", top_k, low=1, high=n_experts),
    )
    D, F = check_int("d_model", d_model, low=1), check_int("d_ff", d_ff, low=1)
    repeats = check_int("repeats", repeats, low=1)
    gen = torch.Generator().manual_seed(seed)
    params = ExpertParams(
        torch.randn(E, F, D, generator=gen) / D**0.5,
        torch.randn(E, D, F, generator=gen) / F**0.5,
        torch.randn(E, F, D, generator=gen) / D**0.5,
        "swiglu",
    )
    rows = []
    for phase in ("decode", "prefill"):
        for B in batch_sizes:
            T = check_int("batch", B, low=1) * (1 if phase == "decode" else prefill_len)
            x_TD = torch.randn(T, D, generator=gen)
            logits_TE = torch.randn(T, E, generator=gen)
            top_TK = torch.topk(logits_TE, K, dim=-1)
            expert_TK, gate_TK = top_TK.indices, torch.softmax(top_TK.values, dim=-1)
            masked = masked_moe(x_TD, expert_TK, gate_TK, params)
            sparse = loop_moe(x_TD, expert_TK, gate_TK, params)
            masked_ms, sparse_ms = [], []
            for _ in range(repeats):  # interleaved, so a busy spell hits both
                masked_ms += _times_ms(lambda: masked_moe(x_TD, expert_TK, gate_TK, params), 1)  # noqa: B023
                sparse_ms += _times_ms(lambda: loop_moe(x_TD, expert_TK, gate_TK, params), 1)  # noqa: B023
            m, s = sorted(masked_ms)[repeats // 2], sorted(sparse_ms)[repeats // 2]
            rows.append(
                {
                    "phase": phase,
                    "batch": B,
                    "tokens": T,
                    "experts_touched": int(torch.unique(expert_TK).numel()),
                    "masked_ms": m,
                    "sparse_ms": s,
                    "masked_over_sparse": m / s,
                    "max_abs_diff": float((masked - sparse).abs().max()),
                }
            )
    return rows
