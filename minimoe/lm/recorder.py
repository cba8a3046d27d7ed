"""A per-step record of routing statistics, for the plots of router collapse and specialisation.

At every training step, for every MoE layer, `RoutingRecorder.record` keeps (detached, on the
CPU) what the layer's `MoEResult` says: the slots each expert processed, the drop rate, the
router's per-token entropy, the entropy of the load, dead experts, the largest load over the
mean, and the aux and z losses. The recorder is made by the training loop and returned in its
result; nothing is kept in globals.

    rec = result.records
    rec.load_HLE()             # (steps, MoE layers, experts): slots processed per expert
    rec.metric_SL("entropy")   # (steps, MoE layers)
"""

from __future__ import annotations

import torch

from minimoe.layer import MoEResult

SCALARS = (
    "drop_rate",
    "entropy",
    "load_entropy",
    "dead_experts",
    "max_over_mean",
    "aux",
    "z",
)


class RoutingRecorder:
    """Routing statistics per step and per MoE layer.

    Args:
        n_experts: E (the same in every MoE layer).
        layer_ids: the block index of each MoE layer, in depth order (for labels).
    """

    def __init__(self, n_experts: int, layer_ids: list[int]) -> None:
        self.n_experts = n_experts
        self.layer_ids = list(layer_ids)
        self.steps: list[int] = []
        self._load: list[torch.Tensor] = []  # each (L, E), kept slots
        self._routed: list[torch.Tensor] = []  # each (L, E), chosen slots before drops
        self._scalars: dict[str, list[list[float]]] = {name: [] for name in SCALARS}

    def __len__(self) -> int:
        return len(self.steps)

    @torch.no_grad()
    def record(self, step: int, results: list[MoEResult]) -> None:
        """Keep the statistics of one step.

        Args:
            step: the training step.
            results: one `MoEResult` per MoE layer, in depth order.
        """
        if len(results) != len(self.layer_ids):
            raise ValueError(f"expected {len(self.layer_ids)} MoE results, got {len(results)}")
        if not results:
            return
        self.steps.append(step)
        self._load.append(torch.stack([r.stats.load_E.detach().cpu() for r in results]))
        self._routed.append(torch.stack([r.stats.routed_E.detach().cpu() for r in results]))
        rows = {name: [] for name in SCALARS}
        for r in results:
            s = r.stats
            rows["drop_rate"].append(s.drop_rate)
            rows["entropy"].append(s.entropy)
            rows["load_entropy"].append(s.load_entropy)
            rows["dead_experts"].append(float(s.dead_experts))
            rows["max_over_mean"].append(s.max_over_mean)
            rows["aux"].append(float(r.aux_loss.detach()))
            rows["z"].append(float(r.z_loss.detach()))
        for name, row in rows.items():
            self._scalars[name].append(row)

    def load_HLE(self) -> torch.Tensor:
        """Slots each expert processed (after capacity drops): (steps, layers, experts), int64."""
        if not self._load:
            return torch.zeros(0, len(self.layer_ids), self.n_experts, dtype=torch.int64)
        return torch.stack(self._load)

    def routed_HLE(self) -> torch.Tensor:
        """Slots each expert was chosen for (before drops): (steps, layers, experts), int64."""
        if not self._routed:
            return torch.zeros(0, len(self.layer_ids), self.n_experts, dtype=torch.int64)
        return torch.stack(self._routed)

    def metric_SL(self, name: str) -> torch.Tensor:
        """One scalar statistic, (steps, layers), float64. `name` is one of `SCALARS`."""
        if name not in self._scalars:
            raise KeyError(f"unknown statistic {name!r}; one of {SCALARS}")
        return torch.tensor(self._scalars[name], dtype=torch.float64).reshape(
            len(self.steps), len(self.layer_ids)
        )

    def summary(self, last: int = 50) -> list[dict[str, float]]:
        """Per MoE layer, each statistic averaged over the last `last` recorded steps (the load
        as fractions of the slots). An empty list if nothing was recorded."""
        if not self.steps:
            return []
        load_LE = self.load_HLE()[-last:].double().sum(0)
        out = []
        for i, layer in enumerate(self.layer_ids):
            row: dict = {"layer": layer}
            for name in SCALARS:
                row[name] = float(self.metric_SL(name)[-last:, i].mean())
            row["load_fraction_E"] = (load_LE[i] / load_LE[i].sum().clamp_min(1)).tolist()
            out.append(row)
        return out
