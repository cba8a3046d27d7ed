"""Checks that expert parallelism computes what one process computes.

`check_rank(rank, world_size, case)` runs on every rank (under `launch`): it builds the same
unsharded `MoELayer` on every rank (same seed), its expert-parallel twin
(`ExpertParallelMoE.from_layer`), runs this rank's tokens through the twin, and compares with
the unsharded layer run in this one process on the same tokens:

- outputs y and the aux loss of this rank's tokens;
- gradients, with every rank's loss the mean over its tokens of <y, g> plus the aux loss
  and the reference's loss the mean of those W losses: the tokens' gradients, the router's
  and the experts' (after `sync_gradients`), each against the reference's slice.

The one-process reference runs each rank's tokens as its own routing group, as every rank does
(capacity and the balancing loss are per routing group; with dropless routing and no aux loss
in the loss the grouping changes nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch
import torch.distributed as dist

from minimoe.config import MoEConfig
from minimoe.distributed.edp import expert_data_parallel_groups, sync_gradients
from minimoe.distributed.ep import ExpertParallelMoE
from minimoe.layer import MoELayer
from minimoe.sorted import grouped_mm_moe


@dataclass(frozen=True)
class Case:
    """One comparison.

    Attributes:
        name: what it checks.
        tokens: T per rank (a tuple of W numbers, or one number for every rank).
        experts_per_rank: J (E = J * EP).
        top_k: K.
        dispatch: "dropless" or "capacity".
        skew: "none", or "one_rank": every token routed to the last rank's experts (the
            other ranks' experts get no tokens at all).
        ep_size: EP (None: W); EP < W is expert-data parallelism.
        aux_coef: weight of the aux loss in the loss (its gradient reaches the router).
        capacity_factor: for dispatch="capacity" (DeepSpeed's formula).
        device: "cpu" (gloo), or "cuda" under a launch with device="cuda" (NCCL): the current
            GPU of each rank.
    """

    name: str
    tokens: int | tuple[int, ...] = 8
    experts_per_rank: int = 2
    top_k: int = 2
    dispatch: str = "dropless"
    skew: str = "none"
    ep_size: int | None = None
    aux_coef: float = 0.0
    capacity_factor: float = 1.0
    d_model: int = 16
    d_ff: int = 24
    activation: str = "swiglu"
    seed: int = 0
    device: str = "cpu"


CASES = (
    Case("dropless"),
    Case("dropless, aux loss in the loss", aux_coef=0.1),
    Case("all tokens to the last rank's experts", skew="one_rank"),
    Case("T = 1 per rank", tokens=1),
    Case("fixed capacity (drops)", dispatch="capacity", capacity_factor=1.0, tokens=12),
    Case("K = 1, gelu", top_k=1, activation="gelu", experts_per_rank=1),
)


def _tokens(case: Case, W: int) -> list[int]:
    return [case.tokens] * W if isinstance(case.tokens, int) else list(case.tokens)


def check_rank(rank: int, world_size: int, case: Case) -> dict[str, float]:
    """Run `case` on this rank; returns the largest absolute differences from one process."""
    W = world_size
    EP = case.ep_size or W
    groups = expert_data_parallel_groups(EP) if EP < W else None
    ep_group = groups.ep_group if groups is not None else None
    E = case.experts_per_rank * EP
    cfg = MoEConfig(
        d_model=case.d_model,
        d_ff=case.d_ff,
        n_experts=E,
        top_k=case.top_k,
        activation=case.activation,
        capacity_formula="deepspeed" if case.dispatch == "capacity" else "dropless",
        capacity_factor=case.capacity_factor,
        seed=case.seed,
    )
    torch.manual_seed(case.seed)  # the same weights and tokens on every rank
    single = MoELayer(cfg, experts_fn=grouped_mm_moe)
    T_W = _tokens(case, W)
    x_TD = torch.randn(sum(T_W), cfg.d_model)
    g_TD = torch.randn(sum(T_W), cfg.d_model)
    if case.skew == "one_rank":  # a direction every token shares, that only the last rank's
        u_D = torch.randn(cfg.d_model)  # experts' router rows point along
        u_D = u_D / u_D.norm()
        last_J = torch.arange(E) // case.experts_per_rank == EP - 1
        with torch.no_grad():
            single.router.w_ED += torch.where(last_J, 10.0, -10.0)[:, None] * u_D
        x_TD = x_TD + 3.0 * u_D
    if case.device != "cpu":
        device = torch.device(case.device, torch.cuda.current_device())
        single, x_TD, g_TD = single.to(device), x_TD.to(device), g_TD.to(device)
    ep = ExpertParallelMoE.from_layer(single, ep_group, dispatch=case.dispatch)
    start = [sum(T_W[:w]) for w in range(W)]

    def loss_of(layer: torch.nn.Module, x: torch.Tensor, g: torch.Tensor):
        y, result = layer(x)
        loss = (y * g).sum() / max(1, x.shape[0]) + case.aux_coef * result.aux_loss
        return y, result, loss

    # the expert-parallel run: this rank's tokens
    mine = slice(start[rank], start[rank] + T_W[rank])
    x_mine = x_TD[mine].clone().requires_grad_(True)
    y_ep, res_ep, loss_ep = loss_of(ep, x_mine, g_TD[mine])
    loss_ep.backward()
    sync_gradients(ep, groups)
    # the one-process reference: every rank's tokens as its own routing group, mean of losses
    x_ref = x_TD.clone().requires_grad_(True)
    total, outs = 0.0, []
    for w in range(W):
        part = slice(start[w], start[w] + T_W[w])
        y, res, loss = loss_of(single, x_ref[part], g_TD[part])
        outs.append((y, res))
        total = total + loss / W
    total.backward()  # type: ignore[union-attr]
    y_ref, res_ref = outs[rank]
    idx = ep.local_experts_J
    diffs = {
        "y": _maxdiff(y_ep, y_ref),
        "aux_loss": _maxdiff(res_ep.aux_loss, res_ref.aux_loss),
        # a token's gradient is local (not synchronised): its rank's loss alone, not the mean
        "grad_x": _maxdiff(x_mine.grad, W * x_ref.grad[mine]),
        "grad_router": _maxdiff(ep.router.w_ED.grad, single.router.w_ED.grad),
        "grad_w1": _maxdiff(ep.experts.w1_EFD.grad, single.experts.w1_EFD.grad[idx]),
        "grad_w2": _maxdiff(ep.experts.w2_EDF.grad, single.experts.w2_EDF.grad[idx]),
        "kept_slots": float((res_ep.keep_TK != res_ref.keep_TK).sum()),
    }
    counts = {"dropped_slots": int((~res_ep.keep_TK).sum()), "tokens": T_W[rank]}
    if ep.experts.w3_EFD is not None and single.experts.w3_EFD is not None:
        diffs["grad_w3"] = _maxdiff(ep.experts.w3_EFD.grad, single.experts.w3_EFD.grad[idx])
    dist.barrier()
    return {"max_abs_diff": diffs, **counts}


def _maxdiff(a: torch.Tensor | None, b: torch.Tensor | None) -> float:
    if a is None or b is None:
        raise AssertionError("a gradient is missing")
    if a.shape != b.shape:
        raise AssertionError(f"shapes differ: {tuple(a.shape)} and {tuple(b.shape)}")
    return float((a.detach() - b.detach()).abs().max()) if a.numel() else 0.0


def refusal_message(rank: int, world_size: int, n_experts: int) -> str:
    """The error an `ExpertParallelMoE` of n_experts over this group raises ("" if none)."""
    try:
        ExpertParallelMoE(MoEConfig(d_model=8, d_ff=8, n_experts=n_experts, top_k=1))
    except ValueError as exc:
        return str(exc)
    return ""


def fail_on_rank(rank: int, world_size: int, bad_rank: int) -> int:
    """Raise on `bad_rank`; the other ranks wait for it in a collective (a test of `launch`)."""
    if rank == bad_rank:
        raise ValueError(f"a deliberate failure on rank {rank}")
    dist.all_reduce(torch.ones(1))
    return rank


def hang_on_rank(rank: int, world_size: int, bad_rank: int) -> int:
    """`bad_rank` never joins the collective the others wait in (a test of the group timeout)."""
    if rank == bad_rank:
        import time

        time.sleep(3600)
    dist.all_reduce(torch.ones(1))
    return rank


def check_cases(
    rank: int, world_size: int, cases: tuple[Case, ...] = CASES, refuse_n_experts: int = 0
) -> dict:
    """Every case on this rank: {case name: its differences}; with refuse_n_experts, also
    "refusal": the error a layer of that many experts raises over this group."""
    out: dict = {c.name: check_rank(rank, world_size, c) for c in cases}
    if refuse_n_experts:
        out["refusal"] = refusal_message(rank, world_size, refuse_n_experts)
    return out


def uneven(case: Case, **changes) -> Case:
    """A copy of a case with fields changed (for per-world-size variants)."""
    return replace(case, **changes)
