"""The chapter 09 checks pass on right answers and fail, naming the mistake, on wrong ones.

Each wrong answer is written the way a learner would write it (not taken from the checks' own
variants), so a test fails if a check stops recognising a real mistake.
"""

import itertools

import pytest
import torch

from minimoe.course.checks.ch09_ep import check_order_by_rank, check_placement, check_send_counts
from tests.course.check_helpers import assert_check_cells_match, fails_with, not_done

# --- 09.1 send counts ----------------------------------------------------------------------------


def send_counts(expert_N, rank_E, world_size, *, how="placement", minlength=True):
    """The right answer, with switches that make it a learner's mistake."""
    E = rank_E.numel()
    if how == "placement":
        dest_N = rank_E[expert_N]
    elif how == "contiguous":
        dest_N = expert_N // (E // world_size)
    elif how == "round_robin":
        dest_N = expert_N % world_size
    elif how == "per_expert":
        return torch.bincount(expert_N, minlength=E)
    return torch.bincount(dest_N, minlength=world_size if minlength else 0)


def send_with(**kw):
    return lambda *args: send_counts(*args, **kw)


def test_send_counts_passes(capsys) -> None:
    check_send_counts(send_counts)
    assert "✓ Exercise 09.1 (send counts of the dispatch): passed" in capsys.readouterr().out


def test_send_counts_loop_answer_passes() -> None:
    def loop(expert_N, rank_E, world_size):
        out = torch.zeros(world_size, dtype=torch.long)
        for e in expert_N.tolist():
            out[int(rank_E[e])] += 1
        return out

    check_send_counts(loop)


@pytest.mark.parametrize(
    "answer, words",
    [
        (send_with(how="contiguous"), ["expert // (E // W)", "rank_E[expert_N]"]),
        (send_with(how="round_robin"), ["expert % W"]),
        (send_with(how="per_expert"), ["per expert", "per destination rank"]),
        (send_with(minlength=False), ["minlength"]),
        (lambda e, r, w: send_counts(e, r, w).float(), ["integer tensor"]),
        (lambda e, r, w: send_counts(e, r, w).tolist(), ["torch.Tensor"]),
        (lambda e, r, w: None, ["return"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_send_counts_wrong(answer, words) -> None:
    fails_with(check_send_counts, answer, "Exercise 09.1", *words)


def test_send_counts_tokens_not_slots() -> None:
    """A learner who counts each token once (its first choice) is told to count slots."""

    def first_choice_only(expert_N, rank_E, world_size):
        return torch.bincount(rank_E[expert_N[::2]], minlength=world_size)

    fails_with(check_send_counts, first_choice_only, "Exercise 09.1", "every slot")


# --- 09.2 order by rank --------------------------------------------------------------------------


def order_by_rank(expert_N, rank_E, *, stable=True, key="rank_expert", invert=True):
    """The right answer, with switches that make it a learner's mistake."""
    E = rank_E.numel()
    key_N = {
        "rank_expert": rank_E[expert_N] * E + expert_N,
        "expert": expert_N,
        "rank": rank_E[expert_N],
    }[key]
    order_N = torch.sort(key_N, stable=stable).indices
    inverse_N = torch.empty_like(order_N)
    inverse_N[order_N] = torch.arange(order_N.numel())
    return order_N, inverse_N if invert else order_N


def order_with(**kw):
    return lambda *args: order_by_rank(*args, **kw)


def test_order_passes(capsys) -> None:
    check_order_by_rank(order_by_rank)
    assert "✓ Exercise 09.2 (group slots by destination rank): passed" in capsys.readouterr().out


def test_order_argsort_inverse_passes() -> None:
    """inverse = argsort(order) is a right way to invert a full permutation."""
    check_order_by_rank(lambda e, r: (lambda o: (o, torch.argsort(o)))(order_by_rank(e, r)[0]))


def test_unstable_sort_reorders_ties_on_the_long_case() -> None:
    """The mistake is only recognisable if torch's unstable sort really reorders ties here."""
    g = torch.Generator().manual_seed(0)
    key = torch.randint(0, 4, (128,), generator=g)
    assert not torch.equal(torch.sort(key).indices, torch.sort(key, stable=True).indices)


@pytest.mark.parametrize(
    "answer, words",
    [
        (order_with(stable=False), ["stable sort"]),
        (order_with(key="expert"), ["by expert only", "placement"]),
        (order_with(key="rank"), ["not by expert within a rank"]),
        (order_with(invert=False), ["forgot to invert"]),
        (lambda e, r: (order_by_rank(e, r)[0].flip(0), order_by_rank(e, r)[1]), ["descending"]),
        (lambda e, r: order_by_rank(e, r)[0], ["return 2 tensors"]),
        (lambda e, r: (torch.zeros_like(e), torch.zeros_like(e)), ["not a permutation"]),
        (
            lambda e, r: (order_by_rank(e, r)[0], order_by_rank(e, r)[1].flip(0)),
            ["does not undo"],
        ),
        (not_done, ["not solved yet"]),
    ],
)
def test_order_wrong(answer, words) -> None:
    fails_with(check_order_by_rank, answer, "Exercise 09.2", *words)


# --- 09.3 placement ------------------------------------------------------------------------------


def greedy(count_WE, experts_per_rank, *, by="gain", cap=True):
    """The right answer (the gain-ordered greedy rule), with switches for the mistakes."""
    W, E = count_WE.shape
    score_WE = count_WE.double() - (count_WE.double().mean(0) if by == "gain" else 0.0)
    pairs = sorted((-float(score_WE[w, e]), e, w) for e in range(E) for w in range(W))
    rank_E = torch.full((E,), -1, dtype=torch.long)
    held = [0] * W
    for _, e, w in pairs:
        if rank_E[e] < 0 and (held[w] < experts_per_rank or not cap):
            rank_E[e], held[w] = w, held[w] + 1
    return rank_E


def brute_force(count_WE, experts_per_rank):
    """The optimal placement by trying all (small traces only; larger ones fall back to greedy)."""
    W, E = count_WE.shape
    if E > 8:
        return greedy(count_WE, experts_per_rank)
    base = [e // experts_per_rank for e in range(E)]
    best, best_cost = None, None
    for perm in set(itertools.permutations(base)):
        rank_E = torch.tensor(perm)
        cost = sum(int(count_WE[w, e]) for e in range(E) for w in range(W) if w != perm[e])
        if best_cost is None or cost < best_cost:
            best, best_cost = rank_E, cost
    return best


def test_placement_passes(capsys) -> None:
    check_placement(greedy)
    assert "✓ Exercise 09.3 (an expert-to-rank placement): passed" in capsys.readouterr().out


@pytest.mark.slow
def test_placement_optimal_answer_passes() -> None:
    """A placement at least as good as the greedy rule passes, whatever rule found it."""
    check_placement(brute_force)


@pytest.mark.parametrize(
    "answer, words",
    [
        (lambda c, j: torch.arange(c.shape[1]) // j, ["contiguous placement"]),
        (lambda c, j: greedy(c, j, by="count"), ["raw count", "gain"]),
        (lambda c, j: torch.argmax(c, dim=0), ["exactly", "sends it most"]),
        (lambda c, j: greedy(c, j, cap=False), ["exactly experts_per_rank"]),
        (lambda c, j: torch.full((c.shape[1],), -1), ["unplaced"]),
        (lambda c, j: greedy(c, j).float(), ["integer tensor"]),
        (lambda c, j: greedy(c, j)[:-1], ["one rank per expert"]),
        (not_done, ["not solved yet"]),
    ],
)
def test_placement_wrong(answer, words) -> None:
    fails_with(check_placement, answer, "Exercise 09.3", *words)


def test_placement_worse_but_valid_reports_the_counts() -> None:
    """A valid placement worse than greedy, of no known kind: both numbers are reported."""

    def reversed_contiguous(count_WE, experts_per_rank):
        return (torch.arange(count_WE.shape[1]) // experts_per_rank).flip(0)

    message = fails_with(check_placement, reversed_contiguous, "Exercise 09.3")
    assert "slots across ranks" in message and "greedy rule sends" in message


def test_check_cells_match_the_check_functions() -> None:
    """Each check cell of solutions/09 calls its check, and its title is the check's."""
    from minimoe.course.checks import ch09_ep

    assert_check_cells_match(
        ["09_expert_parallelism.ipynb"],
        (ch09_ep.SEND, ch09_ep.ORDER, ch09_ep.PLACE),
        "from minimoe.course.checks.ch09_",
    )


def test_checks_refuse_the_library() -> None:
    from minimoe.distributed import greedy_placement, order_by_rank, send_counts

    fails_with(check_send_counts, send_counts, "Exercise 09.1", "library's own")
    fails_with(check_order_by_rank, lambda e, r: order_by_rank(e, r), "Exercise 09.2", "library")
    fails_with(check_placement, greedy_placement, "Exercise 09.3", "library's own")
