"""The loop-over-experts implementation: for each expert, gather its tokens, run it, add back.

This is how most readable MoE code is written (HF Mixtral's eager path, torchtitan's for-loop
experts): one Python iteration per expert, each a dense matmul over that expert's tokens, and an
`index_add_` that scatters the weighted outputs back to their tokens.
"""

from __future__ import annotations

import torch

from minimoe.experts import ExpertParams, expert_ffn, validate_experts_inputs, zero_with_graph


def loop_moe(
    x_TD: torch.Tensor,
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    params: ExpertParams,
    keep_TK: torch.Tensor | None = None,
) -> torch.Tensor:
    """The experts step with a Python loop over experts; same signature as `reference_moe`.

    Returns:
        y_TD in x's dtype; the gates are cast to it before the weighted sum.
    """
    validate_experts_inputs(x_TD, expert_TK, gate_TK, params, keep_TK)
    # zeros that are already a function of every input: with T = 0 or every slot dropped the
    # loop adds nothing, and y.sum().backward() must still work (zero gradients)
    y_TD = zero_with_graph(x_TD, gate_TK, params)
    routed_TK = torch.ones_like(expert_TK, dtype=torch.bool) if keep_TK is None else keep_TK
    for e in range(params.n_experts):
        token_R, k_R = torch.nonzero((expert_TK == e) & routed_TK, as_tuple=True)
        if token_R.numel() == 0:
            continue  # an expert with no tokens costs nothing
        h_RD = expert_ffn(x_TD[token_R], params, e)
        # in place: an out-of-place index_add would copy all of y_TD once per expert
        y_TD.index_add_(0, token_R, h_RD * gate_TK[token_R, k_R, None].to(h_RD.dtype))
    return y_TD
