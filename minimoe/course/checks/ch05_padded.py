"""Check for chapter 05, exercise 05.3: the padded batched matmul over the rows sorted by expert.

The learner's function runs each expert on its run of sorted rows through a zero-padded
(E, max_count, D) buffer; it is compared with the float64 oracle, and a wrong answer is matched
against known wrong variants (padding rows read back as tokens, rows packed back to back, every row
through expert 0, weights not transposed, the padded output returned, C smaller than the largest
count).
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from minimoe.course.checks._common import Exercise, diagnose, make_experts, make_tokens
from minimoe.course.checks.ch05_dispatch import ATOL, RTOL, _call
from minimoe.experts import ExpertParams
from minimoe.reference import reference_moe
from minimoe.sorted import grouped_mm_moe, loop_grouped_mm, padded_bmm_moe

PADDED = Exercise(
    "05.3",
    "the padded batched matmul",
    library=(padded_bmm_moe, grouped_mm_moe, loop_grouped_mm),
    weights=True,
)

_PADDING_HINTS = (
    (
        "out of bounds",
        "a row's place in the buffer is out of range: the padded length C is the largest count, "
        "max(counts_E), and a row's place in its expert is its index minus the expert's start",
    ),
)


def _rows_through(x_ND: torch.Tensor, expert_N: torch.Tensor, p: ExpertParams) -> torch.Tensor:
    """Row n through expert expert_N[n], in float64 (the oracle with K = 1 and gate 1)."""
    w3 = None if p.w3_EFD is None else p.w3_EFD.double()
    p64 = ExpertParams(p.w1_EFD.double(), p.w2_EDF.double(), w3, p.activation)
    N = x_ND.shape[0]
    ones = torch.ones(N, 1, dtype=torch.float64)
    return reference_moe(x_ND.double(), expert_N.view(N, 1), ones, p64)


def _padded_variants(counts: list[int]) -> list[tuple[str, Callable]]:
    E, N, C = len(counts), sum(counts), max(counts, default=0)
    expert_N = torch.repeat_interleave(torch.arange(E), torch.tensor(counts, dtype=torch.long))

    starts = [sum(counts[:e]) for e in range(E)]

    def first_rows(x, counts_E, p):  # the first N rows of the (E*C, D) view, padding included
        y = torch.zeros(N, x.shape[1], dtype=torch.float64)
        rows = [(r, r // C, starts[r // C] + r % C) for r in range(N) if r % C < counts[r // C]]
        if rows:
            r, e, src = (torch.tensor(v) for v in zip(*rows))
            y[r] = _rows_through(x[src], e, p)
        return y  # a zero padding row gives a zero output row

    def back_to_back(x, counts_E, p):  # rows placed contiguously, expert e owning rows e*C..
        return _rows_through(x, (torch.arange(N) // max(C, 1)).clamp_max(E - 1), p)

    def expert0(x, counts_E, p):
        return _rows_through(x, torch.zeros(N, dtype=torch.long), p)

    def untransposed(x, counts_E, p):
        t = ExpertParams(
            p.w1_EFD.transpose(1, 2),
            p.w2_EDF.transpose(1, 2),
            None if p.w3_EFD is None else p.w3_EFD.transpose(1, 2),
            p.activation,
        )
        return _rows_through(x, expert_N, t)

    return [
        (
            "read back the first N rows of the padded buffer; the tokens of expert e sit at "
            "rows e*C .. e*C + count_e - 1 of the (E*C, D) view: skip the padding rows",
            first_rows,
        ),
        (
            "placed the sorted rows back to back in the (E, C, D) buffer; expert e's rows start at "
            "row 0 of buffer e (position within the expert = row - start of the expert)",
            back_to_back,
        ),
        ("ran every row through expert 0; torch.bmm uses a different weight per expert", expert0),
        (
            "used the weights untransposed: they are stored (out, in), so multiply by "
            "w1_EFD.transpose(1, 2)",
            untransposed,
        ),
    ]


def check_padded_experts(padded_fn: Callable) -> None:
    """Check `padded_experts(x_ND, counts_E, params) -> y_ND` (row n through the expert that owns
    it, via a zero-padded (E, max_count, D) batched matmul) against the float64 oracle."""
    # (counts per expert, D, F, activation)
    cases = [
        ([3, 1, 2, 2], 8, 8, "swiglu"),  # D = F: untransposed weights run and can be diagnosed
        ([2, 0, 3], 6, 10, "gelu"),  # an empty expert in the middle
        ([0, 5, 0, 0], 8, 12, "swiglu"),  # every row on one expert
        ([1, 2, 2, 1, 0, 3], 100, 16, "gelu"),  # D = 100
        ([4], 8, 8, "swiglu"),  # a single expert: no padding at all
        ([1, 0], 8, 8, "gelu"),
        ([0, 0, 0], 8, 8, "swiglu"),  # N = 0
    ]
    for i, (counts, D, F_, act) in enumerate(cases):
        E, N = len(counts), sum(counts)
        x_ND = make_tokens(N, D, seed=90 + i)
        params = make_experts(E, D, F_, act, seed=100 + i)
        counts_E = torch.tensor(counts, dtype=torch.long)
        case = f"counts_E={counts}, D={D}, F={F_}, {act}"
        out = _call(PADDED, padded_fn, x_ND, counts_E, params, case=case, hints=_PADDING_HINTS)
        C = max(counts)
        if isinstance(out, torch.Tensor) and tuple(out.shape) == (E, C, D) and (E, C) != (N, D):
            raise PADDED.fail(
                f"returned the padded (E, C, D) = {(E, C, D)} output on {case}; return the N valid "
                "rows (N, D), in sorted order, without the padding"
            )
        PADDED.expect_tensor(out, (N, D), x_ND.dtype, case)
        expert_N = torch.repeat_interleave(torch.arange(E), counts_E)
        expected = _rows_through(x_ND, expert_N, params)
        args = (x_ND, counts_E, params)
        diagnose(PADDED, out, expected, _padded_variants(counts), args, case, atol=ATOL, rtol=RTOL)
    PADDED.passed(f"{len(cases)} cases, incl. empty experts, one crowded expert, N=0, D=100")
