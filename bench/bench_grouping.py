"""Batches grouped by length against file order, on a seed-shaped set: useful-token share, speed, and loss.

    .venv/bin/python bench/bench_grouping.py [--train 120] [--seeds 0 1 2] [--max-seq-length 512] [--epochs 1]
    .venv/bin/python bench/bench_grouping.py --smoke    # a few examples, one seed: checks its figures

The set is worker/seed_shaped.py's (the seed run's shape of token lengths, text records), its lengths scaled to
--max-seq-length, on the tiny model (CPU). One process (bench/grouping_child.py, with loraboard's OpenBLAS shim,
as the worker trains) does everything, A/B in one run:

  share     the useful-token share of one epoch over the whole 1,500-example set, `length` against `file_order`,
            from the batches alone (the worker's iterator, grouping and padding; no model), at --max-seq-length
            and at each of --share-lengths (the seed's own 2,048 among them);
  speed     one-epoch LoRA runs on the set's first --train examples, for each seed both groupings (the order
            alternating): the runs' measured share, wall time of the epoch and trained tokens/s;
  loss      the same runs' validation loss after the epoch, on the whole validation set: both groupings have
            trained on exactly the same examples (every one once), so this is loss at equal trained tokens;
            per seed the difference `length` - `file_order`, against the spread between seeds. (mlx-lm's
            count of trained tokens may still differ by a few: its loss mask counts one position past the end
            of each row shorter than its batch, none for a row that fills it, and grouping changes which do.)
  epochs    with --epochs N, each run trains N epochs (mlx-lm shuffles the batches every epoch, from the seed)
            and is validated after each: per epoch the difference at equal trained tokens (the same epoch) and at
            equal computed positions (the `length` curve, linear between its epochs' ends, at the positions
            `file_order` had computed by that epoch, or the other way round where those lie outside it).
The `length` side pads as the worker does (each batch to its own longest row, rounded up to 8; --row-multiple 16,
or 0 for mlx-lm's shapes cut to their longest batch) and may try other training: --chunk-batches N (sorted within
random chunks of N batches), --lr-by-tokens (each step's learning rate times its trained tokens over the run's mean),
--mean-loss (mlx-lm's mean loss instead of the token-weighted one).

Prints Markdown tables and writes bench/results/bench_grouping.json (a smoke: bench_grouping-smoke.json).
"""

from __future__ import annotations

import argparse
import itertools
import json
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import (
    CACHE_DIR,
    DEFAULT_MODEL,
    PROJECT_DIR,
    base_env,
    check_figures,
    check_inputs,
    fmt,
    log_tail,
    machine_info,
    machine_line,
    markdown_table,
    run_child,
    verdict,
    write_results,
)

GROUPINGS = ("file_order", "length")
SHARE_GOAL = 0.97


def openblas_env() -> dict[str, str]:
    """The child's environment: loraboard's OpenBLAS shim preloaded, one BLAS thread (as the worker trains)."""
    import importlib.util

    from worker.blas import build_shim

    env = base_env(OPENBLAS_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    spec = importlib.util.find_spec("scipy_openblas32")
    if spec is not None and spec.origin is not None:
        shim = build_shim(CACHE_DIR, Path(spec.origin).parent / "lib")
        env["LD_PRELOAD"] = " ".join(filter(None, [str(shim), env.get("LD_PRELOAD", "")]))
    return env


def measure(args: argparse.Namespace) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="loraboard-bench-grouping-") as scratch:
        work = Path(scratch)
        out = work / "result.json"
        cmd = [sys.executable, str(PROJECT_DIR / "bench" / "grouping_child.py"), "--out", str(out),
               "--model", str(args.model), "--work", str(work), "--full-train", str(args.full_train),
               "--train", str(args.train), "--valid", str(args.valid), "--seeds", *map(str, args.seeds),
               "--batch-size", str(args.batch_size), "--num-layers", str(args.num_layers),
               "--learning-rate", str(args.learning_rate), "--max-seq-length", str(args.max_seq_length),
               "--epochs", str(args.epochs),
               "--share-lengths", *map(str, args.share_lengths), "--chunk-batches", str(args.chunk_batches),
               "--row-multiple", str(args.row_multiple), *(["--lr-by-tokens"] if args.lr_by_tokens else []),
               *(["--mean-loss"] if args.mean_loss else [])]
        log = work / "child.log"
        child = run_child(cmd, openblas_env(), log, args.timeout)
        if child.returncode != 0 or not out.exists():
            raise SystemExit(f"bench: the grouping runs failed (exit {child.returncode}):\n{log_tail(log, 30)}")
        result: dict[str, Any] = json.loads(out.read_text())
        result["wall_s"] = child.wall_s
        return result


def length_shape(lengths: list[int], limit: int) -> dict[str, float]:
    """The set's token lengths as the issue gives the seed's: mean after truncation, share over, longest."""
    return {"examples": len(lengths), "mean_truncated": statistics.fmean(min(n, limit) for n in lengths),
            "over_limit": sum(n > limit for n in lengths) / len(lengths), "longest": max(lengths)}


def spread(values: list[float]) -> float:
    """The sample standard deviation (0 for a single value)."""
    return statistics.stdev(values) if len(values) > 1 else 0.0


def interpolated(curve: list[dict[str, Any]], positions: float) -> float | None:
    """A run's validation loss at `positions` computed, linear between its epochs' ends (None outside them)."""
    for before, after in itertools.pairwise(curve):
        if before["positions"] <= positions <= after["positions"]:
            part = (positions - before["positions"]) / (after["positions"] - before["positions"])
            return float(before["val_loss"] + part * (after["val_loss"] - before["val_loss"]))
    return None


def at_equal_positions(file_order: list[dict[str, Any]], length: list[dict[str, Any]],
                       epoch: int) -> tuple[str, float] | None:
    """length - file_order at the positions one of them had computed by the end of `epoch`: the `length` curve at
    file_order's positions when they lie inside it, else the file_order curve at length's (None: neither)."""
    mine, theirs = file_order[epoch - 1], length[epoch - 1]
    loss = interpolated(length, mine["positions"])
    if loss is not None:
        return "length at file_order's positions", loss - mine["val_loss"]
    loss = interpolated(file_order, theirs["positions"])
    if loss is not None:
        return "file_order at length's positions", theirs["val_loss"] - loss
    return None


def epoch_summary(by: dict[str, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Per epoch, means over seeds of each grouping's positions, wall time and validation loss, and the
    difference length - file_order at equal trained tokens (the same epoch) and at equal computed positions."""
    pairs = list(zip(by["file_order"], by["length"], strict=True))
    rows = []
    for epoch in range(1, len(pairs[0][0]["epochs"]) + 1):
        row: dict[str, Any] = {"epoch": epoch}
        for grouping in GROUPINGS:
            row[grouping] = {key: statistics.fmean(r["epochs"][epoch - 1][key] for r in by[grouping])
                             for key in ("positions", "wall_s", "val_loss")}
        same_epoch = [b["epochs"][epoch - 1]["val_loss"] - a["epochs"][epoch - 1]["val_loss"] for a, b in pairs]
        row["difference"] = {"mean": statistics.fmean(same_epoch), "spread": spread(same_epoch)}
        equal = [at_equal_positions(a["epochs"], b["epochs"], epoch) for a, b in pairs]
        if all(equal):
            values = [difference for _how, difference in equal]
            row["at_equal_positions"] = {"how": equal[0][0], "mean": statistics.fmean(values),
                                         "spread": spread(values), "per_seed": values}
        rows.append(row)
    return rows


def summarize(result: dict[str, Any]) -> dict[str, Any]:
    runs = result["runs"]
    by = {g: sorted((r for r in runs if r["grouping"] == g), key=lambda r: r["seed"]) for g in GROUPINGS}
    summary: dict[str, Any] = {}
    for grouping, own in by.items():
        summary[grouping] = {key: statistics.fmean(r[key] for r in own) for key in
                             ("useful_token_share", "wall_s", "tokens_per_second", "val_loss", "trained_tokens")}
        summary[grouping]["val_loss_spread"] = spread([r["val_loss"] for r in own])
    differences = [b["val_loss"] - a["val_loss"] for a, b in zip(by["file_order"], by["length"], strict=True)]
    summary["loss_difference"] = {"mean": statistics.fmean(differences), "spread": spread(differences),
                                  "per_seed": differences}
    summary["tokens_difference"] = max(abs(b["trained_tokens"] - a["trained_tokens"])
                                       for a, b in zip(by["file_order"], by["length"], strict=True))
    summary["speedup"] = summary["length"]["tokens_per_second"] / summary["file_order"]["tokens_per_second"]
    summary["epochs"] = epoch_summary(by)
    return summary


def report(args: argparse.Namespace, result: dict[str, Any], summary: dict[str, Any], info: dict[str, Any]) -> str:
    shape = length_shape(result["lengths"]["train"], args.max_seq_length)
    share_rows = []
    for limit, paddings in sorted(result["shares"].items(), key=lambda item: int(item[0])):
        for padding, shares in paddings.items():
            share_rows.append([f"{limit} tokens, {padding} padding", fmt(shares["file_order"], 4),
                               fmt(shares["length"], 4), f"≥ {SHARE_GOAL}", verdict(shares["length"], SHARE_GOAL)])
    run_rows = [[grouping, fmt(s["useful_token_share"], 3), fmt(s["wall_s"], 1), fmt(s["tokens_per_second"], 0),
                 fmt(s["trained_tokens"], 0), fmt(s["val_loss"], 4), fmt(s["val_loss_spread"], 4)]
                for grouping, s in ((g, summary[g]) for g in GROUPINGS)]
    difference = summary["loss_difference"]
    seeds = ", ".join(str(s) for s in args.seeds)
    epochs = []
    if args.epochs > 1:
        epoch_rows = []
        for row in summary["epochs"]:
            equal = row.get("at_equal_positions")
            epoch_rows.append([str(row["epoch"]), *(fmt(row[g]["positions"], 0) for g in GROUPINGS),
                               *(fmt(row[g]["wall_s"], 1) for g in GROUPINGS),
                               *(fmt(row[g]["val_loss"], 4) for g in GROUPINGS),
                               f"{row['difference']['mean']:+.4f}", fmt(row["difference"]["spread"], 4),
                               f"{equal['mean']:+.4f}" if equal else "-", fmt(equal["spread"], 4) if equal else "-",
                               equal["how"] if equal else "outside both curves"])
        epochs = [f"### Epoch by epoch, mean of seeds {seeds}: length - file_order at equal trained tokens (the "
                  "same epoch) and at equal computed positions (one curve linear between its epochs' ends)",
                  markdown_table(["epoch", "positions, file_order", "positions, length", "wall s, file_order",
                                  "wall s, length", "val loss, file_order", "val loss, length", "difference",
                                  "sd", "difference at equal positions", "sd", "interpolated"], epoch_rows)]
    return "\n\n".join([
        f"## Length grouping on a seed-shaped set: tiny model, CPU, batch {args.batch_size}",
        f"Training set: {shape['examples']:,.0f} examples scaled to {args.max_seq_length} tokens, mean "
        f"{shape['mean_truncated']:,.0f} after truncation, {100 * shape['over_limit']:.1f}% over the limit, longest "
        f"{shape['longest']:,.0f}.",
        "### Useful-token share of one epoch over the whole set (batches alone)",
        markdown_table(["max_seq_length, padding", "file_order", "length", "goal", ""], share_rows),
        f"### One epoch on the first {args.train} examples, mean of seeds {seeds}",
        markdown_table(["grouping", "useful share", "epoch wall (s)", "tokens/s", "trained tokens",
                        "val loss after the epoch", "val loss spread (sd)"], run_rows),
        markdown_table(["comparison", "value"], [
            ["tokens/s length / file_order", fmt(summary["speedup"], 2, "x")],
            ["val loss length - file_order (mean of seeds)", fmt(difference["mean"], 4)],
            ["val loss difference spread (sd over seeds)", fmt(difference["spread"], 4)],
            ["val loss length - file_order, seed by seed", ", ".join(f"{d:+.4f}" for d in difference["per_seed"])],
            ["trained tokens, largest difference between the groupings (mlx-lm's count)",
             fmt(summary["tokens_difference"], 0)],
        ]),
        *epochs,
        machine_line(info),
    ])


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model folder (default: %(default)s)")
    parser.add_argument("--full-train", type=int, default=1500, help="training examples of the set (the seed's)")
    parser.add_argument("--train", type=int, default=120, help="the first this many are trained on")
    parser.add_argument("--valid", type=int, default=32, help="validation examples, all measured after the epoch")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--epochs", type=int, default=1, help="epochs each run trains (mlx-lm shuffles the batches "
                        "each epoch, from the seed), the validation loss measured after each")
    parser.add_argument("--max-seq-length", type=int, default=512,
                        help="the runs' limit; the seed's 2,048 is scaled to it (default: as the tiny model's "
                        "test runs train)")
    parser.add_argument("--share-lengths", type=int, nargs="*", default=[1024, 2048],
                        help="other max_seq_lengths at which the whole set's share is counted (no training)")
    parser.add_argument("--chunk-batches", type=int, default=0,
                        help="the runs' `length` batches sorted within random chunks of this many batches, "
                        "Hugging Face's megabatches (default 0: the whole set sorted, as the worker does)")
    parser.add_argument("--row-multiple", type=int, default=8,
                        help="`length` batches each padded to their own longest row rounded up to this, as the "
                        "worker does with 8 (0: mlx-lm's shapes cut to their longest batch, the earlier rule)")
    parser.add_argument("--lr-by-tokens", action="store_true", help="`length` steps' learning rate scaled by the "
                        "batch's trained tokens over the run's mean tokens per batch")
    parser.add_argument("--mean-loss", action="store_true", help="`length` trains with mlx-lm's mean loss instead "
                        "of the token-weighted one")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds the measuring process may take")
    parser.add_argument("--smoke", action="store_true", help="64-example set, 8 trained on at 128 tokens, one "
                        "seed, figures checked; results to bench_grouping-smoke.json")
    args = parser.parse_args(argv)
    if args.smoke:
        args.full_train, args.train, args.valid, args.seeds = 64, 8, 4, [0]
        args.max_seq_length, args.share_lengths = 128, []
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.model = args.model.resolve()
    check_inputs(args.model, PROJECT_DIR / "data" / "contact-center")
    info = machine_info()
    print(f"bench: seed-shaped set, {args.train} of {args.full_train} examples trained on for "
          f"{args.epochs} epoch(s), seeds {args.seeds}", file=sys.stderr, flush=True)
    result = measure(args)
    summary = summarize(result)
    table = report(args, result, summary, info)
    print(table, flush=True)
    if args.smoke:
        figures: list[tuple[str, float | None]] = []
        for limit, paddings in sorted(result["shares"].items(), key=lambda item: int(item[0])):
            for padding, shares in paddings.items():
                figures += [(f"| {limit} tokens, {padding} padding |", shares[g]) for g in GROUPINGS]
        figures += [(f"| {g} |", summary[g][key]) for g in GROUPINGS
                    for key in ("useful_token_share", "wall_s", "tokens_per_second", "val_loss")]
        figures += [("tokens/s length / file_order", summary["speedup"])]
        check_figures(figures, table)
    settings = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    path = write_results("bench_grouping", {"settings": settings, "machine": info, "summary": summary,
                                            "shares": result["shares"], "runs": result["runs"],
                                            "train_lengths": result["lengths"]["train"]}, smoke=args.smoke)
    print(f"\nwrote {path.relative_to(PROJECT_DIR)}\n", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
