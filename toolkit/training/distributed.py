"""Several processes on one or more machines (`accelerate launch`, `torchrun`).

`adaptbench run` works unchanged under a launcher: every process joins the
training of each trained arm (the Hugging Face Trainer wraps the model in DDP),
then process 0 alone answers the test split, scores it and writes the run
directory. Anything shared on disk (indexes, paraphrases, adapters) is built by
process 0 first and read by the others.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))


def is_distributed() -> bool:
    return world_size() > 1


def is_main() -> bool:
    return rank() == 0


_solo = False  # set once the processes stop working together (process 0 evaluates alone)


def together() -> bool:
    """Whether collective calls (barriers) are still answered by every process."""
    return is_distributed() and not _solo


def go_solo() -> None:
    global _solo
    _solo = True


def init() -> None:
    """Join the process group (NCCL on CUDA, gloo on CPU) through accelerate's shared
    state, which the Trainer reuses."""
    global _solo
    if not is_distributed():
        return
    _solo = False  # each run of `--seeds N` trains together again
    # torch, numpy, accelerate: imported on first use, not when this module loads
    import torch
    from accelerate import PartialState
    PartialState(cpu=not torch.cuda.is_available())


def shutdown() -> None:
    """Leave the process group before the interpreter exits. Without it gloo's worker threads
    are still alive at finalisation, and the process can abort ("terminate called without an
    active exception") after its work is done, failing the launch. Local: it waits for no one."""
    dist = sys.modules.get("torch.distributed")  # loaded only if the process joined a group
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


@contextmanager
def main_first():
    """Process 0 runs the block first (and fills the caches); the others follow."""
    if not together():
        yield
        return
    # torch, numpy, accelerate: imported on first use, not when this module loads
    from accelerate import PartialState
    with PartialState().main_process_first():
        yield


def barrier() -> None:
    if together():
        # torch, numpy, accelerate: imported on first use, not when this module loads
        from accelerate import PartialState
        PartialState().wait_for_everyone()
