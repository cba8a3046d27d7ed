"""The all-to-all's cost on real routing: bytes, the traffic matrix, the time split, overlap.

`time_rank` runs on every rank (under `launch`): a timed `ExpertParallelMoE` forward pass on this
rank's tokens, several times, and reports

- the bytes it sent to other ranks per step (dispatch + combine, forward), counted from the
  split sizes that went through `all_to_all_single`, beside `a2a_bytes_model`'s estimate for
  uniform routing, 2·T·K·D·b·(EP−1)/EP;
- its row of the traffic matrix (rows sent to each rank), gathered into count_WW;
- the time of each phase (route, dispatch, experts, combine), the median over the steps;
- the straggler time: every rank waits in the combine all-to-all for the slowest rank's experts,
  so max over ranks of the experts' time minus this rank's is time it spent idle;
- `overlapped_forward` with 1 and with `chunks` chunks: the tokens split in chunks, each
  chunk's dispatch posted asynchronously, the experts run on chunk i while chunk i+1 travels.
  Whether that helps depends on the backend really overlapping (gloo on a CPU runs its
  collectives on its own threads, but the same cores compute the experts).
"""

from __future__ import annotations

import statistics
import time

import torch
import torch.distributed as dist

from minimoe.config import MoEConfig
from minimoe.distributed.ep import ExpertParallelMoE
from minimoe.distributed.plan import a2a_bytes_model
from minimoe.layer import MoELayer


def gather_rows(row: list[int] | list[float], group=None) -> list[list]:
    """Every rank's list (same length), gathered on every rank: [rank 0's, rank 1's, ...]."""
    t = torch.tensor(row, dtype=torch.float64)
    out = [torch.empty_like(t) for _ in range(dist.get_world_size(group))]
    dist.all_gather(out, t, group=group)
    return [o.tolist() for o in out]


@torch.no_grad()
def overlapped_forward(layer: ExpertParallelMoE, x_TD: torch.Tensor, chunks: int) -> torch.Tensor:
    """The layer's dropless forward pass (no autograd) with the tokens split in `chunks` chunks,
    so that a chunk's all-to-all can travel while the previous chunk's experts compute.

    Every rank must use the same number of chunks. Returns y_TD (equal to layer(x_TD)[0]).
    """
    cfg, W, J = layer.cfg, layer.world, layer.local_experts_J.numel()
    D = x_TD.shape[1]
    logits_TE, _ = layer.router(x_TD)
    from minimoe.routing import route

    routing = route(logits_TE, cfg.top_k, cfg.gating)
    expert_TK, gate_TK = routing.expert_TK, routing.gate_TK
    K = cfg.top_k
    y_TD = torch.zeros_like(x_TD)
    plans = []
    # post every chunk's count exchange and dispatch first (counts are tiny and synchronous)
    for part in torch.arange(x_TD.shape[0]).tensor_split(chunks):
        slot_R, expert_R = layer._sorted_kept_slots(expert_TK[part], None)
        send_WJ = torch.bincount(expert_R, minlength=cfg.n_experts)[layer.experts_WJ]
        recv_WJ = torch.empty_like(send_WJ)
        dist.all_to_all_single(recv_WJ.view(-1), send_WJ.view(-1), group=layer.group)
        send_W, recv_W = send_WJ.sum(1).tolist(), recv_WJ.sum(1).tolist()
        x_MD = x_TD.new_empty(sum(recv_W), D)
        work = dist.all_to_all_single(
            x_MD, x_TD[part][slot_R // K].contiguous(), recv_W, send_W,
            group=layer.group, async_op=True,
        )  # fmt: skip
        plans.append((part, slot_R, send_W, recv_W, recv_WJ, x_MD, work))
    backs = []
    for part, slot_R, send_W, recv_W, recv_WJ, x_MD, work in plans:
        work.wait()
        local_M = (
            torch.arange(J, device=x_MD.device).repeat(W).repeat_interleave(recv_WJ.reshape(-1))
        )
        ones_M1 = x_MD.new_ones(x_MD.shape[0], 1)
        y_MD = layer.local_experts_fn(x_MD, local_M[:, None], ones_M1, layer.experts.params)
        y_RD = x_TD.new_empty(sum(send_W), D)
        back = dist.all_to_all_single(
            y_RD, y_MD.contiguous(), send_W, recv_W, group=layer.group, async_op=True
        )
        backs.append((part, slot_R, y_RD, back))
    for part, slot_R, y_RD, back in backs:
        back.wait()
        T = part.numel()
        y_ND = y_RD.new_zeros(T * K, D).index_copy(0, slot_R, y_RD)
        y_TD[part] = torch.bmm(gate_TK[part].unsqueeze(1), y_ND.view(T, K, D)).squeeze(1)
    return y_TD


def time_rank(
    rank: int,
    world_size: int,
    tokens: int = 512,
    d_model: int = 128,
    d_ff: int = 256,
    experts_per_rank: int = 4,
    top_k: int = 2,
    steps: int = 5,
    chunks: int = 4,
    seed: int = 0,
) -> dict:
    """Time the expert-parallel forward pass on this rank (see the module docstring)."""
    W = world_size
    E = experts_per_rank * W
    cfg = MoEConfig(d_model=d_model, d_ff=d_ff, n_experts=E, top_k=top_k)
    torch.manual_seed(seed)
    layer = ExpertParallelMoE.from_layer(MoELayer(cfg), timed=True)
    x_TD = torch.randn(W * tokens, d_model)[rank * tokens : (rank + 1) * tokens]
    per_step: list[dict[str, float]] = []
    with torch.no_grad():
        layer(x_TD)  # warm-up (first calls allocate)
        for _ in range(steps):
            dist.barrier()
            layer(x_TD)
            assert layer.last_stats is not None
            per_step.append(dict(layer.last_stats.seconds))
    stats = layer.last_stats
    assert stats is not None
    seconds = {k: statistics.median(s[k] for s in per_step) for k in per_step[0]}
    count_WW = gather_rows(stats.send_W)
    experts_W = [row[0] for row in gather_rows([seconds["experts"]])]
    rows_W = [row[0] for row in gather_rows([float(stats.rows_processed)])]

    # chunked against unchunked: both warmed up, then alternated, the best of each kept
    overlap_s = {1: float("inf"), chunks: float("inf")}
    with torch.no_grad():
        y_ref, _ = layer(x_TD)
        y_chunked = overlapped_forward(layer, x_TD, chunks)
        overlapped_forward(layer, x_TD, 1)
        for _ in range(max(3, steps)):
            for n in overlap_s:
                dist.barrier()
                t0 = time.perf_counter()
                overlapped_forward(layer, x_TD, n)
                overlap_s[n] = min(overlap_s[n], time.perf_counter() - t0)
    return {
        "rank": rank,
        "tokens": tokens,
        "d_model": d_model,
        "n_experts": E,
        "top_k": top_k,
        "seconds": seconds,
        "a2a_bytes_measured": stats.bytes_sent,
        "a2a_bytes_model": a2a_bytes_model(tokens, top_k, d_model, 4, W),
        "traffic_matrix": [[int(v) for v in row] for row in count_WW],
        "rows_processed_by_rank": [int(v) for v in rows_W],
        "experts_seconds_by_rank": experts_W,
        "straggler_wait_s": max(experts_W) - seconds["experts"],
        "overlap": {
            "chunks": chunks,
            "seconds_1_chunk": overlap_s[1],
            f"seconds_{chunks}_chunks": overlap_s[chunks],
            "max_abs_diff_vs_layer": float((y_chunked - y_ref).abs().max()),
        },
    }
