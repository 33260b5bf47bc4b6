"""One fine-tuning job, in its own process (so cancelling it is a terminate):
`python -m toolkit.serving.ft_worker SPEC.json`. Trains a LoRA adapter with adaptbench's trainer
(toolkit.training.trainer.train_model, which publishes the adapter with a rename only when it is
complete) and writes result.json, atomically, last."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from strategies.registry import config_class
from toolkit.config import GeneratorConfig
from toolkit.models import resolve_generator
from toolkit.parts import values_of
from toolkit.runs import atomic_write
from toolkit.serving.ft_formats import train_items
from toolkit.serving.ft_jobs import BASE_LR, DEFAULT_BATCH, DEFAULT_EPOCHS
from toolkit.training.trainer import train_model


def main(spec_path: str) -> int:
    spec = json.loads(Path(spec_path).read_text())
    hp = spec["hyperparameters"]
    train = train_items(Path(spec["training_file"]))
    val = train_items(Path(spec["validation_file"])) if spec.get("validation_file") else []
    epochs = DEFAULT_EPOCHS if hp["n_epochs"] == "auto" else int(hp["n_epochs"])
    batch = min(DEFAULT_BATCH, len(train)) if hp["batch_size"] == "auto" else int(hp["batch_size"])
    mult = 1.0 if hp["learning_rate_multiplier"] == "auto" else float(hp["learning_rate_multiplier"])
    cfg = config_class("finetune")(num_train_epochs=epochs, per_device_train_batch_size=batch,
                                   learning_rate=BASE_LR * mult)
    settings = values_of(cfg, "training")
    gen = GeneratorConfig(model=spec["model"], dtype=spec.get("dtype", "auto"))
    folder, info = train_model(resolve_generator(spec["model"]), gen, train, val, settings,
                               label="fine-tuning job", seed=int(spec.get("seed") or 0))
    atomic_write(Path(spec["out"]), json.dumps({
        "adapter": str(folder), "hyperparameters": {"n_epochs": epochs, "batch_size": batch,
                                                    "learning_rate_multiplier": mult},
        "info": {k: info.get(k) for k in ("train_tokens", "train_examples", "epochs_run", "final_eval_loss",
                                          "train_s", "adapter_key")}}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
