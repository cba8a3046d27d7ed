"""`python -m minimoe ep`: the command end to end (two gloo processes), and its report's parts."""

from __future__ import annotations

import json

import pytest
import torch

from minimoe.__main__ import main
from minimoe.distributed.cli import placement_report
from minimoe.distributed.plan import a2a_bytes_model


@pytest.mark.slow
def test_ep_command_two_ranks(tmp_path, capsys) -> None:
    """The command as `python -m minimoe ep` runs it (its entry point, in this process: the
    ranks are forked from here)."""
    out = tmp_path / "out.json"
    argv = ["ep", "--ranks", "2", "--json", str(out), "--no-deepspeed", "--tokens", "64",
            "--steps", "2", "--lm-steps", "4"]  # fmt: skip
    assert main(argv) == 0
    assert "expert parallelism over 2 processes" in capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["ranks"] == 2
    assert report["max_abs_diff_vs_single"] <= 1e-5
    assert report["max_abs_diff_grad_vs_single"] <= 1e-5
    assert report["deepspeed_max_abs_diff"] is None  # --no-deepspeed, and the report says so
    # bytes: each rank sends the off-rank rows of its 64 * 2 slots, and as many come back
    for rank, sent in enumerate(report["a2a_bytes_measured"]):
        row = report["traffic_matrix"][rank]
        col = [r[rank] for r in report["traffic_matrix"]]
        off_rank = sum(row) - row[rank] + sum(col) - col[rank]
        assert sent == off_rank * 128 * 4
    assert report["a2a_bytes_model"] == a2a_bytes_model(64, 2, 128, 4, 2)
    assert sum(map(sum, report["traffic_matrix"])) == 2 * 64 * 2
    assert set(report["time_split_s"]) == {"route", "dispatch", "experts", "combine"}
    assert all(v > 0 for v in report["time_split_s"].values())
    for overlap in report["overlap_by_rank"]:
        assert overlap["max_abs_diff_vs_layer"] <= 1e-5  # the chunked pass computes the same
    # the tiny LM: the same curve expert-parallel and in one process
    assert len(report["lm_loss_expert_parallel"]) == len(report["lm_loss_single_process"]) == 4
    assert report["lm_loss_max_abs_diff"] <= 1e-4
    assert report["lm_loss_expert_parallel"][0] > report["lm_loss_expert_parallel"][-1]
    for p in report["placement_on_lm_routing"]:
        assert p["cross_rank_slots_greedy"] <= p["slots_measured"]


def test_placement_report_on_a_hand_trace() -> None:
    # two ranks, one layer, E = 4: rank 0 uses experts 0 and 2, rank 1 uses 1 and 3
    ids = [[[[0, 2, 0, 2]]] * 4, [[[1, 3, 3, 1]]] * 4]
    (layer,) = placement_report(ids)
    assert layer["slots_measured"] == 16  # the held-out half: 2 steps x 2 ranks x 4 slots
    assert layer["cross_rank_slots_contiguous"] == 8  # experts 2 and 1 are on the other rank
    assert layer["cross_rank_slots_greedy"] == 0
    assert layer["greedy_rank_E"] == [0, 1, 0, 1]
    assert torch.tensor(layer["greedy_rank_E"]).bincount().tolist() == [2, 2]


def test_ep_command_refuses_bad_arguments(capsys) -> None:
    with pytest.raises(SystemExit) as info:
        main(["ep", "--ranks", "0"])
    assert info.value.code == 2
    assert "--ranks must be >= 1, got 0" in capsys.readouterr().err
