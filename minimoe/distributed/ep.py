"""The expert-parallel MoE layer: each rank holds J = E / EP experts; tokens travel by all-to-all.

    layer = ExpertParallelMoE(cfg, group=None)        # every rank of the group builds it
    y, result = layer(x_TD)                           # this rank's tokens in, their outputs out

One forward pass on each rank, with W = EP ranks in the group:

1. route: the router (replicated on every rank) picks K experts per local token, exactly as
   `MoELayer` does (the layer *is* an `MoELayer`: same config, gates, capacity, losses).
2. dispatch: the slots are sorted by (destination rank, expert) (`order_by_rank`); the counts
   per expert are exchanged (an all-to-all of W x J integers, and the one host sync: the split
   sizes must be known before the rows move); then `all_to_all_single` with uneven splits sends
   each slot's token row to the rank that holds its expert. Dropless: nothing is cut.
3. experts: the M received rows are run through the J local experts as one grouped computation
   (`minimoe.grouped_mm_moe` by default, which sorts them by local expert).
4. combine: the reverse all-to-all brings each row back to the rank it came from; each token
   sums its K rows weighted by its gates.

Both all-to-alls are differentiable (`AllToAll`): the backward of an all-to-all is the
all-to-all with the split sizes swapped, so the gradients of the expert weights arrive on the
rank that holds them, and those of the tokens on the rank that sent them.

The fixed-capacity variant (`dispatch="capacity"`) is GShard's and DeepSpeed-MoE's: every rank
sends a (J, C, D) buffer to every other rank, the C slots per expert padded with zeros, so the
split sizes are known in advance and no counts are exchanged (no host sync). The price: the
slots beyond C are dropped (the config's capacity and drop policy decide which), and the padding
travels too. Every rank must then have the same number of tokens (the same C).

Names elsewhere (docs/conventions.md, "Expert parallelism"): DeepSpeed `MOELayer` with
`_AllToAll` (deepspeed/moe/sharded_moe.py), Megatron-LM `MoEAlltoAllTokenDispatcher`
(megatron/core/transformer/moe/token_dispatcher.py), torchtitan `ExpertParallel`
(torchtitan/distributed/expert_parallel.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from minimoe.capacity import expert_capacity
from minimoe.config import MoEConfig
from minimoe.distributed.plan import expert_ranks
from minimoe.experts import ExpertParams, Experts, ExpertsFn, activate
from minimoe.layer import MoELayer
from minimoe.sorted import grouped_mm_moe
from minimoe.validate import check_choice, check_index_tensor

DISPATCHES = ("dropless", "capacity")


class AllToAll(torch.autograd.Function):
    """`dist.all_to_all_single` with uneven splits, differentiable.

    forward: rows [0, in_splits[0]) go to rank 0, the next in_splits[1] to rank 1, ...; the
    result holds out_splits[w] rows from each rank w, in rank order. backward: the gradient rows
    go back the same way, the splits swapped.
    """

    @staticmethod
    def forward(ctx, x_RD, out_splits, in_splits, group):  # type: ignore[override]
        ctx.splits, ctx.group = (out_splits, in_splits), group
        out = x_RD.new_empty((sum(out_splits), *x_RD.shape[1:]))
        dist.all_to_all_single(out, x_RD.contiguous(), out_splits, in_splits, group=group)
        return out

    @staticmethod
    def backward(ctx, grad_out):  # type: ignore[override]
        out_splits, in_splits = ctx.splits
        grad_in = grad_out.new_empty((sum(in_splits), *grad_out.shape[1:]))
        dist.all_to_all_single(
            grad_in, grad_out.contiguous(), in_splits, out_splits, group=ctx.group
        )
        return grad_in, None, None, None


def all_to_all(x_RD: torch.Tensor, out_splits: list[int], in_splits: list[int], group=None):
    """Differentiable all-to-all of rows (see `AllToAll`)."""
    return AllToAll.apply(x_RD, list(out_splits), list(in_splits), group)


@dataclass
class StepStats:
    """What one forward pass of an `ExpertParallelMoE` measured on its rank.

    Attributes:
        seconds: wall time of each phase: "route" (router, gates, capacity), "dispatch" (sort,
            count exchange, all-to-all out), "experts" (the local experts), "combine" (the
            all-to-all back and the weighted sum).
        send_W: rows this rank sent to each rank in the dispatch (its own share stays local).
        recv_W: rows it received from each rank.
        bytes_sent: bytes this rank sent to other ranks, dispatch + combine (forward only).
        rows_processed: M, the rows its local experts ran (padding included for "capacity").
    """

    seconds: dict[str, float] = field(default_factory=dict)
    send_W: list[int] = field(default_factory=list)
    recv_W: list[int] = field(default_factory=list)
    bytes_sent: int = 0
    rows_processed: int = 0


class ExpertParallelMoE(MoELayer):
    """An `MoELayer` whose experts are sharded over the ranks of a process group.

    Every rank of `group` builds it with the same config and the same placement. With the same
    global seed on every rank (`torch.manual_seed`), the router and the experts start as the
    unsharded `MoELayer(cfg)` would: the full expert weights are drawn, then each rank keeps its
    own J (`from_layer` copies them from an existing layer instead).

    Args:
        cfg: the `MoEConfig` (E must be a multiple of the group's size).
        group: the expert-parallel process group (None: the default group, all ranks).
        rank_E: the placement, int64 (E,), J experts per rank (default: contiguous,
            `expert_ranks`).
        dispatch: "dropless" (counts exchanged, uneven splits) or "capacity" (fixed (J, C, D)
            buffers, no count exchange; needs a config with a capacity formula).
        local_experts_fn: how the local experts run on the received rows (an experts function
            with the signature of `minimoe.reference_moe`; default `grouped_mm_moe`).
        timed: record `StepStats` (phase times, bytes) in `self.last_stats` on every forward
            pass; on CUDA each phase then ends with a device synchronisation.

    Attributes:
        local_experts_J: int64 (J,), the ids of the experts this rank holds (ascending).
        experts: an `Experts` of J experts (row j is expert local_experts_J[j]).
    """

    rank_E: torch.Tensor  # buffers: the placement, and the experts of each rank (W, J)
    experts_WJ: torch.Tensor

    def __init__(
        self,
        cfg: MoEConfig,
        group: dist.ProcessGroup | None = None,
        *,
        rank_E: torch.Tensor | None = None,
        dispatch: str = "dropless",
        local_experts_fn: ExpertsFn = grouped_mm_moe,
        timed: bool = False,
    ) -> None:
        super().__init__(cfg)
        if not dist.is_initialized():
            raise RuntimeError(
                "ExpertParallelMoE needs an initialised torch.distributed process group "
                "(minimoe.distributed.launch starts one)"
            )
        self.dispatch = check_choice("dispatch", dispatch, DISPATCHES)
        if dispatch == "capacity" and cfg.capacity_formula == "dropless":
            raise ValueError(
                "dispatch='capacity' sends fixed (J, C, D) buffers and needs a capacity C: "
                "give the config a capacity_formula other than 'dropless'"
            )
        self.group = group
        self.world = dist.get_world_size(group)
        self.rank = dist.get_rank(group)
        E = cfg.n_experts
        if rank_E is None:
            rank_E = expert_ranks(E, self.world)  # refuses E % W != 0, naming both
        else:
            check_index_tensor("rank_E", rank_E, dim=1)
            if rank_E.shape != (E,):
                raise ValueError(f"rank_E must have shape (n_experts={E},), got {rank_E.shape}")
            held_W = torch.bincount(rank_E.long(), minlength=self.world)
            if int(rank_E.min()) < 0 or held_W.numel() > self.world or (held_W != held_W[0]).any():
                raise ValueError(
                    f"rank_E must place E / W = {E // self.world} experts on each of the "
                    f"W={self.world} ranks, got {rank_E.tolist()}"
                )
        if E % self.world:
            raise ValueError(f"n_experts={E} is not a multiple of the group's size {self.world}")
        self.register_buffer("rank_E", rank_E.long().clone(), persistent=False)
        J = E // self.world
        # experts_WJ[w] = the experts rank w holds, ascending: the order of the (rank, expert) sort
        experts_WJ = torch.stack(
            [torch.nonzero(self.rank_E == w).squeeze(1) for w in range(self.world)]
        )
        self.register_buffer("experts_WJ", experts_WJ, persistent=False)
        self.local_experts_J = experts_WJ[self.rank].clone()
        full = self.experts
        self.experts = Experts(J, cfg.d_model, cfg.d_ff, cfg.activation)
        self._copy_local_experts(full.params)
        for p in self.experts.parameters():
            p.expert_parallel = True  # type: ignore[attr-defined]  # sync_gradients reads it
        self.local_experts_fn = local_experts_fn
        self.experts_fn = self._expert_parallel
        self.timed = timed
        self.last_stats: StepStats | None = None

    @torch.no_grad()
    def _copy_local_experts(self, params: ExpertParams) -> None:
        idx = self.local_experts_J.to(params.w1_EFD.device)
        self.experts.w1_EFD.copy_(params.w1_EFD[idx])
        self.experts.w2_EDF.copy_(params.w2_EDF[idx])
        if params.w3_EFD is not None and self.experts.w3_EFD is not None:
            self.experts.w3_EFD.copy_(params.w3_EFD[idx])

    @classmethod
    def from_layer(cls, layer: MoELayer, group=None, **kwargs) -> ExpertParallelMoE:
        """The expert-parallel twin of an unsharded `layer`: its router, and its experts' weights
        for the experts this rank holds. kwargs: those of the constructor."""
        if not isinstance(layer, MoELayer):
            raise TypeError(f"layer must be an MoELayer, got {type(layer).__name__}")
        ep = cls(layer.cfg, group, **kwargs).to(layer.experts.w1_EFD.device)
        ep.router.load_state_dict(layer.router.state_dict())
        ep._copy_local_experts(layer.experts.params)
        return ep

    # ------------------------------------------------------------------------------------------

    def forward(self, x: torch.Tensor):
        if not self.timed:
            return super().forward(x)
        self.last_stats = StepStats()
        self._t0 = self._clock()
        y, result = super().forward(x)
        return y, result

    def _clock(self) -> float:
        if self.timed and self.experts.w1_EFD.is_cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def _lap(self, phase: str) -> None:
        if self.last_stats is not None and self.timed:
            now = self._clock()
            self.last_stats.seconds[phase] = now - self._t0
            self._t0 = now

    def _expert_parallel(
        self,
        x_TD: torch.Tensor,
        expert_TK: torch.Tensor,
        gate_TK: torch.Tensor,
        params: ExpertParams,
        keep_TK: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The experts step of `MoELayer.forward`, across ranks: dispatch, experts, combine."""
        self._lap("route")
        if self.dispatch == "capacity":
            y_ND = self._fixed_capacity(x_TD, expert_TK, keep_TK, params)
        else:
            y_ND = self._dropless(x_TD, expert_TK, keep_TK, params)
        T, K = expert_TK.shape
        y_TKD = y_ND.view(T, K, x_TD.shape[1])
        gate_T1K = gate_TK.to(y_TKD.dtype).unsqueeze(1)
        y_TD = torch.bmm(gate_T1K, y_TKD).squeeze(1)  # the fixed-order sum over K of `_combine`
        self._lap("combine")
        return y_TD

    def _sorted_kept_slots(self, expert_TK, keep_TK):
        """The kept slots' flat ids, sorted by (destination rank, expert), and their experts."""
        expert_N = expert_TK.reshape(-1)
        if keep_TK is None or bool(keep_TK.all()):
            slot_R = torch.arange(expert_N.numel(), device=expert_N.device)
        else:
            slot_R = torch.nonzero(keep_TK.reshape(-1)).squeeze(1)
        E = self.cfg.n_experts
        key_R = self.rank_E[expert_N[slot_R]] * E + expert_N[slot_R]
        slot_R = slot_R[torch.sort(key_R, stable=True).indices]
        return slot_R, expert_N[slot_R]

    def _dropless(self, x_TD, expert_TK, keep_TK, params) -> torch.Tensor:
        T, K = expert_TK.shape
        D, W, J = x_TD.shape[1], self.world, self.local_experts_J.numel()
        slot_R, expert_R = self._sorted_kept_slots(expert_TK, keep_TK)
        count_E = torch.bincount(expert_R, minlength=self.cfg.n_experts)
        send_WJ = count_E[self.experts_WJ]  # row w: what goes to rank w, per expert it holds
        recv_WJ = torch.empty_like(send_WJ)
        dist.all_to_all_single(recv_WJ.view(-1), send_WJ.view(-1), group=self.group)
        send_W = send_WJ.sum(1).tolist()  # the host sync dropless dispatch needs
        recv_W = recv_WJ.sum(1).tolist()
        x_MD = all_to_all(x_TD[slot_R // K], recv_W, send_W, self.group)
        self._lap("dispatch")
        # the received rows: from rank 0 its rows for local expert 0, 1, ..., then rank 1, ...
        local_M = torch.repeat_interleave(
            torch.arange(J, device=x_TD.device).repeat(W), recv_WJ.reshape(-1)
        )
        ones_M1 = x_MD.new_ones(x_MD.shape[0], 1)
        y_MD = self.local_experts_fn(x_MD, local_M[:, None], ones_M1, params)
        self._lap("experts")
        y_RD = all_to_all(y_MD, send_W, recv_W, self.group)
        y_ND = y_RD.new_zeros(T * K, D).index_copy(0, slot_R, y_RD)  # dropped slots: 0
        if self.last_stats is not None and self.timed:
            self._record(send_W, recv_W, D * x_TD.element_size(), x_MD.shape[0])
        return y_ND

    def _fixed_capacity(self, x_TD, expert_TK, keep_TK, params) -> torch.Tensor:
        T, K = expert_TK.shape
        D, W, J, E = x_TD.shape[1], self.world, self.local_experts_J.numel(), self.cfg.n_experts
        cfg = self.cfg
        group = cfg.group_size if cfg.group_size is not None else T
        C = expert_capacity(
            group, E, K, cfg.capacity_formula, cfg.capacity_factor, cfg.min_capacity,
            cfg.expert_capacity,
        )  # fmt: skip
        assert C is not None  # the constructor refused a dropless config
        C = C * (T // group if group else 1)  # C per routing group, T // group groups per rank
        slot_R, expert_R = self._sorted_kept_slots(expert_TK, keep_TK)
        count_E = torch.bincount(expert_R, minlength=E)
        # the kept slots are sorted by (rank, expert): a slot's place in its expert's run is
        # its row minus the run's start, the runs in buffer order (rank 0's experts first)
        order_E = self.experts_WJ.reshape(-1)  # experts in buffer order
        slot_of_E = torch.empty_like(order_E)
        slot_of_E[order_E] = torch.arange(E, device=order_E.device)
        run_start_E = torch.zeros_like(count_E)
        run_start_E[order_E] = torch.cumsum(count_E[order_E], 0) - count_E[order_E]
        pos_R = torch.arange(slot_R.numel(), device=slot_R.device) - run_start_E[expert_R]
        row_R = slot_of_E[expert_R] * C + pos_R  # the row of each kept slot in the (W*J*C) buffer
        x_BD = x_TD.new_zeros(W * J * C, D).index_copy(0, row_R, x_TD[slot_R // K])
        split = [J * C] * W
        x_MD = all_to_all(x_BD, split, split, self.group)  # M = W * J * C rows, from rank w first
        self._lap("dispatch")
        x_JMD = x_MD.view(W, J, C, D).transpose(0, 1).reshape(J, W * C, D)
        h = torch.bmm(x_JMD, params.w1_EFD.transpose(1, 2))
        u = None if params.w3_EFD is None else torch.bmm(x_JMD, params.w3_EFD.transpose(1, 2))
        y_JMD = torch.bmm(activate(h, u, params.activation), params.w2_EDF.transpose(1, 2))
        y_MD = y_JMD.view(J, W, C, D).transpose(0, 1).reshape(W * J * C, D)
        self._lap("experts")
        y_BD = all_to_all(y_MD, split, split, self.group)
        y_ND = y_BD.new_zeros(T * K, D).index_copy(0, slot_R, y_BD[row_R])
        if self.last_stats is not None and self.timed:
            self._record(split, split, D * x_TD.element_size(), W * J * C)
        return y_ND

    def _record(self, send_W, recv_W, row_bytes: int, rows: int) -> None:
        stats = self.last_stats
        assert stats is not None
        stats.send_W, stats.recv_W = list(send_W), list(recv_W)
        # dispatch sends send_W off-rank rows; the combine sends back the recv_W rows it got
        off = sum(send_W) - send_W[self.rank] + sum(recv_W) - recv_W[self.rank]
        stats.bytes_sent = off * row_bytes
        stats.rows_processed = rows
