"""Parity of minimoe's DeepSpeed conventions with DeepSpeed's own gating code (`moe/sharded_moe.py`).

DeepSpeed's gates return (l_aux, combine_weights [T, E, C], dispatch_mask [T, E, C], exp_counts).
We build the same combine tensor from minimoe's pieces (experts, gates after drop and
renormalisation, buffer positions, kept slots) and compare everything on the same logits:

| DeepSpeed                                   | minimoe                                                   |
|---------------------------------------------|-----------------------------------------------------------|
| `top1gating(use_rts=False)`                 | gating "switch", K=1, capacity "deepspeed"                  |
| `top2gating(top2_2nd_expert_sampling=False)`| gating "mixtral", K=2, policy "k_major", renormalise       |
| `topkgating(drop_policy="position")`        | gating "mixtral", policy "position", renormalise            |
| `topkgating(drop_policy="probs")`           | policy "probs" ranked by the raw softmax prob, renormalise |
| `drop_tokens=False`                         | capacity None (dropless); C = the largest expert count     |

Deliberate differences, each shown by a test:
- top1 without RTS keeps, in an overflowing expert, the C rows `torch.topk` returns for a column
  of equal ones: an implementation-defined subset, not the first C in token order. minimoe's
  "position" keeps the first C; the count kept, the weights and the loss agree.
- top1 asserts T >= min_capacity; minimoe accepts C > T (nothing is dropped).
- "probs": DeepSpeed ranks by the raw softmax prob and lays the kept slots out in token order;
  minimoe ranks by the gate weight it is given and lays them out in that priority order.

Gumbel sampling of the second expert (`top2_2nd_expert_sampling=True`, the default) is compared
in tests/core/test_conventions.py. Left out: random token selection (use_rts=True), the sparse_routes
output, tensor/expert-parallel padding of the dropless capacity.
"""

from __future__ import annotations

import pytest
import torch
from deepspeed.moe.sharded_moe import _capacity, top1gating, top2gating, topkgating

from minimoe import (
    assign_slots,
    expert_capacity,
    load_balancing_loss,
    renormalize_survivors,
    route,
)
from minimoe.testing import assert_close

# (T, E, capacity_factor, min_capacity): several shapes, factors that drop and that do not
CASES = [
    (16, 4, 0.5, 0),
    (16, 4, 1.0, 4),
    (24, 8, 1.5, 0),
    (32, 8, 0.5, 4),
    (48, 6, 1.0, 0),
    (64, 8, 1.0, 4),
    (64, 4, 1.5, 0),
    (16, 8, 0.5, 4),  # ceil(16/8 * 0.5) = 1 < min_capacity: the clamp sets C = 4
    (1, 4, 1.0, 0),  # a single token
]
SEEDS = [0, 1, 2]


def _logits(T: int, E: int, seed: int) -> torch.Tensor:
    return torch.randn(T, E, generator=torch.Generator().manual_seed(seed)) * 1.5


def combine_TEC(
    expert_TK: torch.Tensor,
    gate_TK: torch.Tensor,
    position_TK: torch.Tensor,
    keep_TK: torch.Tensor,
    capacity: int,
    n_experts: int,
) -> torch.Tensor:
    """DeepSpeed's combine_weights [T, E, C] from minimoe's pieces: a kept slot (t, k) puts its
    gate at [t, expert_TK[t, k], position_TK[t, k]]; everything else is 0."""
    out = gate_TK.new_zeros(expert_TK.shape[0], n_experts, capacity)
    t_N, k_N = torch.nonzero(keep_TK, as_tuple=True)
    out[t_N, expert_TK[t_N, k_N], position_TK[t_N, k_N]] = gate_TK[t_N, k_N]
    return out


def _token_order_positions(expert_TK: torch.Tensor, keep_TK: torch.Tensor, E: int) -> torch.Tensor:
    """The rank of each kept slot, in token order, among the slots its expert kept."""
    kept_TE = torch.zeros(expert_TK.shape[0], E, dtype=torch.long)
    kept_TE.scatter_(1, expert_TK, keep_TK.long())
    rank_TK = (torch.cumsum(kept_TE, 0) - 1).gather(1, expert_TK)
    return torch.where(keep_TK, rank_TK, -1)


def _ours(
    logits_TE: torch.Tensor,
    k: int,
    gating: str,
    policy: str,
    cf: float,
    min_cap: int,
    *,
    renormalize: bool,
    dropless: bool = False,
    priority_TK: torch.Tensor | None = None,
):
    """minimoe's routing + capacity + drops; returns (routing, C, keep_TK, position_TK, gate_TK)."""
    T, E = logits_TE.shape
    r = route(logits_TE, k, gating)
    capacity = None if dropless else expert_capacity(T, E, k, "deepspeed", cf, min_cap)
    priority_TK = r.gate_TK if priority_TK is None else priority_TK
    keep_TK, position_TK = assign_slots(r.expert_TK, priority_TK, E, capacity, policy)
    gate_TK = renormalize_survivors(r.gate_TK, keep_TK) if renormalize else r.gate_TK * keep_TK
    if dropless:
        capacity = int(torch.bincount(r.expert_TK.reshape(-1), minlength=E).max())
    return r, capacity, keep_TK, position_TK, gate_TK


def _compare(ds_out, ours, *, first_choice_only: bool, name: str) -> None:
    l_aux, combine_ds, dispatch_ds, counts_ds = ds_out
    r, C, keep_TK, position_TK, gate_TK = ours
    E = combine_ds.shape[1]
    assert combine_ds.shape[2] == C, f"{name}: capacity {combine_ds.shape[2]} != ours {C}"
    combine_ours = combine_TEC(r.expert_TK, gate_TK, position_TK, keep_TK, C, E)
    assert torch.equal(dispatch_ds, combine_ours != 0), f"{name}: kept slots or positions differ"
    assert_close(combine_ours, combine_ds, atol=1e-6, rtol=1e-5, name=f"{name} combine weights")
    aux = load_balancing_loss(r.probs_TE, r.expert_TK, first_choice_only=first_choice_only)
    assert_close(aux, l_aux, atol=1e-6, rtol=1e-5, name=f"{name} l_aux")
    counts = torch.bincount(r.expert_TK.reshape(-1), minlength=E)
    assert torch.equal(counts_ds.long(), counts), f"{name}: exp_counts differ"


# ----------------------------------------------------------------------------------------------
# capacity: DeepSpeed's _capacity, evaluated in float32
# ----------------------------------------------------------------------------------------------


def test_capacity_formula_grid() -> None:
    """C = max(ceil(T/E * cf*K), min_capacity) with the product rounded to float32, as DeepSpeed
    does; a float64 evaluation is off by one in cases such as the two below."""
    for T in range(0, 80, 7):
        for E in (1, 3, 4, 6, 8, 11):
            for K in sorted({1, min(2, E), min(3, E)}):
                for cf in (0.1, 0.3, 0.5, 1.0, 1.1, 1.25, 1.5):
                    for min_cap in (0, 4):
                        ds = _capacity(
                            torch.empty(T, E), torch.tensor(cf * K), torch.tensor(min_cap)
                        )
                        ours = expert_capacity(T, E, K, "deepspeed", cf, min_cap)
                        assert ours == int(ds), f"T={T} E={E} K={K} cf={cf} min={min_cap}"


def test_capacity_float32_rounding_cases() -> None:
    # 35/3 * 0.6 is 7 exactly: 7.0000005 in float32, 6.999999999999999 in float64
    logits = _logits(35, 3, 0)
    C = top2gating(logits.clone(), 0.3, 0, top2_2nd_expert_sampling=False)[1].shape[2]
    assert C == expert_capacity(35, 3, 2, "deepspeed", 0.3) == 8
    # 10/3 * 0.3 is 1 exactly: 1.0 in float32, 1.0000000000000002 in float64
    C = topkgating(_logits(10, 3, 0), 3, 0.1, 0, drop_policy="position")[1].shape[2]
    assert C == expert_capacity(10, 3, 3, "deepspeed", 0.1) == 1


# ----------------------------------------------------------------------------------------------
# top1gating
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T,E,cf,min_cap", CASES)
def test_top1(T: int, E: int, cf: float, min_cap: int, seed: int) -> None:
    logits = _logits(T, E, seed)
    l_aux, combine_ds, dispatch_ds, counts_ds = top1gating(logits, cf, min_cap, use_rts=False)
    r, C, keep_TK, position_TK, gate_TK = _ours(
        logits, 1, "switch", "position", cf, min_cap, renormalize=False
    )
    assert combine_ds.shape[2] == C, "capacity"
    aux = load_balancing_loss(r.probs_TE, r.expert_TK, first_choice_only=True)
    assert_close(aux, l_aux, name="top1 l_aux")
    counts_E = torch.bincount(r.expert_TK[:, 0], minlength=E)
    assert torch.equal(counts_ds.long(), counts_E)

    keep_ds_T = dispatch_ds.any(dim=(1, 2))
    expert_T = r.expert_TK[:, 0]
    overflow_E = counts_E > C
    # every expert keeps min(count, C) tokens, in both
    kept_ds_E = torch.bincount(expert_T[keep_ds_T], minlength=E)
    kept_ours_E = torch.bincount(expert_T[keep_TK[:, 0]], minlength=E)
    assert torch.equal(kept_ds_E, counts_E.clamp(max=C))
    assert torch.equal(kept_ours_E, kept_ds_E)
    # experts that do not overflow: the very same slots, positions and weights
    calm_T = ~overflow_E[expert_T]
    combine_ours = combine_TEC(r.expert_TK, gate_TK, position_TK, keep_TK, C, E)
    assert_close(combine_ours[calm_T], combine_ds[calm_T], name="top1 combine (no overflow)")
    # everywhere: given DeepSpeed's kept set, a kept token carries its top-1 softmax prob (no
    # renormalisation) at its rank in token order among the tokens its expert kept
    keep_ds_TK = keep_ds_T[:, None]
    location_TK = _token_order_positions(r.expert_TK, keep_ds_TK, E)
    rebuilt = combine_TEC(r.expert_TK, r.gate_TK * keep_ds_TK, location_TK, keep_ds_TK, C, E)
    assert_close(rebuilt, combine_ds, name="top1 combine with DeepSpeed's kept set")
    if cf == 0.5 and min_cap == 0:
        assert overflow_E.any(), "this case is meant to drop"


def test_top1_overflow_is_not_token_order() -> None:
    """DeepSpeed top1 without RTS selects the kept tokens with torch.topk over a 0/1 column; the
    ties make that an implementation-defined subset. In this seeded case it is not the first C
    tokens, which minimoe's "position" keeps."""
    differs = 0
    for seed in range(8):
        logits = _logits(32, 4, seed)
        _, _, dispatch_ds, _ = top1gating(logits, 0.5, 0, use_rts=False)
        _, _, keep_TK, _, _ = _ours(logits, 1, "switch", "position", 0.5, 0, renormalize=False)
        differs += int(not torch.equal(dispatch_ds.any(dim=(1, 2)), keep_TK[:, 0]))
    assert differs > 0


def test_top1_min_capacity_above_tokens() -> None:
    """DeepSpeed top1 refuses T < min_capacity; minimoe sets C = min_capacity and drops nothing."""
    logits = _logits(4, 4, 0)
    with pytest.raises(AssertionError, match="min_capacity"):
        top1gating(logits, 1.0, 8, use_rts=False)
    assert expert_capacity(4, 4, 1, "deepspeed", 1.0, min_capacity=8) == 8
    _, C, keep_TK, _, _ = _ours(logits, 1, "switch", "position", 1.0, 8, renormalize=False)
    assert C == 8 and keep_TK.all()
    # top2 and topk accept it, with the same C, and also keep everything
    _, combine_ds, dispatch_ds, _ = topkgating(logits, 2, 1.0, 8, drop_policy="position")
    assert combine_ds.shape[2] == 8 and int(dispatch_ds.sum()) == 4 * 2


def test_min_capacity_clamp() -> None:
    logits = _logits(16, 8, 3)
    assert expert_capacity(16, 8, 1, "deepspeed", 0.5) == 1
    assert expert_capacity(16, 8, 1, "deepspeed", 0.5, min_capacity=4) == 4
    assert top1gating(logits, 0.5, 0, use_rts=False)[1].shape[2] == 1
    assert top1gating(logits, 0.5, 4, use_rts=False)[1].shape[2] == 4


# ----------------------------------------------------------------------------------------------
# top2gating
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T,E,cf,min_cap", CASES)
def test_top2(T: int, E: int, cf: float, min_cap: int, seed: int) -> None:
    logits = _logits(T, E, seed)
    ds_out = top2gating(logits.clone(), cf, min_cap, top2_2nd_expert_sampling=False)
    ours = _ours(logits, 2, "mixtral", "k_major", cf, min_cap, renormalize=True)
    _compare(ds_out, ours, first_choice_only=True, name="top2")
    if cf == 0.5:
        assert not ours[2].all(), "this case is meant to drop"


def test_top2_second_choices_queue_behind_all_first_choices() -> None:
    """k-major: a second choice's slot is offset by *every* first choice of its expert, so
    with C = 2 and two first choices on experts 0 and 1 no second choice survives there."""
    logits = torch.tensor([[3.0, 2.0, 0.0], [2.0, 3.0, 0.0], [3.0, 0.0, 2.0], [0.0, 3.0, 2.0]])
    # first choices: 0, 1, 0, 1; second: 1, 0, 2, 2. C = ceil(4/3 * 0.5 * 2) = 2
    ds_out = top2gating(logits.clone(), 0.5, 0, top2_2nd_expert_sampling=False)
    ours = _ours(logits, 2, "mixtral", "k_major", 0.5, 0, renormalize=True)
    _compare(ds_out, ours, first_choice_only=True, name="top2 hand case")
    _, C, keep_TK, position_TK, gate_TK = ours
    assert C == 2
    assert keep_TK.tolist() == [[True, False], [True, False], [True, True], [True, True]]
    assert position_TK.tolist() == [[0, -1], [0, -1], [1, 0], [1, 1]]
    # a token that lost its second expert gives its first the whole weight (renormalised)
    assert gate_TK[:2, 0].tolist() == pytest.approx([1.0, 1.0])


# ----------------------------------------------------------------------------------------------
# topkgating
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("T,cf,min_cap", [(16, 0.5, 0), (32, 1.0, 4), (64, 1.5, 0), (24, 0.5, 4)])
def test_topk_position(T: int, cf: float, min_cap: int, k: int, seed: int) -> None:
    E = 8
    logits = _logits(T, E, seed)
    ds_out = topkgating(logits, k, cf, min_cap, drop_policy="position")
    ours = _ours(logits, k, "mixtral", "position", cf, min_cap, renormalize=True)
    _compare(ds_out, ours, first_choice_only=False, name=f"topk k={k} position")
    if cf == 0.5:
        assert not ours[2].all(), "this case is meant to drop"


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("k", [3, 4])
@pytest.mark.parametrize("T,cf,min_cap", [(16, 0.5, 0), (32, 1.0, 4), (64, 1.5, 0), (24, 0.5, 4)])
def test_topk_probs(T: int, cf: float, min_cap: int, k: int, seed: int) -> None:
    """Same kept slots when minimoe's "probs" ranks by the raw softmax prob (DeepSpeed's key);
    DeepSpeed lays the kept slots out in token order, minimoe in priority order."""
    E = 8
    logits = _logits(T, E, seed)
    ds_out = topkgating(logits, k, cf, min_cap, drop_policy="probs")
    raw = route(logits, k, "switch").gate_TK  # softmax prob of each chosen expert
    r, C, keep_TK, position_TK, gate_TK = _ours(
        logits, k, "mixtral", "probs", cf, min_cap, renormalize=True, priority_TK=raw
    )
    token_order_TK = _token_order_positions(r.expert_TK, keep_TK, E)
    _compare(
        ds_out, (r, C, keep_TK, token_order_TK, gate_TK), first_choice_only=False, name="probs"
    )
    # minimoe's positions are a permutation of those within each expert
    assert torch.equal(position_TK >= 0, token_order_TK >= 0)
    if cf == 0.5:
        assert not keep_TK.all(), "this case is meant to drop"
        assert not torch.equal(position_TK, token_order_TK), "the layouts differ"


def test_topk_probs_ranks_by_raw_prob_not_renormalised_weight() -> None:
    """Hand case: token 0 has p = (.45, .50, .05), token 1 has p = (.40, .35, .25); both pick
    expert 0 with K=2 and C=1 there. Raw prob: token 0 (.45 > .40). Renormalised weight:
    token 1 (.40/.75 = .533 > .45/.95 = .474). DeepSpeed keeps token 0."""
    logits = torch.tensor([[0.45, 0.50, 0.05], [0.40, 0.35, 0.25]]).log()
    _, _, dispatch_ds, _ = topkgating(logits, 2, 0.5, 0, drop_policy="probs")
    assert dispatch_ds.shape[2] == 1  # ceil(2/3 * 0.5 * 2) = 1
    assert dispatch_ds[:, 0].any(-1).tolist() == [True, False]
    r = route(logits, 2, "mixtral")
    keep_raw, _ = assign_slots(r.expert_TK, route(logits, 2, "switch").gate_TK, 3, 1, "probs")
    keep_renorm, _ = assign_slots(r.expert_TK, r.gate_TK, 3, 1, "probs")
    on_e0 = r.expert_TK == 0
    assert keep_raw[on_e0].tolist() == [True, False]  # DeepSpeed's choice
    assert keep_renorm[on_e0].tolist() == [False, True]  # by the renormalised weights


# ----------------------------------------------------------------------------------------------
# dropless (drop_tokens=False): C = the largest expert count, everything kept
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("T,E,k", [(16, 4, 1), (32, 8, 2), (24, 8, 3), (64, 8, 4), (8, 4, 4)])
def test_dropless(T: int, E: int, k: int, seed: int) -> None:
    logits = _logits(T, E, seed)
    if k == 1:
        ds_out = top1gating(logits, 1.0, 0, drop_tokens=False, use_rts=False)
        gating, policy, renorm = "switch", "position", False
    elif k == 2:
        ds_out = top2gating(
            logits.clone(), 1.0, 0, drop_tokens=False, top2_2nd_expert_sampling=False
        )
        gating, policy, renorm = "mixtral", "k_major", True
    else:
        ds_out = topkgating(logits, k, 1.0, 0, drop_tokens=False, drop_policy="position")
        gating, policy, renorm = "mixtral", "position", True
    ours = _ours(logits, k, gating, policy, 1.0, 0, renormalize=renorm, dropless=True)
    _compare(ds_out, ours, first_choice_only=k <= 2, name=f"dropless k={k}")
    assert ours[2].all() and int(ds_out[2].sum()) == T * k
    if k == E:
        assert ours[1] == T, "K = E: every expert gets every token"
