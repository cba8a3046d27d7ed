"""The chapter 05 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
lists of variants), so these tests show that every hint a check gives is reachable.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from check_helpers import assert_check_cells_match, fails_with, not_done

from minimoe.course.checks.ch05_dispatch import check_dispatch_combine, check_sort_by_expert
from minimoe.course.checks.ch05_padded import check_padded_experts

# --- 05.1 dispatch and combine -------------------------------------------------------------------


def dispatch_combine(
    expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity, *, shift=0, mask=True,
    gate=True, detach=False, float_dispatch=False, own_positions=False,
):  # fmt: skip
    """The right answer (index assignment), with switches that make it a learner's mistake."""
    T, K = expert_TK.shape
    dispatch_TEC = torch.zeros(T, n_experts, capacity, dtype=torch.bool)
    combine_TEC = torch.zeros(T, n_experts, capacity, dtype=gate_TK.dtype)
    if own_positions:  # rank in token order among the kept slots of each expert
        onehot_SE = F.one_hot(expert_TK.reshape(-1), n_experts) * keep_TK.reshape(-1, 1)
        rank_SE = onehot_SE.cumsum(0) - 1
        position_TK = rank_SE.gather(1, expert_TK.reshape(-1, 1)).view(T, K)
    keep = keep_TK if mask else torch.ones_like(keep_TK)
    t_N, k_N = torch.nonzero(keep, as_tuple=True)
    e_N, c_N = expert_TK[t_N, k_N], position_TK[t_N, k_N] + shift
    if shift:  # a learner who shifted the positions and skipped what no longer fits
        fits = c_N < capacity
        t_N, k_N, e_N, c_N = t_N[fits], k_N[fits], e_N[fits], c_N[fits]
    g_N = gate_TK[t_N, k_N]
    dispatch_TEC[t_N, e_N, c_N] = True
    combine_TEC[t_N, e_N, c_N] = (g_N.detach() if detach else g_N) if gate else 1.0
    return dispatch_TEC.float() if float_dispatch else dispatch_TEC, combine_TEC


def with_(**kw):
    return lambda *args: dispatch_combine(*args, **kw)


def one_hot_unmasked(expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity):
    """GShard's one-hot products, forgetting that a dropped slot's position is -1."""
    onehot_TKE = F.one_hot(expert_TK, n_experts).float()
    onehot_TKC = F.one_hot(position_TK, capacity).float()
    dispatch = torch.einsum("tke,tkc->tec", onehot_TKE, onehot_TKC)
    return dispatch.bool(), torch.einsum("tk,tke,tkc->tec", gate_TK, onehot_TKE, onehot_TKC)


def test_dispatch_combine_passes(capsys) -> None:
    check_dispatch_combine(dispatch_combine)
    check_dispatch_combine(with_(float_dispatch=True))  # a 0/1 float dispatch is fine too
    assert "✓ Exercise 05.1 (dispatch and combine tensors): passed" in capsys.readouterr().out


def test_dispatch_combine_one_hot_answer_passes() -> None:
    def masked(expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity):
        pos_TK = torch.where(keep_TK, position_TK, capacity)  # dropped: one past the end
        onehot_TKC = F.one_hot(pos_TK, capacity + 1)[..., :capacity].float()
        onehot_TKE = F.one_hot(expert_TK, n_experts).float()
        dispatch = torch.einsum("tke,tkc->tec", onehot_TKE, onehot_TKC)
        return dispatch.bool(), torch.einsum("tk,tke,tkc->tec", gate_TK, onehot_TKE, onehot_TKC)

    check_dispatch_combine(masked)


@pytest.mark.parametrize(
    "answer, words",
    [
        (with_(shift=1), ["0-indexed", "not p + 1"]),
        (lambda *a: dispatch_combine(*a[:5], a[5] + 1, shift=1), ["last axis", "C = capacity"]),
        (with_(mask=False), ["not masked", "c = C-1"]),
        (one_hot_unmasked, ["position -1", "keep_TK"]),
        (with_(gate=False), ["forgot the gate"]),
        (with_(own_positions=True), ["position_TK as given"]),
        (with_(detach=True), ["gradient"]),
        (lambda *a: dispatch_combine(*a)[::-1], ["(combine, dispatch)"]),
        (lambda *a: tuple(t.transpose(1, 2) for t in dispatch_combine(*a)), ["(T, E, C)"]),
        (lambda *a: dispatch_combine(*a)[0], ["return 2 tensors"]),
        (lambda *a: (dispatch_combine(*a)[0], dispatch_combine(*a)[0]), ["float"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_dispatch_combine_wrong(answer, words) -> None:
    fails_with(check_dispatch_combine, answer, "Exercise 05.1", *words)


def test_dispatch_combine_one_indexed_crash_names_the_range() -> None:
    def one_indexed(expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity):
        pos_TK = torch.where(keep_TK, position_TK + 1, 0)
        onehot_TKC = F.one_hot(pos_TK, capacity).float() * keep_TK[..., None]
        onehot_TKE = F.one_hot(expert_TK, n_experts).float()
        return torch.einsum("tke,tkc->tec", onehot_TKE, onehot_TKC).bool(), None

    fails_with(check_dispatch_combine, one_indexed, "0 .. C-1", "not 1 .. C")


# --- 05.2 sort by expert -------------------------------------------------------------------------


def sort_by_expert(expert_TK, keep_TK, n_experts, *, stable=True, invert=True, minlength=True,
                   exclusive=False, leading_zero=False, use_keep=True, token_ids=False,
                   k_major=False, dropped=-1):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    T, K = expert_TK.shape
    expert_N = (expert_TK.t() if k_major else expert_TK).reshape(-1)
    keep_N = (keep_TK.t() if k_major else keep_TK).reshape(-1)
    if not use_keep:
        keep_N = torch.ones_like(keep_N)
    kept_N = torch.nonzero(keep_N).squeeze(1)
    sorted_e_N, by_expert_N = torch.sort(expert_N[kept_N], stable=stable)
    order_N = kept_N[by_expert_N]
    counts_E = torch.bincount(sorted_e_N, minlength=n_experts if minlength else 0)
    ends_E = torch.cumsum(counts_E, 0)
    offsets_E = ends_E - counts_E if exclusive else ends_E
    if leading_zero:
        offsets_E = torch.cat([torch.zeros(1, dtype=ends_E.dtype), ends_E])
    inverse_N = torch.full_like(expert_N, dropped)
    inverse_N[order_N] = torch.arange(order_N.numel())
    if token_ids:
        order_N = order_N // K
    return order_N, counts_E, offsets_E.to(torch.int32), inverse_N if invert else order_N


def sort_with(**kw):
    return lambda *args: sort_by_expert(*args, **kw)


def test_sort_passes(capsys) -> None:
    check_sort_by_expert(sort_by_expert)
    assert "✓ Exercise 05.2 (sort by expert and invert): passed" in capsys.readouterr().out


def test_sort_argsort_inverse_fails_on_drops() -> None:
    """inverse = argsort(order) is right for a full permutation, wrong once slots are dropped."""

    def argsort_inverse(expert_TK, keep_TK, n_experts):
        order, counts, offsets, _ = sort_by_expert(expert_TK, keep_TK, n_experts)
        return order, counts, offsets, torch.argsort(order)

    fails_with(check_sort_by_expert, argsort_inverse, "inverse_N", "-1 for a dropped slot")


@pytest.mark.parametrize(
    "answer, words",
    [
        (sort_with(stable=False), ["stable=True"]),
        (sort_with(invert=False), ["forgot to invert"]),
        (sort_with(exclusive=True), ["exclusive", "cumulative ends"]),
        (sort_with(leading_zero=True), ["no leading 0"]),
        (sort_with(minlength=False), ["minlength"]),
        (sort_with(use_keep=False), ["dropped"]),
        (sort_with(token_ids=True), ["token ids", "t * K + k"]),
        (sort_with(k_major=True), ["k-major"]),
        (sort_with(dropped=0), ["dropped slot must have -1"]),
        (
            lambda e, keep, E: tuple(t.float() for t in sort_by_expert(e, keep, E)),
            ["integer tensor"],
        ),
        (
            lambda e, keep, E: (lambda o, c, f, i: (o.flip(0), c, f, i))(
                *sort_by_expert(e, keep, E)
            ),
            ["descending"],
        ),
        (lambda e, keep, E: sort_by_expert(e, keep, E)[:3], ["return 4 tensors"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_sort_wrong(answer, words) -> None:
    fails_with(check_sort_by_expert, answer, "Exercise 05.2", *words)


# --- 05.3 padded batched matmul ------------------------------------------------------------------


def padded_experts(x_ND, counts_E, params, *, read_back="rows", back_to_back=False,
                   transpose=True, one_expert=False, padded_out=False, C=None):  # fmt: skip
    """The right answer, with switches that make it a learner's mistake."""
    E, D = counts_E.numel(), x_ND.shape[1]
    C = int(counts_E.max()) if C is None else C
    N = x_ND.shape[0]
    expert_N = torch.repeat_interleave(torch.arange(E), counts_E)
    row_N = torch.arange(N) - (torch.cumsum(counts_E, 0) - counts_E)[expert_N]
    x_ECD = x_ND.new_zeros(E, C, D)
    if back_to_back:
        x_ECD.view(E * C, D)[:N] = x_ND
    else:
        x_ECD[expert_N, row_N] = x_ND

    def w(name):
        weight = getattr(params, name)
        weight = weight[:1].expand_as(weight) if one_expert else weight
        return weight.transpose(1, 2) if transpose else weight

    h = torch.bmm(x_ECD, w("w1_EFD"))
    if params.activation == "swiglu":
        h = F.silu(h) * torch.bmm(x_ECD, w("w3_EFD"))
    else:
        h = F.gelu(h)
    y_ECD = torch.bmm(h, w("w2_EDF"))
    if padded_out:
        return y_ECD
    if back_to_back or read_back == "first":
        return y_ECD.reshape(E * C, D)[:N]
    return y_ECD[expert_N, row_N]


def padded_with(**kw):
    return lambda *args: padded_experts(*args, **kw)


def test_padded_passes(capsys) -> None:
    check_padded_experts(padded_experts)
    assert "✓ Exercise 05.3 (the padded batched matmul): passed" in capsys.readouterr().out


def test_padded_loop_of_matmuls_passes() -> None:
    """The check grades the values: any right way of computing them passes."""
    from minimoe import expert_ffn

    def loop(x_ND, counts_E, params):
        rows = torch.split(x_ND, counts_E.tolist())
        return torch.cat([expert_ffn(r, params, e) for e, r in enumerate(rows)])

    check_padded_experts(loop)


@pytest.mark.parametrize(
    "answer, words",
    [
        (padded_with(read_back="first"), ["skip the padding"]),
        (padded_with(back_to_back=True), ["back to back"]),
        (padded_with(one_expert=True), ["expert 0"]),
        (padded_with(transpose=False), ["untransposed"]),
        (padded_with(padded_out=True), ["padded (E, C, D)", "(N, D)"]),
        (
            lambda x, c, p: padded_experts(x, c, p, C=max(1, x.shape[0] // c.numel())),
            ["max(counts_E)"],
        ),
        (lambda x, c, p: padded_experts(x, c, p).double(), ["dtype"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_padded_wrong(answer, words) -> None:
    fails_with(check_padded_experts, answer, "Exercise 05.3", *words)


def test_padded_unknown_mistake_reports_the_difference() -> None:
    message = fails_with(check_padded_experts, lambda x, c, p: 1.01 * padded_experts(x, c, p))
    assert "max abs diff" in message


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/05 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch05_dispatch as ch05
    from minimoe.course.checks import ch05_padded

    assert_check_cells_match(
        ["05_vectorised.ipynb"],
        (ch05.DISPATCH, ch05.SORT, ch05_padded.PADDED),
        "from minimoe.course.checks.ch05_",
    )


def test_checks_refuse_the_library() -> None:
    from minimoe import dispatch_combine_tensors, sort_slots

    def dispatch(expert_TK, gate_TK, position_TK, keep_TK, n_experts, capacity):
        return dispatch_combine_tensors(
            expert_TK, gate_TK, keep_TK, n_experts, capacity, position_TK=position_TK
        )

    fails_with(check_dispatch_combine, dispatch, "Exercise 05.1", "calls the library's own")
    fails_with(check_sort_by_expert, sort_slots, "Exercise 05.2", "library's own `sort_slots`")
    fails_with(
        check_sort_by_expert,
        lambda e, k, n: sort_slots(e, k, n),
        "Exercise 05.2",
        "calls the library's own `sort_slots`",
    )
