"""A dataset shaped like the seed run's: contact-center conversations of very different lengths, as `text` records.

The seed run (Mistral-7B, LoRA) trained on 1,500 conversations, validated on about 188 and kept 2,579 for testing.
Its log gives the shape of their token lengths: 6,302,243 tokens in 1,360 steps of 4 rows, a mean of about 1,159
tokens a row after truncation to 2,048; 24 of the 1,500 (1.6%) longer than 2,048; the longest 26,749.

The lengths here are drawn to match that, deterministically (quantiles, then shuffled by the seed):
- the body (98.4%) is log-normal below the 2,048 limit, with a spread of 0.45 (a contact-center call runs from a
  few hundred to about two thousand tokens), its centre set so that the mean after truncation is the seed's;
- the tail (1.6%) is log-uniform from 2,048 to the longest, which one example reaches exactly.
`scale` shrinks every length (limit and longest too) for a small model's max_seq_length; the shares stay.

Each record is `{"text": "<|user|>\\n…\\n<|assistant|>\\n…"}`, the seed's own format: the user turn asks for the
analysis of a transcript from worker/sample_data.py, lengthened by agent/customer exchanges that change none of its
fields until it has the drawn number of tokens, counted with the model's tokenizer; the assistant turn carries the
seed's fields (quality, CSAT, issue, churn risk, journey, coaching), which follow from the transcript by fixed
rules, so task evaluation scores them. Pure standard library: the tokenizer comes in as a function.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from statistics import NormalDist

from worker.sample_data import COACHING, SYSTEM_PROMPT, USER_PREFIX, _conversation, _slots, _write_atomic

USER_TAG = "<|user|>"
ASSISTANT_TAG = "<|assistant|>"
SEED_SIZES = {"train": 1500, "valid": 188, "test": 2579}
SEED_MEAN = 1159  # tokens a row after truncation to SEED_LIMIT
SEED_LIMIT = 2048
SEED_OVER_LIMIT = 24 / 1500
SEED_LONGEST = 26_749
BODY_SPREAD = 0.45  # sigma of the log-normal body
FIELDS = ("Quality", "Issue", "CSAT", "Churn risk", "Journey", "Coaching")
QUALITY = {"none": "9/10", "jargon": "7/10", "no_next_steps": "7/10", "no_empathy": "4/10", "no_ownership": "4/10"}

FILLER_AGENT = [
    "Thank you. Can you confirm the address on the account for me?",
    "Let me check that in our system, it will take a moment.",
    "I see order {order} here. Is that the one you mean?",
    "I'm going to run a quick check on the {product}, please stay on the line.",
    "Could you read me the last four digits of the card on file?",
    "I can see a note from {days} days ago about this.",
    "I'm looking at your {plan} plan details now.",
    "Can you tell me what you see on the screen right now?",
    "I'll need to place you on a short hold while I look into this.",
    "Thanks for waiting. I'm still going through the account history.",
]
FILLER_CUSTOMER = [
    "Sure, it's the one on Maple Street.", "Yes, that's the right one.", "Okay, I'll hold.",
    "It just shows a blank page with a spinning circle.", "I think so, but I'm not completely sure.",
    "That was the last time I called, yes.", "It ends in {days}{days}{days}{days}.",
    "Fine, but please be quick.", "No, nothing has changed since then.", "Alright, go ahead.",
]


def body_lengths(count: int, mean: float, limit: int, spread: float = BODY_SPREAD) -> list[int]:
    """`count` log-normal quantiles below `limit` whose mean is `mean` (their centre found by bisection)."""
    if count <= 0:
        return []
    normal = NormalDist()

    def lengths(centre: float) -> list[int]:
        top = normal.cdf((math.log(limit) - centre) / spread)  # quantiles of the part below the limit
        return [max(2, min(limit, round(math.exp(centre + spread * normal.inv_cdf(top * (i + 0.5) / count)))))
                for i in range(count)]

    low, high = math.log(2), math.log(limit)
    for _ in range(60):
        centre = (low + high) / 2
        low, high = (centre, high) if sum(lengths(centre)) / count < mean else (low, centre)
    return lengths((low + high) / 2)


def seed_lengths(count: int, seed: int = 0, scale: float = 1.0) -> list[int]:
    """`count` token lengths shaped like the seed's (see the module's docstring), shuffled by `seed`."""
    limit, longest = max(8, round(SEED_LIMIT * scale)), max(9, round(SEED_LONGEST * scale))
    over = round(count * SEED_OVER_LIMIT)
    body_mean = (SEED_MEAN * scale * count - over * limit) / max(1, count - over)
    tail = [round(math.exp(math.log(limit + 1) + (math.log(longest) - math.log(limit + 1)) * (i + 1) / over))
            for i in range(over)]
    lengths = body_lengths(count - over, body_mean, limit) + tail
    random.Random(seed).shuffle(lengths)
    return lengths


def quality_of(coaching: str) -> str:
    """The call's quality score, from the flaw its coaching tip names (one flaw a call, or none)."""
    for flaw, template in COACHING.items():
        if coaching == template or ("{" in template and coaching.startswith(template.split("{")[0])):
            return QUALITY[flaw]
    raise ValueError(f"no flaw has the coaching tip {coaching!r}")


def answer_text(analysis: dict[str, str]) -> str:
    fields = {"Quality": quality_of(analysis["Coaching"]), **analysis}
    return "\n".join(f"{name}: {fields[name]}" for name in FIELDS)


@dataclass
class SeedExample:
    text: str
    tokens: int  # counted by the tokenizer on the whole record's text
    target: int


def make_example(rng: random.Random, target: int, count_tokens: Callable[[str], int]) -> SeedExample:
    """One record of about `target` tokens (at most one exchange fewer; a target below the bare conversation's
    length gets the bare conversation): a transcript lengthened by exchanges that change none of its fields."""
    lines, analysis = _conversation(rng)
    slots = _slots(rng)
    cut = len(lines) - 3  # after the customer's answer to the agent's first step, before the outcome

    def render(extra: list[str]) -> str:
        transcript = "\n".join(lines[:cut] + extra + lines[cut:])
        return (f"{USER_TAG}\n{SYSTEM_PROMPT}\n{USER_PREFIX}{transcript}\n"
                f"{ASSISTANT_TAG}\n{answer_text(analysis)}")

    extra: list[str] = []
    tokens = count_tokens(render(extra))
    while True:  # exchanges while the next one still fits: each one's own count, summed; the whole text at the end
        exchange = [f"Agent: {rng.choice(FILLER_AGENT).format(**slots)}",
                    f"Customer: {rng.choice(FILLER_CUSTOMER).format(**slots)}"]
        more = count_tokens("\n" + "\n".join(exchange))
        if tokens + more > target:
            break
        tokens += more
        extra += exchange
    text = render(extra)
    return SeedExample(text, count_tokens(text), target)


def write_seed_shaped(out_dir: Path, count_tokens: Callable[[str], int], *, seed: int = 0, scale: float = 1.0,
                      sizes: dict[str, int] | None = None,
                      on_example: Callable[[], None] | None = None) -> dict[str, list[int]]:
    """Write train/valid/test.jsonl of seed-shaped records into out_dir (each file atomically); returns each
    split's token lengths as counted. `on_example` is called after each example is made (progress; an exception
    it raises ends the writing there)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    counted: dict[str, list[int]] = {}
    for offset, (split, count) in enumerate((sizes or SEED_SIZES).items()):
        rng = random.Random(seed * 1000 + offset)
        examples = []
        for target in seed_lengths(count, seed * 1000 + offset, scale):
            examples.append(make_example(rng, target, count_tokens))
            if on_example is not None:
                on_example()
        _write_atomic(out_dir / f"{split}.jsonl", "\n".join(json.dumps({"text": e.text}) for e in examples) + "\n")
        counted[split] = [e.tokens for e in examples]
    return counted
