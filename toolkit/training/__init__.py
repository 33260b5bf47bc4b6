"""Training: LoRA / full / QLoRA with the Hugging Face Trainer (trainer), paraphrase augmentation,
distributed launch, and exporting adapters or merged models."""
