"""adaptbench: prompt, retrieve or fine-tune? Measured side by side.

The one place that sets the process's defaults for the libraries below it (read by them at
import, so set before any of them is imported):
- nothing phones home: Chroma's and ragas' usage analytics are off unless a user turns them on;
- ADAPTBENCH_OFFLINE=1 (the demo, the tests, the benchmarks, the Docker image) turns on the
  Hugging Face libraries' offline modes, so a stray hub call fails at once instead of hanging
  on a closed network; without it, hub ids download as usual;
- tokenizers do not fork their own thread pool inside ours.
"""

import os as _os

_os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
_os.environ.setdefault("RAGAS_DO_NOT_TRACK", "true")
_os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if _os.environ.get("ADAPTBENCH_OFFLINE") == "1":
    for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
        _os.environ.setdefault(_var, "1")

__version__ = "0.1.0"
