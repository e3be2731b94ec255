"""Reading the output of `mlx_lm lora --train`: both the classic lines and the newer table (pure).

Classic (mlx-lm up to 0.2x, and older mlx-examples):
    Iter 10: Train loss 2.345, Learning Rate 1.000e-05, It/sec 1.234, Tokens/sec 567.8, Trained Tokens 4567,
    Peak mem 1.234 GB
    Iter 10: Val loss 2.100, Val took 3.456s
    Iter 10: Saved adapter weights to adapters/adapters.safetensors and adapters/0000010_adapters.safetensors.
Table (mlx_lm/cli_ui.py TrainUI, with Rich's ANSI colour codes even when piped to a file):
      iter   train_loss     tok/s     tokens
         1    val 4.588    2.39s
         5    4.683 ▼      569      4.3k
      save  0000010_adapters.safetensors

The table gives no learning rate, iterations per second or peak memory, and the trained tokens rounded to
hundreds; those are None in its points. Lines that carry no number are skipped: the known chatter of mlx_lm
(banner, loading messages, progress bar) is counted as `ignored`, anything else as `unrecognised`; neither is
ever fatal.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[()][A-Za-z0-9]|\x1b[=>78]")
NUMBER = r"[-+]?(?:\d[\d,]*\.?\d*(?:[eE][-+]?\d+)?|nan|inf)"

CLASSIC = re.compile(r"^Iter (?P<it>\d+): (?P<rest>.+?)\.?$")
CLASSIC_FIELD = re.compile(rf"^(?P<key>[A-Za-z/ ]+?) (?P<value>{NUMBER})\s*(?:GB|s)?$")
CLASSIC_SAVED = re.compile(r"^Saved adapter weights to .*?(?P<it>\d{7})_adapters\.safetensors")
TABLE_TRAIN = re.compile(rf"^(?P<it>\d+)\s+(?P<loss>{NUMBER})\s*[▼▲]?\s+(?P<toks>{NUMBER})\s+(?P<tokens>{NUMBER})k$")
TABLE_VAL = re.compile(rf"^(?P<it>\d+)\s+val\s+(?P<loss>{NUMBER})\s+(?P<took>{NUMBER})s$")
TABLE_SAVE = re.compile(r"^save\s+(?P<it>\d{7})_adapters\.safetensors$")
TEST_LINE = re.compile(rf"^Test loss (?P<loss>{NUMBER}), Test ppl (?P<ppl>{NUMBER})\.?$")
# mlx_lm's count of the parameters it trains, in millions: "Trainable parameters: 0.145% (10.486M/7241.732M)"
TRAINABLE_LINE = re.compile(rf"^Trainable parameters: {NUMBER}% \((?P<trainable>{NUMBER})M/(?P<total>{NUMBER})M\)$")

# mlx_lm's own lines that carry no number worth keeping.
CHATTER = re.compile(
    r"^(?:Loading (?:pretrained model|datasets)|Training|Testing|Fetching \d+ files|Starting training\b.*"
    r"|Calculating loss.*|Saved final weights to .*|\[WARNING\].*"
    r"|iter\s+train_loss\s+tok/s\s+tokens|(?:train|val)\s+[█░▏▎▍▌▋▊▉ ]*\d+%.*"
    r"|[─│╭╮╰╯┌┐└┘ ]*|[│┃].*[│┃]|[╭╰].*[╮╯])$"
)
TRAIN_KEYS = {
    "train loss": "train_loss", "learning rate": "learning_rate", "it/sec": "iterations_per_second",
    "tokens/sec": "tokens_per_second", "trained tokens": "trained_tokens", "peak mem": "peak_memory",
}


@dataclass
class TrainPoint:
    iteration: int
    train_loss: float
    learning_rate: float | None = None
    iterations_per_second: float | None = None
    tokens_per_second: float | None = None
    trained_tokens: int | None = None
    peak_memory: float | None = None


@dataclass
class ValPoint:
    iteration: int
    val_loss: float
    val_time: float = 0.0


@dataclass
class ParsedLog:
    train: list[TrainPoint] = field(default_factory=list)
    val: list[ValPoint] = field(default_factory=list)
    saved: list[int] = field(default_factory=list)  # iterations of the numbered adapter files it saved
    test_loss: float | None = None
    trainable_params: int | None = None  # as the log states them: to the thousand (mlx_lm prints millions, 3 decimals)
    total_params: int | None = None
    style: str | None = None  # "classic", "table" (both: "mixed"), None when no line gave a number
    lines: int = 0
    ignored: int = 0  # mlx_lm's known lines without numbers (banner, loading, progress bar, blank)
    unrecognised: int = 0  # anything else
    first_unrecognised: int | None = None  # its line number (1-based)

    @property
    def usable(self) -> bool:
        return bool(self.train or self.val)

    def counts(self) -> dict[str, Any]:
        return {"lines": self.lines, "train_points": len(self.train), "val_points": len(self.val),
                "saved": len(self.saved), "ignored": self.ignored, "unrecognised": self.unrecognised,
                "first_unrecognised_line": self.first_unrecognised, "style": self.style}


def strip_ansi(text: str) -> str:
    return ANSI.sub("", text)


def number(text: str) -> float:
    return float(text.replace(",", ""))


def _finite(value: float) -> bool:
    return not math.isnan(value) and not math.isinf(value)


def _classic(match: re.Match[str], log: ParsedLog) -> bool:
    it = int(match["it"])
    rest = match["rest"]
    saved = CLASSIC_SAVED.match(rest)
    if saved:
        log.saved.append(int(saved["it"]))
        return True
    values: dict[str, float] = {}
    for part in rest.split(", "):
        found = CLASSIC_FIELD.match(part.strip())
        if found is None:
            continue
        values[found["key"].strip().lower()] = number(found["value"])
    if "train loss" in values:
        point = TrainPoint(it, values["train loss"])
        for key, name in TRAIN_KEYS.items():
            if key in values and name != "train_loss":
                setattr(point, name, int(values[key]) if name == "trained_tokens" else values[key])
        log.train.append(point)
        return True
    if "val loss" in values:
        log.val.append(ValPoint(it, values["val loss"], values.get("val took", 0.0)))
        return True
    return False


def _table(line: str, log: ParsedLog) -> bool:
    if found := TABLE_TRAIN.match(line):
        log.train.append(TrainPoint(int(found["it"]), number(found["loss"]),
                                    tokens_per_second=number(found["toks"]),
                                    trained_tokens=round(number(found["tokens"]) * 1000)))
    elif found := TABLE_VAL.match(line):
        log.val.append(ValPoint(int(found["it"]), number(found["loss"]), number(found["took"])))
    elif found := TABLE_SAVE.match(line):
        log.saved.append(int(found["it"]))
    else:
        return False
    return True


def _last_per_iteration(points: list[Any]) -> list[Any]:
    """One point per iteration (a later line wins, as when a log holds a restarted run), in iteration order."""
    by_iteration = {p.iteration: p for p in points}
    return [by_iteration[it] for it in sorted(by_iteration)]


def parse_log(text: str) -> ParsedLog:
    """Every train and validation report of an mlx_lm lora log, its saved checkpoints and its counts."""
    log = ParsedLog()
    styles: set[str] = set()
    for number_, raw in enumerate(text.splitlines(), start=1):
        log.lines += 1
        # a terminal capture redraws the progress bar with carriage returns: each part is a line of its own
        parts = [strip_ansi(p).strip() for p in raw.split("\r")]
        known = False
        for line in parts:
            if classic := CLASSIC.match(line):
                if _classic(classic, log):
                    styles.add("classic")
                    known = True
            elif _table(line, log):
                styles.add("table")
                known = True
            elif test := TEST_LINE.match(line):
                log.test_loss = number(test["loss"])
                known = True
            elif counted := TRAINABLE_LINE.match(line):
                log.trainable_params = round(number(counted["trainable"]) * 1e6)
                log.total_params = round(number(counted["total"]) * 1e6)
                known = True
        if known:
            continue
        if all(CHATTER.match(p) for p in parts):
            log.ignored += 1
        else:
            log.unrecognised += 1
            log.first_unrecognised = log.first_unrecognised or number_
    log.train = [p for p in _last_per_iteration(log.train) if _finite(p.train_loss)]
    log.val = [p for p in _last_per_iteration(log.val) if _finite(p.val_loss)]
    log.saved = sorted(set(log.saved))
    log.style = "mixed" if len(styles) > 1 else next(iter(styles), None)
    return log


def fill_rates(points: list[TrainPoint]) -> None:
    """Iterations per second where the log gives tokens/sec and trained tokens but not it/sec (the table):
    mlx_lm measures both over the same interval, so it/sec = tokens/sec * iterations / tokens of that interval."""
    previous_it, previous_tokens = 0, 0
    for point in points:
        if point.iterations_per_second is None and point.tokens_per_second is not None \
                and point.trained_tokens is not None:
            tokens = point.trained_tokens - previous_tokens
            if tokens > 0:
                point.iterations_per_second = point.tokens_per_second * (point.iteration - previous_it) / tokens
        previous_it, previous_tokens = point.iteration, point.trained_tokens or previous_tokens
