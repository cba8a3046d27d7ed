"""FLOPs and bytes moved by each experts implementation, for one forward pass of one shape.

A simple, explicit model (count it by hand and you get the same numbers):

- A matmul of an (R, I) by an (I, O) matrix costs 2*R*I*O FLOPs (a multiply and an add).
- An expert FFN has `n_mats` = 3 matmuls of D x F ("swiglu": gate, up, down) or 2 ("gelu").
- **Useful FLOPs** are the FFN matmuls on the kept slots: 2 * R * D * F * n_mats, R = N = T*K
  (with a capacity, at most E*C slots survive: R = min(T*K, E*C)).
- **Executed FLOPs** are what the implementation actually multiplies: the padded rows of the
  (E, C, D) buffers count, and so do the one-hot dispatch and combine contractions of the einsum
  (2*T*E*C*D each, mostly multiplications by zero). Elementwise work (activation, gate scaling)
  is left out of both: it is O(R*F), small beside the matmuls.
- **Bytes moved** count each tensor once when written and once when read, at `dtype_bytes`
  per element: the expert weights read once
  (only the experts that can receive a slot for the loop and the grouped matmul), the
  activations through dispatch, FFN and combine, and the (T, E, C) tensors of the einsum.
  Index tensors (sort order, offsets) are O(R) integers and left out.

Where an implementation's cost depends on the routing (the padded length is the largest load),
the model assumes a perfectly balanced routing: C = ceil(T*K / E) unless `capacity` is given.

Implementations: "loop" (`minimoe.loop_moe`), "einsum" (`minimoe.einsum_moe`), "padded_bmm"
(`minimoe.padded_bmm_moe`), "grouped_mm" (`minimoe.grouped_mm_moe`), and "dense": a dense FFN
with hidden size K*F, the same useful FLOPs with no routing at all.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from minimoe.experts import n_matrices
from minimoe.impls import IMPLEMENTATIONS
from minimoe.validate import check_choice, check_int, check_optional_int

COST_MODELS = ("loop", "einsum", "padded_bmm", "grouped_mm", "dense")
# the cost models, and every registered implementation by name (each maps to its cost model)
IMPLS = (*COST_MODELS, *(name for name in IMPLEMENTATIONS if name not in COST_MODELS))


@dataclass(frozen=True)
class MoECost:
    """The cost of one forward pass of the experts step.

    Attributes:
        impl: the implementation.
        useful_flops: FFN matmul FLOPs on the routed (kept) slots.
        executed_flops: every matmul FLOP the implementation runs (padding, one-hot contractions).
        weight_bytes: expert weights read.
        activation_bytes: activations written and read (dispatch, FFN, combine).
        routing_tensor_bytes: the (T, E, C) dispatch and combine tensors (einsum only), written
            once and read once.
        capacity: the C of the (E, C, D) buffers (einsum, padded_bmm), else None.
    """

    impl: str
    useful_flops: int
    executed_flops: int
    weight_bytes: int
    activation_bytes: int
    routing_tensor_bytes: int
    capacity: int | None

    @property
    def bytes_moved(self) -> int:
        return self.weight_bytes + self.activation_bytes + self.routing_tensor_bytes

    @property
    def wasted_flops(self) -> int:
        return self.executed_flops - self.useful_flops

    @property
    def arithmetic_intensity(self) -> float:
        """Executed FLOPs per byte moved."""
        return self.executed_flops / self.bytes_moved if self.bytes_moved else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d.update(
            bytes_moved=self.bytes_moved,
            wasted_flops=self.wasted_flops,
            arithmetic_intensity=self.arithmetic_intensity,
        )
        return d


def _ffn_activation_bytes(R: int, D: int, F: int, n_mats: int) -> int:
    """Elements written + read by an FFN over R rows: input read, up outputs written and read,
    activation output written and read, output written."""
    n_up = n_mats - 1  # gate (+ up) projections
    return R * D + 2 * n_up * R * F + 2 * R * F + R * D


def moe_cost(
    impl: str,
    T: int,
    D: int,
    F: int,
    E: int,
    K: int,
    capacity: int | None = None,
    dtype_bytes: int = 4,
    activation: str = "swiglu",
) -> MoECost:
    """FLOPs and bytes of one forward pass of the experts step (see the module docstring).

    Args:
        impl: a cost model ("loop", "einsum", "padded_bmm", "grouped_mm" or "dense"), or the
            name of any implementation in `minimoe.impls.IMPLEMENTATIONS` (costed by its model).
        T, D, F, E, K: tokens, model dim, expert hidden dim, experts, experts per token.
        capacity: C per expert; None = dropless (the padded length is then ceil(T*K / E)).
        dtype_bytes: bytes per element of activations and weights.
        activation: "swiglu" (3 matmuls per expert), "gelu" or "relu" (2).

    Returns:
        A `MoECost`.
    """
    check_choice("impl", impl, IMPLS)
    model = impl if impl in COST_MODELS else IMPLEMENTATIONS[impl].cost_model
    for name, value in dict(T=T, D=D, F=F, E=E, K=K, dtype_bytes=dtype_bytes).items():
        check_int(name, value)
    check_optional_int("capacity", capacity)
    if T < 0 or min(D, F, E, K, dtype_bytes) < 1 or K > E:
        raise ValueError(f"bad sizes: T={T}, D={D}, F={F}, E={E}, K={K}, bytes={dtype_bytes}")
    if capacity is not None and capacity < 0:
        raise ValueError(f"capacity must be >= 0 or None, got {capacity}")
    b, n_mats = dtype_bytes, n_matrices(activation)
    C = math.ceil(T * K / E) if capacity is None else capacity
    R = T * K if capacity is None else min(T * K, E * C)  # the kept slots
    useful = 2 * R * D * F * n_mats
    expert_weights = n_mats * D * F  # elements of one expert
    if model == "dense":
        flops = 2 * T * D * (K * F) * n_mats
        act = _ffn_activation_bytes(T, D, K * F, n_mats)
        return MoECost(impl, flops, flops, K * expert_weights * b, act * b, 0, None)
    if model in ("loop", "grouped_mm"):
        # gather R rows (read + write), the FFN on R rows, gather back + weighted sum into T rows
        act = 2 * R * D + _ffn_activation_bytes(R, D, F, n_mats) + R * D + T * D
        weights = min(E, R) * expert_weights  # an expert without slots is never read
        return MoECost(impl, useful, useful, weights * b, act * b, 0, None)
    executed = 2 * E * C * D * F * n_mats  # the FFN over every padded row
    ffn_act = _ffn_activation_bytes(E * C, D, F, n_mats)
    if model == "padded_bmm":
        # gather R rows, write them into the zeroed (E, C, D) buffer, gather R rows back, combine
        act = 2 * R * D + E * C * D + ffn_act + R * D + R * D + T * D
        return MoECost(impl, useful, executed, E * expert_weights * b, act * b, 0, C)
    # einsum: dispatch "TEC,TD->ECD" and combine "TEC,ECD->TD" are dense contractions
    executed += 2 * (2 * T * E * C * D)
    act = (T * D + E * C * D) + ffn_act + (E * C * D + T * D)
    routing = 2 * (2 * T * E * C) * b  # dispatch and combine (in x's dtype), written and read
    return MoECost(impl, useful, executed, E * expert_weights * b, act * b, routing, C)
