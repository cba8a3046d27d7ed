"""Exercise checks: one function per graded exercise, called by the exercise's check cell.

A check runs the learner's function on seeded inputs, compares it with the library, and either
prints one pass line (`✓ Exercise 01.2 (the loop MoE): passed`) or raises AssertionError with a
message that names the likely mistake.

The chapter 06 checks run Triton kernels and live in `minimoe.checks.ch06` and
`minimoe.checks.ch06_gather`; they are not imported here, so importing the other checks never
defines a Triton kernel (on a CPU, `TRITON_INTERPRET=1` must be set before that happens).
"""

from minimoe.checks.ch00 import check_softmax_topk
from minimoe.checks.ch01 import check_ffn, check_loop_moe
from minimoe.checks.ch01_params import check_count_params
from minimoe.checks.ch01_toy import check_toy_fix
from minimoe.checks.ch02 import check_gate
from minimoe.checks.ch02_noise import check_noisy_logits
from minimoe.checks.ch02_trap import check_router_gradient
from minimoe.checks.ch03 import check_capacity, check_k_major
from minimoe.checks.ch03_drops import check_drop_rate, check_dropped_output
from minimoe.checks.ch04 import check_collapse_metrics, check_switch_loss, check_z_loss
from minimoe.checks.ch04_bias import check_bias_balancing
from minimoe.checks.ch05 import check_dispatch_combine, check_sort_by_expert
from minimoe.checks.ch05_padded import check_padded_experts
from minimoe.checks.ch07 import check_train_step
from minimoe.checks.ch07_specialise import check_specialisation

__all__ = [
    "check_bias_balancing",
    "check_capacity",
    "check_collapse_metrics",
    "check_count_params",
    "check_dispatch_combine",
    "check_drop_rate",
    "check_dropped_output",
    "check_ffn",
    "check_gate",
    "check_k_major",
    "check_loop_moe",
    "check_noisy_logits",
    "check_padded_experts",
    "check_router_gradient",
    "check_softmax_topk",
    "check_sort_by_expert",
    "check_specialisation",
    "check_switch_loss",
    "check_toy_fix",
    "check_train_step",
    "check_z_loss",
]
