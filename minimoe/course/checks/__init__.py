"""Exercise checks: one function per graded exercise, called by the exercise's check cell.

A check runs the learner's function on seeded inputs, compares it with the library, and either
prints one pass line (`✓ Exercise 01.2 (the loop MoE): passed`) or raises AssertionError with a
message that names the likely mistake.

The chapter 06 checks run Triton kernels and live in `minimoe.course.checks.ch06_tiles` and
`minimoe.course.checks.ch06_gather`; they are not imported here, so importing the other checks never
defines a Triton kernel (on a CPU, `TRITON_INTERPRET=1` must be set before that happens).
"""

from minimoe.course.checks.ch00_warmup import check_softmax_topk
from minimoe.course.checks.ch01_loop import check_ffn, check_loop_moe
from minimoe.course.checks.ch01_params import check_count_params
from minimoe.course.checks.ch01_toy import check_toy_fix
from minimoe.course.checks.ch02_gate import check_gate
from minimoe.course.checks.ch02_noise import check_noisy_logits
from minimoe.course.checks.ch02_trap import check_router_gradient
from minimoe.course.checks.ch03_capacity import check_capacity, check_k_major
from minimoe.course.checks.ch03_drops import check_drop_rate, check_dropped_output
from minimoe.course.checks.ch04_bias import check_bias_balancing
from minimoe.course.checks.ch04_capstone import check_moe_layer
from minimoe.course.checks.ch04_losses import (
    check_collapse_metrics,
    check_device_balance_loss,
    check_sequence_balance_loss,
)
from minimoe.course.checks.ch05_dispatch import check_dispatch_combine, check_sort_by_expert
from minimoe.course.checks.ch05_padded import check_padded_experts
from minimoe.course.checks.ch07_specialise import check_specialisation
from minimoe.course.checks.ch07_train import check_train_step
from minimoe.course.checks.ch08_expert_choice import (
    check_expert_choice,
    check_smallest_capacity_factor,
)
from minimoe.course.checks.ch08_hash import check_hash_router
from minimoe.course.checks.ch08_recurrent import check_recurrent_router_step
from minimoe.course.checks.ch08_shared import check_shared_routed_forward
from minimoe.course.checks.ch08_soft_moe import check_soft_moe_weights
from minimoe.course.checks.ch09_ep import check_order_by_rank, check_placement, check_send_counts
from minimoe.course.checks.ch10_cache import check_belady_hits, check_lru_hits
from minimoe.course.checks.ch10_experts import check_expected_experts_touched
from minimoe.course.checks.ch10_roofline import check_decode_step

__all__ = [
    "check_belady_hits",
    "check_bias_balancing",
    "check_capacity",
    "check_collapse_metrics",
    "check_count_params",
    "check_decode_step",
    "check_device_balance_loss",
    "check_dispatch_combine",
    "check_drop_rate",
    "check_dropped_output",
    "check_expected_experts_touched",
    "check_expert_choice",
    "check_ffn",
    "check_gate",
    "check_hash_router",
    "check_k_major",
    "check_loop_moe",
    "check_lru_hits",
    "check_moe_layer",
    "check_noisy_logits",
    "check_order_by_rank",
    "check_padded_experts",
    "check_placement",
    "check_recurrent_router_step",
    "check_router_gradient",
    "check_send_counts",
    "check_sequence_balance_loss",
    "check_shared_routed_forward",
    "check_smallest_capacity_factor",
    "check_soft_moe_weights",
    "check_softmax_topk",
    "check_sort_by_expert",
    "check_specialisation",
    "check_toy_fix",
    "check_train_step",
]
