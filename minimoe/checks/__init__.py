"""Exercise checks: one function per graded exercise, called by the exercise's check cell.

A check runs the learner's function on seeded inputs, compares it with the library, and either
prints one pass line (`✓ Exercise 01.2 (the loop MoE): passed`) or raises AssertionError with a
message that names the likely mistake.
"""

from minimoe.checks.ch00 import check_softmax_topk
from minimoe.checks.ch01 import check_ffn, check_loop_moe
from minimoe.checks.ch01_params import check_count_params
from minimoe.checks.ch01_toy import check_toy_fix

__all__ = [
    "check_count_params",
    "check_ffn",
    "check_loop_moe",
    "check_softmax_topk",
    "check_toy_fix",
]
