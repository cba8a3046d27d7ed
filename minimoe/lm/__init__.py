"""A tiny MoE language model trained on real text: data, model, training loop, records, checkpoints.

    from minimoe.lm import LMConfig, TinyLM, TrainConfig, build_corpus, train

    corpus = build_corpus()                     # CPython stdlib sources, bytes
    result = train(TinyLM(LMConfig()), corpus, TrainConfig(steps=300))

`python -m minimoe train` runs it from the terminal (see `minimoe.lm.cli`).
"""

from minimoe.lm.checkpoint import load_checkpoint, save_checkpoint
from minimoe.lm.data import STDLIB_FILES, Corpus, build_corpus, get_batch, unigram_loss
from minimoe.lm.model import EXPERTS_IMPLS, LMConfig, TinyLM, count_params, dense_twin
from minimoe.lm.recorder import RoutingRecorder
from minimoe.lm.specialise import (
    CHAR_CLASSES,
    char_classes,
    class_expert_counts,
    measure_specialisation,
    mutual_information,
    normalised_mutual_information,
    random_router_baseline,
    route_text,
)
from minimoe.lm.train import History, TrainConfig, TrainResult, evaluate, lm_loss, train

__all__ = [
    "CHAR_CLASSES",
    "EXPERTS_IMPLS",
    "STDLIB_FILES",
    "Corpus",
    "History",
    "LMConfig",
    "RoutingRecorder",
    "TinyLM",
    "TrainConfig",
    "TrainResult",
    "build_corpus",
    "char_classes",
    "class_expert_counts",
    "count_params",
    "dense_twin",
    "evaluate",
    "get_batch",
    "lm_loss",
    "load_checkpoint",
    "measure_specialisation",
    "mutual_information",
    "normalised_mutual_information",
    "random_router_baseline",
    "route_text",
    "save_checkpoint",
    "train",
    "unigram_loss",
]
