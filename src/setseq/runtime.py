"""The process's device, dtypes and library noise: what training and generation both need, and nothing more.

Generation imports this module, not the training stack.
"""

from __future__ import annotations

import os

import torch

from setseq.errors import SetseqError

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(name: str) -> torch.device:
    """`auto` -> the GPU when there is one, else the CPU; a CUDA device that is not there is refused."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SetseqError(f"model.device is {name} but no CUDA device is available", "use model.device=cpu")
    return torch.device(name)


def visible_gpus() -> int:
    """The GPUs this machine shows (what `model.fsdp` can shard across)."""
    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def quiet_libraries() -> None:
    """diffusers' and transformers' warnings and progress bars off; torch threads at most the cores."""
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import diffusers
        import transformers

        diffusers.utils.logging.set_verbosity_error()
        diffusers.utils.logging.disable_progress_bar()
        transformers.utils.logging.set_verbosity_error()
        transformers.utils.logging.disable_progress_bar()
    except ImportError:  # pragma: no cover
        pass
    if torch.get_num_threads() > (os.cpu_count() or 1):
        torch.set_num_threads(os.cpu_count() or 1)
