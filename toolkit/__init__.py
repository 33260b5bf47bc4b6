"""adaptbench: prompt, retrieve or fine-tune? Measured side by side."""

__version__ = "0.1.0"
