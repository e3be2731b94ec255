"""What the worker forkserver imports once, before it forks any worker (app/contract/worker_fork.py):
transformers and its tokenizer classes, which mlx-lm imports first, and the modules `python -m worker` imports
first (not worker.__main__ itself: runpy then runs it as `__main__`). The hub is imported offline when the worker
would be (Settings.hf_offline sets HF_HUB_OFFLINE=1 in workers). MLX is not imported: its threads would not
survive a fork (a worker forked from a process that has MLX runs in a fresh interpreter instead).

The forkserver holds SIGTERM and SIGINT (blocked, not ignored), so that a fork has them held from its first
instruction: a stop sent to a run that is still starting waits until the worker's handler is in place
(worker/reporting.py unblocks them) instead of killing it before it can record its end. The forkserver itself ends
when the server that started it does (multiprocessing closes its pipe), not on a signal."""

from __future__ import annotations

import importlib
import os
import signal

from app.contract.settings import Settings
from app.contract.worker_fork import STOP_SIGNALS

if Settings().hf_offline:
    os.environ["HF_HUB_OFFLINE"] = "1"

import transformers  # noqa: F401
from transformers import AutoConfig, AutoTokenizer, PreTrainedTokenizerFast  # noqa: F401

signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

for module in ("worker.blas", "worker.reporting", "app.contract.run_config", "app.contract.paths"):
    importlib.import_module(module)
