"""One process of bench/bench_grouping.py: LoRA runs on a seed-shaped set, `length` against `file_order`.

    python bench/grouping_child.py --out result.json --model M --work DIR --train 120 --valid 32 --seeds 0 1 2 ...

The set is worker/seed_shaped.py's at the seed's size (--full-train examples, 1,500), lengths scaled to
--max-seq-length (the seed's 2,048-token limit becomes it), counted with the model's tokenizer and tokenized once.
The useful-token share of one epoch over the whole set is counted from its batches alone (no model: the same
iterator, grouping and padding as the runs), at --max-seq-length and at each of --share-lengths (a set generated at
that scale); the runs train on the first --train examples (a sample of the same distribution: the generator
shuffles its lengths). Each run is --epochs epochs (every training example
once an epoch, so both groupings train on exactly the same tokens; mlx-lm shuffles the batches each epoch from the
run's seed) through mlx-lm's trainer, its batches made as the worker
makes them (worker/train.py's StepHooks): worker/length_grouping.grouped for the run's batch_grouping, mlx-lm's
iterate_batches, worker/batch_padding's padding, worker/length_grouping.counted for the useful-token share; the loss
is the worker's (worker/token_weighting.training_loss: token-weighted for `length`, mlx-lm's own for file order). A run
starts from the base model with fresh LoRA weights and numpy's and MLX's generators seeded with its seed; after
each epoch the whole validation set is measured (grouped as the run's training batches, as the worker does; numpy's
generator is put back after it, so the epochs' order does not depend on it).

Options for the `length` side alone: --row-multiple (its batches' row lengths), --chunk-batches, --lr-by-tokens,
--mean-loss (bench/bench_grouping.py lists them); --groupings leaves a grouping out (file order's runs are
deterministic, so a comparison of `length` variants may run it once).

Writes JSON: the set's token lengths; the whole set's share per max_seq_length, padding and grouping; per run its
seed, grouping, useful-token share, trained tokens, wall time of the training, tokens/s and validation loss
at the end, and per epoch the validation loss, positions computed, trained tokens and wall time so far. Run it
with loraboard's OpenBLAS shim in LD_PRELOAD (the parent does), as the worker trains.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import mlx.core as mx
import numpy as np
from mlx_lm.tuner import trainer
from mlx_lm.tuner.callbacks import TrainingCallback
from mlx_lm.tuner.datasets import CacheDataset, create_dataset
from mlx_lm.utils import load

from app.contract.run_config import RunConfig
from worker.batch_padding import padded_batches
from worker.length_grouping import UsefulTokens, counted, grouped
from worker.loading import attach_adapters
from worker.seed_shaped import SEED_LIMIT, write_seed_shaped
from worker.token_weighting import batching_rows, token_weighted_loss, tokens_per_batch, training_loss
from worker.train import SilentUI, make_optimizer


class Trained(TrainingCallback):
    """The tokens mlx-lm counted as trained (its last train report's running total), and, when a run trains
    several epochs (one report an epoch), each earlier epoch's end: its validation loss, the positions computed and
    the training's wall time so far (the validations' own time left out)."""

    def __init__(self, measure: Any = None, useful: UsefulTokens | None = None, started: float = 0.0,
                 last_step: int = 0) -> None:
        self.tokens = 0
        self.measure, self.useful, self.started, self.last_step = measure, useful, started, last_step
        self.eval_s = 0.0
        self.epochs: list[dict[str, Any]] = []

    def on_train_loss_report(self, train_info: dict[str, Any]) -> None:
        self.tokens = int(train_info["trained_tokens"])
        if self.measure is None or self.useful is None or train_info["iteration"] >= self.last_step:
            return
        wall_s = time.perf_counter() - self.started - self.eval_s
        started_eval = time.perf_counter()
        order = np.random.get_state()  # evaluating draws from numpy's generator: the next epochs' order stays
        val_loss = self.measure()
        np.random.set_state(order)
        self.eval_s += time.perf_counter() - started_eval
        self.epochs.append({"epoch": len(self.epochs) + 1, "positions": self.useful.positions,
                            "trained_tokens": self.tokens, "wall_s": wall_s, "val_loss": val_loss})


def seed_shaped_rows(args: argparse.Namespace, tokenizer: Any,
                     max_seq_length: int) -> tuple[dict[str, list[Any]], dict[str, Any]]:
    """The training and validation records scaled to max_seq_length, written to --work, and their token lengths
    as counted."""
    def count(text: str) -> int:
        return len(tokenizer.encode(text, add_special_tokens=False))

    folder = Path(args.work) / f"data-{max_seq_length}"
    counted_lengths = write_seed_shaped(folder, count, seed=args.data_seed, scale=max_seq_length / SEED_LIMIT,
                                        sizes={"train": args.full_train, "valid": args.valid})
    rows = {split: [json.loads(line) for line in (folder / f"{split}.jsonl").read_text().splitlines()]
            for split in ("train", "valid")}
    return rows, counted_lengths


def tokenized(rows: list[Any], tokenizer: Any) -> CacheDataset:
    """mlx-lm's dataset of the records, every one tokenized now (no run pays for it)."""
    dataset = CacheDataset(create_dataset(rows, tokenizer, SimpleNamespace(mask_prompt=False)))
    for idx in range(len(dataset)):
        dataset[idx]
    return dataset


def epoch_batches(dataset: CacheDataset, grouping: str, batch_size: int, max_seq_length: int,
                  batch_padding: str = "tight", loop: bool = False) -> Any:
    """One epoch of batches as the worker makes them (worker/train.py's StepHooks.iterate_batches)."""
    kwargs = {"dataset": grouped(dataset, grouping), "batch_size": batch_size, "max_seq_length": max_seq_length,
              "loop": loop}
    return padded_batches(trainer.iterate_batches(**kwargs), kwargs, batch_padding, len(dataset) // batch_size,
                          grouping)


def rows_of(args: argparse.Namespace, grouping: str) -> str:
    """How a run's batches are padded: the batch_grouping given to padded_batches (--row-multiple 0: `length` keeps
    mlx-lm's shapes, each cut to its longest batch, as file order does)."""
    return grouping if args.row_multiple else "file_order"


def by_tokens(batches: Any, optimizer: Any, learning_rate: float, per_batch: float) -> Any:
    """The batches, the optimizer's learning rate set before each to `learning_rate` times its trained tokens (as
    mlx-lm's loss mask counts them) over `per_batch`, the run's mean."""
    for batch in batches:
        _tokens, lengths = batch
        rows = np.array(lengths)
        trained = int(np.maximum(np.minimum(rows[:, 1], batch[0].shape[1] - 1) - np.maximum(rows[:, 0], 1) + 1,
                                 0).sum())
        optimizer.learning_rate = learning_rate * trained / per_batch
        yield batch


def epoch_share(dataset: CacheDataset, grouping: str, batch_size: int, max_seq_length: int,
                batch_padding: str) -> float | None:
    """The useful-token share of one epoch's batches (tokens of the rows against the positions computed)."""
    useful = UsefulTokens()
    for _batch in counted(epoch_batches(dataset, grouping, batch_size, max_seq_length, batch_padding), useful):
        pass
    return useful.share


def one_run(args: argparse.Namespace, train_set: CacheDataset, valid_set: CacheDataset, seed: int,
            grouping: str) -> dict[str, Any]:
    """--epochs epochs (mlx-lm's iterator shuffles the batches each epoch, from the seed) from the base model with
    fresh LoRA weights, the validation loss on the whole valid set after each."""
    config = RunConfig(model=str(args.model), data=str(args.work), seed=seed, batch_size=args.batch_size,
                       num_layers=args.num_layers, learning_rate=args.learning_rate,
                       max_seq_length=args.max_seq_length, batch_grouping=grouping)
    steps = len(train_set) // args.batch_size
    chunk = args.chunk_batches * args.batch_size  # 0: the whole set sorted, as the worker does
    np.random.seed(seed)
    mx.random.seed(seed)
    model, _tokenizer = load(str(args.model))
    attach_adapters(model, config)
    useful = UsefulTokens()

    def validation_loss() -> float:
        return float(trainer.evaluate(model=model, dataset=grouped(valid_set, grouping), batch_size=args.batch_size,
                                      num_batches=-1, max_seq_length=args.max_seq_length))

    optimizer = make_optimizer(config)

    def iterate_batches(**kwargs: Any) -> Any:
        kwargs = {**kwargs, "dataset": grouped(kwargs["dataset"], grouping, chunk, seed)}
        batches = padded_batches(trainer.iterate_batches(**kwargs), kwargs, config.batch_padding, steps,
                                 rows_of(args, grouping), args.row_multiple or 8)
        if not kwargs.get("loop"):
            return batches
        if args.lr_by_tokens and per_batch is not None:
            batches = by_tokens(batches, optimizer, args.learning_rate, per_batch)
        return counted(batches, useful)

    training = trainer.TrainingArgs(
        batch_size=args.batch_size, iters=steps * args.epochs, val_batches=0, steps_per_report=steps,
        steps_per_eval=steps * args.epochs + 1, steps_per_save=steps * args.epochs + 1,
        max_seq_length=args.max_seq_length,
        adapter_file=str(Path(args.work) / f"adapters-{seed}-{grouping}.safetensors"))
    started = time.perf_counter()  # the loss as the worker's (token-weighted for `length`), its constant timed too
    trained = Trained(validation_loss, useful, started, steps * args.epochs)
    loss, per_batch = training_loss(train_set, grouping, args.batch_size, args.max_seq_length)
    if chunk and grouping == "length":  # the constant of the chunked batches (the same set less a different rest)
        sorted_set = grouped(train_set, grouping, chunk, seed)
        per_batch = tokens_per_batch(batching_rows(sorted_set), args.batch_size, args.max_seq_length)
        loss = token_weighted_loss(per_batch)
    if args.mean_loss:  # mlx-lm's own mean loss on both sides (the constant still scales --lr-by-tokens)
        loss = trainer.default_loss
    trainer.train(model=model, optimizer=optimizer, train_dataset=train_set, val_dataset=None,
                  args=training, loss=loss, iterate_batches=iterate_batches, training_callback=trained)
    wall_s = time.perf_counter() - started - trained.eval_s
    val_loss = validation_loss()
    epochs = [*trained.epochs, {"epoch": args.epochs, "positions": useful.positions,
                                "trained_tokens": trained.tokens, "wall_s": wall_s, "val_loss": val_loss}]
    return {"seed": seed, "grouping": grouping, "useful_token_share": useful.share, "positions": useful.positions,
            "trained_tokens": trained.tokens, "wall_s": wall_s, "tokens_per_second": trained.tokens / wall_s,
            "val_loss": val_loss, "steps": steps, "epochs": epochs}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--model", type=Path, required=True)
    parser.add_argument("--work", type=Path, required=True, help="a scratch folder for the set and the adapters")
    parser.add_argument("--full-train", type=int, default=1500, help="training examples of the generated set")
    parser.add_argument("--train", type=int, required=True, help="the first this many are trained on")
    parser.add_argument("--valid", type=int, required=True)
    parser.add_argument("--seeds", type=int, nargs="+", required=True)
    parser.add_argument("--data-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1, help="epochs each run trains, validated after each")
    parser.add_argument("--max-seq-length", type=int, required=True)
    parser.add_argument("--chunk-batches", type=int, default=0, help="`length` sorts within random chunks of this "
                        "many batches (0: the whole set)")
    parser.add_argument("--row-multiple", type=int, default=8, help="`length` batches each padded to their own "
                        "longest row rounded up to this (0: mlx-lm's shapes cut to their longest batch)")
    parser.add_argument("--lr-by-tokens", action="store_true", help="`length` steps' learning rate scaled by the "
                        "batch's trained tokens over the run's mean")
    parser.add_argument("--mean-loss", action="store_true", help="`length` trains with mlx-lm's mean loss, not the "
                        "token-weighted one")
    parser.add_argument("--groupings", nargs="+", default=["file_order", "length"],
                        help="the groupings trained (file order's runs are deterministic: one may leave them out)")
    parser.add_argument("--share-lengths", type=int, nargs="*", default=[],
                        help="other max_seq_lengths at which to count the whole set's share (no training)")
    args = parser.parse_args(argv)
    trainer.TrainUI = SilentUI  # type: ignore[misc,assignment]
    started = time.perf_counter()
    _model, tokenizer = load(str(args.model))
    shares: dict[str, dict[str, dict[str, float | None]]] = {}
    for max_seq_length in dict.fromkeys([args.max_seq_length, *args.share_lengths]):
        rows, counted_lengths = seed_shaped_rows(args, tokenizer, max_seq_length)
        full_set = tokenized(rows["train"], tokenizer)
        shares[str(max_seq_length)] = {
            padding: {grouping: epoch_share(full_set, grouping, args.batch_size, max_seq_length, padding)
                      for grouping in ("file_order", "length")} for padding in ("tight", "mlx_lm")}
        if max_seq_length == args.max_seq_length:
            trained_rows, lengths = rows, counted_lengths
    rows = trained_rows
    train_set, valid_set = tokenized(rows["train"][:args.train], tokenizer), tokenized(rows["valid"], tokenizer)
    prepared_s = time.perf_counter() - started
    runs = []
    for number, seed in enumerate(args.seeds):  # the order alternates, so neither grouping always runs first
        for grouping in (("file_order", "length") if number % 2 == 0 else ("length", "file_order")):
            if grouping not in args.groupings:
                continue
            runs.append(one_run(args, train_set, valid_set, seed, grouping))
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    args.out.write_text(json.dumps({"lengths": lengths, "shares": shares, "runs": runs,
                                    "prepared_s": prepared_s}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
