"""adaptbench: prompt, retrieve or fine-tune? Measured side by side."""

import os as _os

# Nothing phones home: Chroma's and ragas' usage analytics are off unless a user turns them on.
_os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
_os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")

__version__ = "0.1.0"
