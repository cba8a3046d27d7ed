"""A trained tiny LM for the serving commands, trained once and kept in a user cache folder.

`generate` and `offload` need a model that has learnt something, or the text is noise and the
routing is that of random weights. Training the default tiny LM (2 blocks, D = F = 64, E = 8,
K = 2) for 200 steps of 32 x 64 bytes takes about 15 s on one core of an idle 2-core CPU; the result is
saved as a `minimoe.lm` checkpoint in `cache_dir()` and loaded from there afterwards. The file
name carries the model and training settings, so a change of either trains a new one.

The folder is $MINIMOE_CACHE if set, else $XDG_CACHE_HOME/minimoe, else ~/.cache/minimoe.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict
from pathlib import Path

import torch

from minimoe.lm.checkpoint import load_checkpoint, save_checkpoint
from minimoe.lm.data import build_corpus
from minimoe.lm.model import LMConfig, TinyLM
from minimoe.lm.train import TrainConfig, train

__all__ = ["QUICK_TRAIN", "cache_dir", "tiny_model"]

# 200 steps of 32 x 64 bytes: the loss reaches ~2.7 nats/byte (the corpus's unigram baseline is
# ~4.6). No time limit: a model cut short by a busy machine would be cached as if complete.
QUICK_TRAIN = TrainConfig(steps=200, batch_size=32, eval_every=0, eval_batches=4)


def cache_dir() -> Path:
    """Where trained models are kept (see the module docstring)."""
    if os.environ.get("MINIMOE_CACHE"):
        return Path(os.environ["MINIMOE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "minimoe"


def tiny_model(
    cfg: LMConfig | None = None,
    tcfg: TrainConfig = QUICK_TRAIN,
    *,
    progress: bool = True,
    use_cache: bool = True,
) -> tuple[TinyLM, dict]:
    """A trained `TinyLM`: loaded from the cache folder, or trained now (and saved there).

    Args:
        cfg: the model (default `LMConfig()`).
        tcfg: how to train it.
        progress: show the training progress bar.
        use_cache: read and write the cache folder (False: always train, save nothing).

    Returns:
        (model, info): info has "path" (or None), "trained_now", "val_loss", "steps".
    """
    cfg = LMConfig() if cfg is None else cfg
    if not isinstance(cfg, LMConfig):
        raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
    key = json.dumps(
        {"cfg": cfg.to_dict(), "train": asdict(tcfg), "torch": torch.__version__}, sort_keys=True
    )
    path = cache_dir() / f"tiny_lm_{hashlib.sha256(key.encode()).hexdigest()[:12]}.pt"
    if use_cache and path.exists():
        model, _, extra = load_checkpoint(path)
        return model.eval(), {
            "path": str(path),
            "trained_now": False,
            "val_loss": extra.get("val_loss"),
            "steps": extra["step"],
        }
    torch.manual_seed(tcfg.seed)
    model = TinyLM(cfg)
    result = train(model, build_corpus(), tcfg, progress=progress)
    info = {"path": None, "trained_now": True, "val_loss": result.val_loss, "steps": result.steps}
    if use_cache:
        save_checkpoint(path, model, step=result.steps, val_loss=result.val_loss)
        info["path"] = str(path)
    return model.eval(), info
