"""`python -m minimoe zoo` end to end on a tiny setting: table, JSON, markdown and the drop sweep."""

from __future__ import annotations

import json

import pytest
import torch

from minimoe.__main__ import main
from minimoe.zoo.arena import drop_sweep, format_table

pytestmark = pytest.mark.slow


def test_cli_tiny_run_writes_every_output(tmp_path, capsys):
    out = tmp_path / "out.json"
    md = tmp_path / "out.md"
    code = main(["zoo", "--quick", "--lm-steps", "2", "--collapse-steps", "2", "--no-progress",
                 "--routers", "token_choice", "expert_choice", "hash",
                 "--json", str(out), "--markdown", str(md)])  # fmt: skip
    assert code == 0
    data = json.loads(out.read_text())
    rows = {(r["task"], r["router"]): r for r in data["rows"]}
    # hash has no collapse row (no token ids there); the others one per task
    assert set(rows) == {("lm", "token_choice"), ("lm", "expert_choice"), ("lm", "hash"),
                         ("collapse", "token_choice"), ("collapse", "expert_choice")}  # fmt: skip
    for key in ("val_loss", "tokens_per_s", "max_mean_load", "drop_rate", "dead_experts",
                "causal", "params_total", "params_active"):  # fmt: skip
        assert all(key in r for r in data["rows"]), key
    assert rows["lm", "token_choice"]["causal"] is True
    assert rows["lm", "expert_choice"]["causal"] is False
    assert rows["lm", "hash"]["causal"] is True
    assert rows["lm", "expert_choice"]["max_mean_load"] == pytest.approx(1.0)
    assert data["machine"]["cores"] >= 1 and data["machine"]["torch"] == torch.__version__
    policies = {r["policy"] for r in data["drop_sweep"]}
    assert policies == {"position", "k_major", "probs", "reroute"}
    text = capsys.readouterr().out
    assert "task: lm" in text and "expert_choice" in text
    assert "| router |" in md.read_text()


def test_drop_sweep_reroute_never_drops_more_and_falls_with_capacity():
    g = torch.Generator().manual_seed(0)
    probs = torch.softmax(torch.randn(64, 8, generator=g) * 2 + torch.linspace(0, 2, 8), -1)
    expert = probs.topk(2, dim=1).indices
    rows = drop_sweep(probs, expert)
    by = {(r["capacity_factor"], r["policy"]): r["drop_rate"] for r in rows}
    cfs = sorted({r["capacity_factor"] for r in rows})
    for cf in cfs:
        assert by[cf, "reroute"] <= min(by[cf, p] for p in ("position", "k_major", "probs"))
    assert by[0.5, "position"] > 0.3 and by[cfs[-1], "reroute"] == 0.0
    assert all(by[a, "reroute"] >= by[b, "reroute"] for a, b in zip(cfs, cfs[1:]))


def test_format_table_marks_missing_values():
    row = dict(task="collapse", router="x", val_loss=1.0, tokens_per_s=10.0, max_mean_load=1.0,
               drop_rate=0.0, dead_experts=0, causal=None, leak=None, params_total=10,
               params_active=5)  # fmt: skip
    text = format_table([row])
    assert "n/a" in text and "task: collapse" in text
    assert "| x |" in format_table([row], markdown=True).replace("  ", " ")
