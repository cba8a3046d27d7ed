"""Overflow rerouting: a slot its first choice cannot take moves to the next-best expert with room.

Under a capacity C, token choice drops the slots past an expert's C-th (`minimoe.capacity`); the
token then gets fewer experts (or none, the residual alone). Rerouting sends such a slot to the
token's next-best expert, by router probability, among the experts it does not already hold that
still have room; it is dropped only when no such expert is left. GShard (arXiv 2006.16668) and
the Switch Transformer (arXiv 2101.03961) drop the overflow; BASE layers (arXiv 2103.16716) solve
the assignment exactly instead; this is a greedy middle way.

The order, so that rerouting never drops more than the "position" policy at the same C:
1. Round 0 is the "position" policy: slots in token order (all K of a token before the next
   token) take their chosen expert while it has room.
2. Then rounds of K sub-rounds: in sub-round k every still-unplaced k-th slot asks for its
   token's best expert (highest probability) among those the token does not hold and that have
   room after the previous sub-round; each expert accepts the asking slots in token order up to
   its room. A slot with no such expert left is dropped. A refused slot asks again in the next
   round (the expert that refused it is full by then), so at most E rounds.
`minimoe.zoo.reference.reroute_loop` spells out the same order one slot at a time.

The price in a decoder: under the "position" policy a token loses its slot only to earlier
tokens, but a rerouted slot goes where later tokens left room, so an earlier token's experts
depend on later tokens: not causal (`python -m minimoe zoo` measures the leak).
"""

from __future__ import annotations

import torch
from torch import nn

from minimoe.capacity import _assign_slots, expert_capacity
from minimoe.config import MoEConfig
from minimoe.experts import Experts
from minimoe.loop import loop_moe
from minimoe.router import Router
from minimoe.routing import Routing, route
from minimoe.validate import check_expert_ids, check_float_tensor, check_index_tensor, check_int
from minimoe.zoo.result import ZooResult, token_choice_losses

__all__ = ["RerouteLayer", "reroute_slots"]


def reroute_slots(
    probs_TE: torch.Tensor, expert_TK: torch.Tensor, capacity: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Place the T*K slots under capacity C, rerouting overflow to the next-best expert with room.

    Args:
        probs_TE: the router probabilities (the preference order of each token).
        expert_TK: each token's K chosen (distinct) experts.
        capacity: C, slots per expert.

    Returns:
        (final_TK, keep_TK): each slot's expert after rerouting (its first choice where dropped),
        and which slots were placed. No expert gets more than C.
    """
    check_float_tensor("probs_TE", probs_TE, dim=2)
    check_index_tensor("expert_TK", expert_TK, dim=2)
    T, E = probs_TE.shape
    if expert_TK.shape[0] != T:
        raise ValueError(f"expert_TK must have T={T} rows, got {tuple(expert_TK.shape)}")
    check_expert_ids(expert_TK, E)
    C = check_int("capacity", capacity, low=0)
    K = expert_TK.shape[1]
    device = probs_TE.device
    expert_TK = expert_TK.long()
    gate_TK = probs_TE.detach().gather(1, expert_TK)
    keep_TK, _ = _assign_slots(expert_TK, gate_TK, E, C, "position", None, None)
    final_TK = expert_TK.clone()
    held_TE = torch.zeros(T, E, dtype=torch.bool, device=device)
    held_TE.scatter_(1, expert_TK, True)  # a token never takes an expert twice
    room_E = C - torch.bincount(expert_TK[keep_TK], minlength=E)
    pending_TK = ~keep_TK
    score_TE = probs_TE.detach()
    for _ in range(E):
        if not pending_TK.any():
            break
        for k in range(K):
            ask_T = pending_TK[:, k]
            if not ask_T.any():
                continue
            allowed_TE = ~held_TE & (room_E > 0)[None, :]
            masked_TE = score_TE.masked_fill(~allowed_TE, float("-inf"))
            best_T = masked_TE.argmax(dim=1)
            possible_T = allowed_TE.any(dim=1)
            pending_TK[:, k] &= possible_T  # no expert with room left: dropped for good
            ask_T = ask_T & possible_T
            if not ask_T.any():
                continue
            onehot_TE = torch.zeros(T, E, dtype=torch.long, device=device)
            onehot_TE[ask_T, best_T[ask_T]] = 1
            rank_T = (onehot_TE.cumsum(0) - 1).gather(1, best_T[:, None])[:, 0]
            accept_T = ask_T & (rank_T < room_E[best_T])
            final_TK[accept_T, k] = best_T[accept_T]
            keep_TK[accept_T, k] = True
            pending_TK[accept_T, k] = False
            held_TE[accept_T, best_T[accept_T]] = True
            room_E -= torch.bincount(best_T[accept_T], minlength=E)
    return final_TK, keep_TK


class RerouteLayer(nn.Module):
    """Token choice under a capacity, with overflow rerouted (`reroute_slots`) instead of dropped.

    Args:
        cfg: the `MoEConfig`; its capacity_formula must not be "dropless" (the capacity is what
            overflows). Gates: each placed slot gets its token's probability for the expert it
            ended on, renormalised over the token's placed slots ("mixtral") or not ("switch").
        experts_fn: the experts step.

    Statistics: routed_E counts the final experts of all slots (after rerouting), load_E the
    placed ones; drop_rate = the share of slots placed nowhere.
    """

    uses_context = False

    def __init__(self, cfg: MoEConfig, *, experts_fn=loop_moe) -> None:
        super().__init__()
        if cfg.capacity_formula == "dropless":
            raise ValueError("rerouting needs a capacity: set capacity_formula (not 'dropless')")
        if cfg.gating not in ("switch", "mixtral"):
            raise ValueError(
                f"RerouteLayer supports gating 'switch' or 'mixtral', got {cfg.gating!r}"
            )
        self.cfg = cfg
        self.experts_fn = experts_fn
        self.router = Router(cfg.d_model, cfg.n_experts)
        self.experts = Experts(cfg.n_experts, cfg.d_model, cfg.d_ff, cfg.activation)

    def inactive_params(self) -> int:
        per = sum(p.numel() for p in self.experts.parameters()) // self.cfg.n_experts
        return (self.cfg.n_experts - self.cfg.top_k) * per

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ZooResult]:
        cfg = self.cfg
        if x.dim() < 1 or x.shape[-1] != cfg.d_model:
            raise ValueError(f"x must end in d_model={cfg.d_model}, got shape {tuple(x.shape)}")
        x_TD = x.reshape(-1, cfg.d_model)
        T = x_TD.shape[0]
        logits_TE, _ = self.router(x_TD)
        routing = route(logits_TE, cfg.top_k, cfg.gating)
        C = expert_capacity(
            T, cfg.n_experts, cfg.top_k, cfg.capacity_formula, cfg.capacity_factor,
            cfg.min_capacity, cfg.expert_capacity,
        )  # fmt: skip
        final_TK, keep_TK = reroute_slots(routing.probs_TE, routing.expert_TK, C)
        gate_TK = routing.probs_TE.gather(1, final_TK) * keep_TK
        if cfg.gating == "mixtral":
            gate_TK = gate_TK / gate_TK.sum(-1, keepdim=True).clamp_min(1e-20)
        y_TD = self.experts_fn(x_TD, final_TK, gate_TK.to(x.dtype), self.experts.params, keep_TK)
        aux, z = token_choice_losses(routing, cfg.aux_loss, cfg.n_experts)
        final = Routing(final_TK, gate_TK, routing.probs_TE, routing.logits_TE)

        def stats():
            from minimoe.metrics import _routing_stats

            return _routing_stats(final_TK, cfg.n_experts, keep_TK, routing.probs_TE)

        result = ZooResult(aux, z, final, logits_TE, stats, {"keep_TK": keep_TK, "capacity": C})
        return y_TD.view(x.shape), result
