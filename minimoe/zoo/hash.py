"""Hash routing: a fixed, random map from token id to expert, learned by nobody.

Roller et al. 2021, "Hash Layers For Large Sparse Models" (arXiv 2106.04426), section 3: each
token id v is sent to expert hash(v), fixed before training. Their "Random Hash" is a random
assignment of the vocabulary to the experts; here a seeded random permutation of the V ids,
taken mod E, so each expert owns V/E ids (within one) and no load-balancing loss is needed for
the vocabulary (the *tokens* are balanced only as far as the text's id frequencies allow: a
frequent byte sends all its occurrences to one expert).

What it gives up: the routing cannot adapt to context (the same byte always meets the same
expert, whatever its neighbours) nor to training (no gradient reaches the routing). It is
causal by construction: a token's expert depends on its own id only.
"""

from __future__ import annotations

import torch

from minimoe.validate import check_index_tensor, check_int

__all__ = ["hash_route", "hash_table"]


def hash_table(vocab_size: int, n_experts: int, seed: int = 0) -> torch.Tensor:
    """expert_V: the expert of each token id, randperm(V) mod E (seeded; each expert V/E ids, ±1).

    Args:
        vocab_size: V (>= 1).
        n_experts: E (>= 1).
        seed: seeds the permutation (`torch.Generator().manual_seed(seed)`).
    """
    V = check_int("vocab_size", vocab_size, low=1)
    E = check_int("n_experts", n_experts, low=1)
    seed = check_int("seed", seed)
    perm_V = torch.randperm(V, generator=torch.Generator().manual_seed(seed))
    return perm_V % E


def hash_route(token_T: torch.Tensor, expert_V: torch.Tensor) -> torch.Tensor:
    """expert_T = expert_V[token_T]: each token's expert, looked up by its id.

    Args:
        token_T: token ids (an integer tensor of any shape, e.g. (T,) or (B, S)), in [0, V).
        expert_V: the table from `hash_table`.

    Returns:
        The experts, int64, with token_T's shape.
    """
    check_index_tensor("token_T", token_T)
    check_index_tensor("expert_V", expert_V, dim=1)
    V = expert_V.shape[0]
    if V < 1:
        raise ValueError("expert_V must map at least one token id, got an empty table")
    if token_T.numel():
        lo, hi = (int(v) for v in torch.aminmax(token_T))
        if lo < 0 or hi >= V:
            raise ValueError(f"token_T: token ids must be in [0, V={V}), got ids from {lo} to {hi}")
    return expert_V.to(token_T.device)[token_T.long()].long()
