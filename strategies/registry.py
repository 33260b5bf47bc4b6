"""Lazy registry: strategy type -> "module:Class" (lm-evaluation-harness style).

Looking names up never imports a strategy module, so `--help`, `validate` and
`ls` stay fast and torch-free.
"""

from __future__ import annotations

import importlib

from strategies import configs
from strategies.configs import BEST_MODEL_METRICS  # noqa: F401 -- what toolkit may know of strategy settings

STRATEGY_TYPES: dict[str, tuple[str, type[configs.StrategyConfig]]] = {
    "zero_shot": ("strategies.zero_shot:ZeroShot", configs.ZeroShotConfig),
    "few_shot": ("strategies.few_shot:FewShot", configs.FewShotConfig),
    "rag": ("strategies.rag:Rag", configs.RagConfig),
    "finetune": ("strategies.finetune:Finetune", configs.FinetuneConfig),
    "rag_finetune": ("strategies.rag_finetune:RagFinetune", configs.RagFinetuneConfig),
    "ensemble": ("strategies.ensemble:Ensemble", configs.EnsembleConfig),
}


def config_class(stype: str) -> type[configs.StrategyConfig]:
    return STRATEGY_TYPES[stype][1]


def strategy_class(stype: str):
    target = STRATEGY_TYPES[stype][0]
    module, _, cls = target.partition(":")
    return getattr(importlib.import_module(module), cls)
