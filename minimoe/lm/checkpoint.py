"""Save and load a `TinyLM` with its config (and optionally its optimiser) in one file.

The file is a `torch.save` of plain data: the config as a dict, the state dicts, the step and any
extra values, so `torch.load(weights_only=True)` reads it without running pickled code. The
experts implementation is a function, not data: it is chosen again when loading.

Left out: sharded checkpoints, the data loader's position, the random generators' states.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minimoe.experts import ExpertsFn
from minimoe.lm.model import LMConfig, TinyLM
from minimoe.loop import loop_moe

FORMAT = "minimoe.lm.checkpoint/1"


def save_checkpoint(
    path: str | Path,
    model: TinyLM,
    cfg: LMConfig | None = None,
    optimizer: torch.optim.Optimizer | None = None,
    step: int = 0,
    **extra,
) -> Path:
    """Write model, config, optimiser state, step and extra values (plain data) to `path`.

    Args:
        path: the file to write (its folder is created).
        model: the `TinyLM`.
        cfg: its `LMConfig` (default: `model.cfg`; must equal it).
        optimizer: saved too when given, to resume training.
        step: the training step reached.
        **extra: more values to keep (numbers, strings, lists, dicts, tensors).

    Returns:
        The path written.
    """
    if not isinstance(model, TinyLM):
        raise TypeError(f"model must be a TinyLM, got {type(model).__name__}")
    cfg = model.cfg if cfg is None else cfg
    if cfg != model.cfg:
        raise ValueError("cfg is not the model's config: the checkpoint could not be rebuilt")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "cfg": cfg.to_dict(),
        "model": model.state_dict(),
        "optimizer": None if optimizer is None else optimizer.state_dict(),
        "step": int(step),
        "extra": extra,
    }
    torch.save(payload, path)
    return path


def load_checkpoint(
    path: str | Path,
    *,
    experts_fn: ExpertsFn = loop_moe,
    map_location: str | torch.device = "cpu",
) -> tuple[TinyLM, LMConfig, dict]:
    """Rebuild the model saved by `save_checkpoint`.

    Args:
        path: the checkpoint file.
        experts_fn: the experts implementation of the rebuilt model.
        map_location: where to load the tensors.

    Returns:
        (model, cfg, extra): the model (in train mode, as built), its config, and a dict with
        "step", "optimizer" (a state dict or None) and the extra values saved.
    """
    payload = torch.load(Path(path), map_location=map_location, weights_only=True)
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ValueError(f"{path} is not a minimoe.lm checkpoint (format {FORMAT})")
    cfg = LMConfig(**payload["cfg"])
    model = TinyLM(cfg, experts_fn=experts_fn)
    model.load_state_dict(payload["model"])
    model.to(map_location)
    extra = {"step": payload["step"], "optimizer": payload["optimizer"], **payload["extra"]}
    return model, cfg, extra
