"""Plain mlx-lm training, as `python -m mlx_lm lora --train ...` runs it, recording the train reports.

    python bench/plain_mlx_lm.py --out reports.json -- --model M --data D --train --iters 100 ...

Everything after `--` is parsed by `mlx_lm.lora.build_parser()` and completed with
`CONFIG_DEFAULTS` exactly as `mlx_lm.lora.main` does; the model and data are loaded as
`mlx_lm.lora.run` loads them, and `mlx_lm.lora.train_model` trains (console UI and all).
The only addition is a training callback that keeps the reports mlx-lm hands it and
writes them to `--out` as JSON: nothing is parsed from the console output.

Run it with LD_PRELOAD of loraboard's OpenBLAS shim to train on OpenBLAS; the JSON
says which BLAS the process actually had.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import os
import sys
import time
import types
from pathlib import Path
from typing import Any

import numpy as np
from mlx_lm import lora
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import load_dataset
from mlx_lm.utils import load


class Recorder(TrainingCallback):
    """Keeps every train and validation report as mlx-lm passes it."""

    def __init__(self) -> None:
        self.train: list[dict[str, Any]] = []
        self.val: list[dict[str, Any]] = []

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        self.train.append({key: float(value) for key, value in train_info.items()})

    def on_val_loss_report(self, val_info: dict[str, Any]) -> None:
        self.val.append({key: float(value) for key, value in val_info.items()})


def cli_args(argv: list[str]) -> types.SimpleNamespace:
    """The namespace `mlx_lm.lora.main` builds from the same command line (no YAML config here)."""
    args = vars(lora.build_parser().parse_args(argv))
    for key, value in lora.CONFIG_DEFAULTS.items():
        if args.get(key) is None:
            args[key] = value
    return types.SimpleNamespace(**args)


def blas_in_process() -> str:
    """Which BLAS MLX's matrix products bind to in this process."""
    try:
        name = ctypes.CDLL(None).loraboard_blas_name
    except AttributeError:
        return "reference BLAS"
    name.restype = ctypes.c_char_p
    return str(name().decode())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="where to write the recorded reports (JSON)")
    own, rest = parser.parse_known_args(argv)
    if rest and rest[0] == "--":
        rest = rest[1:]

    os.environ["TOKENIZERS_PARALLELISM"] = "true"  # as mlx_lm.lora.main sets it
    args = cli_args(rest)
    if not args.train:
        parser.error("pass --train (after --) as for `mlx_lm lora`")

    started = time.perf_counter()
    np.random.seed(args.seed)  # mlx_lm.lora.run, without its (absent) reporting services
    recorder = Recorder()
    model, tokenizer = load(
        args.model,
        tokenizer_config={"trust_remote_code": args.trust_remote_code},
        trust_remote_code=args.trust_remote_code,
    )
    train_set, valid_set, _ = load_dataset(args, tokenizer)
    loaded = time.perf_counter()
    lora.train_model(args, model, train_set, valid_set, training_callback=recorder)
    finished = time.perf_counter()

    result = {
        "train": recorder.train,
        "val": recorder.val,
        "blas": blas_in_process(),
        "load_s": loaded - started,
        "train_s": finished - loaded,
        "argv": rest,
    }
    own.out.parent.mkdir(parents=True, exist_ok=True)
    own.out.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
