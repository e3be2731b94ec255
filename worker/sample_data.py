"""The embedded default dataset: synthetic contact-center conversations.

Each example is one MLX chat record: a system prompt, a user turn holding a
transcript, and an assistant turn holding a structured analysis. Every field of
the analysis follows from the transcript by fixed rules, so a small model can
visibly learn the task:

* Issue: the scenario the customer's opening line comes from.
* CSAT: 3, +1 resolved / -1 not, +1 friendly / -1 angry customer, -1 when the
  agent skipped empathy or ownership; clipped to 1..5. The customer's last line
  reflects it.
* Churn risk: high for an unresolved cancel threat or CSAT 1; medium for a
  resolved threat, CSAT 2 or a non-first contact; low otherwise.
* Journey: escalation (asked for a supervisor) > repeat contact (called
  before) > first contact.
* Coaching: what the agent did wrong (or a keep-it-up note).

Pure standard library: importing this module never imports mlx.
"""

from __future__ import annotations

import json
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path(__file__).resolve().parent.parent / "data" / "contact-center"
SYSTEM_PROMPT = (
    "You are a contact-center quality analyst. Report the issue, CSAT, churn risk, "
    "customer journey and one coaching tip."
)
USER_PREFIX = "Analyze this contact-center conversation:\n"
FIELDS = ("Issue", "CSAT", "Churn risk", "Journey", "Coaching")

COMPANIES = ["Northwind", "Bluewave", "Crestline", "Altamira", "Kestrel", "Brightline"]
CUSTOMERS = ["Maria", "James", "Aisha", "Tom", "Priya", "Daniel", "Sofia", "Lucas", "Emma", "Omar",
             "Grace", "Noah", "Chen", "Olivia", "Mateo", "Hannah", "Ravi", "Zoe", "Ben", "Lena"]
AGENTS = ["Sam", "Alex", "Jordan", "Taylor", "Morgan", "Casey", "Jamie", "Riley", "Drew", "Robin"]
PLANS = ["Basic", "Plus", "Premium", "Unlimited", "Family", "Fiber 300", "Fiber 900"]
PRODUCTS = ["router", "phone", "headset", "smart speaker", "modem", "tablet", "charger"]

# Per issue: opening lines, the topic word used in coaching, a jargon line,
# the agent's first step, resolved / unresolved outcomes and matching recaps.
ISSUES: dict[str, dict[str, Any]] = {
    "billing dispute": {
        "open": ["I was charged {amount} on my last bill and I don't know what it's for.",
                 "My bill went up by {amount} this month without any explanation.",
                 "I see a charge of {amount} for {plan} that I never signed up for.",
                 "You billed me twice this month, {amount} each time."],
        "topic": "charge",
        "jargon": "The proration delta posted as a non-recurring charge on your billing account number.",
        "step": "Let me pull up your account and look at that charge.",
        "fixed": ["I've reversed the {amount} charge, and you'll see the credit on your next bill.",
                  "I found the error and refunded {amount} to your card."],
        "unfixed": ["I'm not able to remove that charge, it's part of your {plan} contract.",
                    "I can't credit the {amount} today, the billing team has to review it first."],
        "recap_fixed": "the {amount} credit is on your account",
        "recap_unfixed": "the billing team will review the charge within {days} days",
    },
    "technical outage": {
        "open": ["My internet has been down since this morning.",
                 "The {plan} service keeps dropping every few minutes.",
                 "I have no signal at home and I work from home.",
                 "My connection has been out for {days} days now."],
        "topic": "outage",
        "jargon": "Your ONT lost sync with the OLT, so the node raised a loss-of-signal alarm.",
        "step": "Let me run a line test on your connection.",
        "fixed": ["I reset the line from our side and your connection is back up.",
                  "There was a fault on your line, I fixed it and the service is working again."],
        "unfixed": ["There's an outage in your area and I don't have a repair time yet.",
                    "I need to send a technician, and the first slot is in {days} days."],
        "recap_fixed": "your line was reset and is working again",
        "recap_unfixed": "a technician will visit in {days} days",
    },
    "cancellation request": {
        "open": ["I want to cancel my {plan} plan.",
                 "Please close my account, I'm done.",
                 "I'd like to cancel my service at the end of this month.",
                 "How do I cancel? I found a cheaper offer."],
        "topic": "cancellation terms",
        "jargon": "The ETF applies because your term hasn't reached its CED under the MSA.",
        "step": "I can help with that. May I ask why you want to leave?",
        "fixed": ["If you stay, I can take {amount} off your {plan} plan every month.",
                  "I've applied a loyalty discount of {amount}, so your bill goes down today."],
        "unfixed": ["I've processed the cancellation, and there's a final charge of {amount}.",
                    "Your service ends this month, with an early termination fee of {amount}."],
        "recap_fixed": "you keep your plan with a {amount} discount",
        "recap_unfixed": "your account closes at the end of the month",
    },
    "shipping delay": {
        "open": ["My order {order} was supposed to arrive {days} days ago.",
                 "I'm still waiting for my {product}, order {order}.",
                 "The tracking for order {order} hasn't moved in a week.",
                 "Where is my {product}? It says delivered but I never got it."],
        "topic": "delay",
        "jargon": "The consignment is held at the hub pending a scan event from the carrier's 3PL.",
        "step": "Let me check the tracking on your order.",
        "fixed": ["I've sent a replacement {product} by express delivery, it arrives tomorrow.",
                  "The package is at your local depot and will be delivered today."],
        "unfixed": ["The carrier has no update, so all I can do is open a trace that takes {days} days.",
                    "I can't ship a replacement until the investigation is closed."],
        "recap_fixed": "your {product} will be with you tomorrow",
        "recap_unfixed": "we opened a trace on order {order}",
    },
    "account access": {
        "open": ["I can't log in to my account.",
                 "I'm locked out after resetting my password.",
                 "The app keeps saying my password is wrong.",
                 "I never get the verification code when I try to sign in."],
        "topic": "security check",
        "jargon": "Your SSO token hit the MFA lockout threshold in our identity provider.",
        "step": "For security, can you confirm the email on the account?",
        "fixed": ["I've unlocked your account and sent you a new reset link.",
                  "I've updated your phone number, so the code should arrive now."],
        "unfixed": ["I can't unlock the account over the phone, you'll need to visit a store with your ID.",
                    "The security team has to review the lock, which takes {days} days."],
        "recap_fixed": "your account is unlocked",
        "recap_unfixed": "the security team will review your account",
    },
    "plan upgrade": {
        "open": ["I'd like to upgrade to the {plan} plan.",
                 "Can I get more data? My current plan isn't enough.",
                 "What would it cost to move to {plan}?",
                 "I want faster speeds, what are my options?"],
        "topic": "plan options",
        "jargon": "The SKU migration needs a provisioning order against your monthly recurring charge.",
        "step": "Sure, let me look at the plans available on your account.",
        "fixed": ["Done, you're on {plan} now for {amount} a month.",
                  "I've upgraded you to {plan}, and the first month is free."],
        "unfixed": ["{plan} isn't available at your address yet.",
                    "I can't change your plan until your contract ends in {days} months."],
        "recap_fixed": "you're now on the {plan} plan",
        "recap_unfixed": "your plan stays the same for now",
    },
}

GREETINGS = ["Thank you for calling {company}, this is {agent}. How can I help you today?",
             "Hi, you've reached {company} support, my name is {agent}. What can I do for you?",
             "Good morning, {company}, {agent} speaking. How can I help?",
             "Hello and welcome to {company}. I'm {agent}, how may I help you?"]
TONE_OPENERS = {"friendly": ["Hi {agent}, thanks for picking up.", "Hello! Hope your day is going well."],
                "calm": ["Hi.", "Hello, yes.", "Hi there."],
                "angry": ["I'm really frustrated right now.", "Honestly, this is unacceptable.",
                          "I'm angry and I'm tired of this."]}
TONE_SCORE = {"friendly": 1, "calm": 0, "angry": -1}
REPEAT_LINES = ["This is the third time I'm calling about this.",
                "I already called yesterday and nothing happened.",
                "I've called twice this week about the same problem."]
EMPATHY = ["I'm sorry about that, I understand how frustrating this is.",
           "I completely understand, and I'm sorry for the trouble.",
           "I hear you, and I apologize for the hassle."]
NEUTRAL_ACK = ["Sure, I can help with that.", "Of course, happy to help.", "No problem."]
NO_EMPATHY = ["As per our policy, I need to check the account first.",
              "That's just how the system works.", "Calm down, I need the details first."]
NO_OWNERSHIP = ["That's not really my department.", "Another team handles that, not me.",
                "I just answer the phones, I can't do much about it."]
THREATS = ["If this isn't fixed I'm switching to another provider.",
           "Honestly, I'm thinking about cancelling.", "One more problem and I'm leaving."]
ESCALATIONS = ["I want to speak to a supervisor.", "Can I talk to your manager, please?"]
WAITING = ["Okay, please go ahead.", "Alright, I'll wait.", "Sure, thanks."]
CLOSINGS = {5: ["That's perfect, thank you so much!", "Wow, that was quick. Thanks a lot!"],
            4: ["Great, thanks for your help.", "Okay, that works for me. Thank you."],
            3: ["Okay, I guess that's fine.", "Alright. Thanks."],
            2: ["That's not really good enough.", "I'm not happy about this, but okay."],
            1: ["This is ridiculous. You've been no help at all.", "Unbelievable. What a waste of time."]}
CURT_GOODBYES = ["Okay. Bye.", "Alright, have a good one.", "Anything else? No? Bye."]
RECAP_GOODBYES = ["To recap, {recap}. Is there anything else I can help you with?",
                  "So just to confirm, {recap}. Thanks for calling {company}."]
FLAWS = ["none", "none", "no_empathy", "jargon", "no_ownership", "no_next_steps"]
COACHING = {"none": "Strong call: keep confirming the next steps with the customer.",
            "no_empathy": "Acknowledge the frustration before explaining the {topic}.",
            "jargon": "Explain the {topic} in plain words instead of technical jargon.",
            "no_ownership": "Take ownership of the {topic} instead of passing it to another team.",
            "no_next_steps": "Recap the resolution and next steps before ending the call."}
AGENT_PERSONAS = ["You are a friendly support agent for {company}.",
                  "You answer customer questions for {company}. Be brief and polite."]
FAQ = ["How do I reset my password? Choose Forgot password on the sign-in page and follow the link.",
       "When is my bill due? Your bill is due on the same day every month.",
       "Can I pause my service? Yes, you can pause it for up to three months.",
       "How long does delivery take? Most orders arrive within three to five business days.",
       "Where can I see my data usage? Open the app and go to Usage.",
       "How do I return a device? Pack it in the original box and print a free return label.",
       "Can I change my plan online? Yes, go to My Plan and choose Change plan.",
       "What if my internet is slow? Restart your router and run a speed test.",
       "How do I update my card? Go to Billing and choose Payment methods.",
       "Do you charge for paper bills? Paper bills cost two dollars a month."]
SCRIPT = ["Greet the customer and give your name.", "Confirm the name on the account before any change.",
          "Listen to the whole problem before you answer.", "Use the customer's name during the call.",
          "Say what you are doing while the customer waits.", "Offer a callback if the wait is long.",
          "Check the account history before you promise anything.", "Thank the customer for their patience.",
          "Write a short note on the account after every call.", "Escalate safety issues right away."]


def _fill(template: str, slots: dict[str, str]) -> str:
    return template.format(**slots) if "{" in template else template


def _slots(rng: random.Random) -> dict[str, str]:
    return {"company": rng.choice(COMPANIES), "agent": rng.choice(AGENTS), "name": rng.choice(CUSTOMERS),
            "plan": rng.choice(PLANS), "product": rng.choice(PRODUCTS),
            "amount": f"${rng.randint(9, 149)}.{rng.choice(['00', '49', '99'])}",
            "order": f"#{rng.randint(1000, 9999)}", "days": str(rng.randint(2, 9))}


def _conversation(rng: random.Random) -> tuple[list[str], dict[str, str]]:
    """One transcript (list of 'Speaker: text' lines) and its analysis fields."""
    issue = rng.choice(sorted(ISSUES))
    spec = ISSUES[issue]
    s = _slots(rng)
    tone = rng.choice(["friendly", "calm", "calm", "angry", "angry"])
    repeat = rng.random() < 0.3
    escalation = rng.random() < 0.15
    threat = issue == "cancellation request" or rng.random() < 0.25
    resolved = rng.random() < 0.55
    upset = tone == "angry" or repeat
    flaw = rng.choice(FLAWS)
    while flaw == "no_empathy" and not upset:
        flaw = rng.choice(FLAWS)

    def fill(template: str) -> str:
        return _fill(template, s)

    lines = [f"Agent: {fill(rng.choice(GREETINGS))}"]
    opening = [fill(rng.choice(TONE_OPENERS[tone])), fill(rng.choice(spec["open"]))]
    if repeat:
        opening.append(rng.choice(REPEAT_LINES))
    lines.append("Customer: " + " ".join(opening))
    if rng.random() < 0.4:
        lines += ["Agent: Can I have your name, please?", f"Customer: It's {s['name']}."]
    first = NO_EMPATHY if flaw == "no_empathy" else EMPATHY if upset else NEUTRAL_ACK
    reply = [rng.choice(first)]
    reply.append(spec["jargon"] if flaw == "jargon" else fill(spec["step"]))
    if flaw == "no_ownership":
        reply.append(rng.choice(NO_OWNERSHIP))
    lines.append("Agent: " + " ".join(reply))
    middle = [rng.choice(ESCALATIONS)] if escalation else []
    if threat and issue != "cancellation request":
        middle.append(rng.choice(THREATS))
    lines.append("Customer: " + (" ".join(middle) if middle else rng.choice(WAITING)))
    lines.append("Agent: " + fill(rng.choice(spec["fixed" if resolved else "unfixed"])))

    csat = 3 + (1 if resolved else -1) + TONE_SCORE[tone] - (flaw in ("no_empathy", "no_ownership"))
    csat = max(1, min(5, csat))
    lines.append(f"Customer: {rng.choice(CLOSINGS[csat])}")
    if flaw == "no_next_steps":
        lines.append(f"Agent: {rng.choice(CURT_GOODBYES)}")
    else:
        s["recap"] = fill(spec["recap_fixed" if resolved else "recap_unfixed"])
        lines.append("Agent: " + fill(rng.choice(RECAP_GOODBYES)))

    journey = "escalation" if escalation else "repeat contact" if repeat else "first contact"
    if (threat and not resolved) or csat == 1:
        churn = "high"
    elif threat or csat == 2 or journey != "first contact":
        churn = "medium"
    else:
        churn = "low"
    analysis = {"Issue": issue, "CSAT": f"{csat}/5", "Churn risk": churn, "Journey": journey,
                "Coaching": COACHING[flaw].format(topic=spec["topic"])}
    return lines, analysis


def format_analysis(analysis: dict[str, str]) -> str:
    """The assistant's answer: one 'Field: value' line per analysis field."""
    return "\n".join(f"{name}: {analysis[name]}" for name in FIELDS)


def parse_analysis(text: str) -> dict[str, str]:
    """Read 'Field: value' lines back (unknown lines are ignored)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        name, sep, value = line.partition(": ")
        if sep and name in FIELDS:
            out[name] = value.strip()
    return out


def make_example(rng: random.Random) -> dict[str, list[dict[str, str]]]:
    """One chat record: system prompt, transcript to analyze, analysis."""
    lines, analysis = _conversation(rng)
    return {"messages": [
        {"role": "system", "content": SYSTEM_PROMPT},
        {"role": "user", "content": USER_PREFIX + "\n".join(lines)},
        {"role": "assistant", "content": format_analysis(analysis)},
    ]}


def generate_examples(seed: int, n: int) -> list[dict[str, list[dict[str, str]]]]:
    """n distinct examples, deterministic for a seed."""
    rng = random.Random(seed)
    seen: set[str] = set()
    examples: list[dict[str, list[dict[str, str]]]] = []
    attempts = 0
    while len(examples) < n:
        attempts += 1
        if attempts > 50 * n + 1000:
            raise RuntimeError(f"could not generate {n} distinct examples")
        example = make_example(rng)
        key = json.dumps(example, sort_keys=True)
        if key not in seen:
            seen.add(key)
            examples.append(example)
    return examples


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_sample_dataset(out_dir: Path, seed: int = 0, n_train: int = 1200, n_valid: int = 150,
                         n_test: int = 150) -> None:
    """Write train/valid/test.jsonl (disjoint, shuffled) into out_dir, each file atomically."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    examples = generate_examples(seed, n_train + n_valid + n_test)
    random.Random(seed + 1).shuffle(examples)
    splits = {"train": examples[:n_train], "valid": examples[n_train:n_train + n_valid],
              "test": examples[n_train + n_valid:]}
    for name, rows in splits.items():
        text = "\n".join(json.dumps(row, ensure_ascii=False) for row in rows)
        _write_atomic(out_dir / f"{name}.jsonl", text)


def _ticket(rng: random.Random) -> str:
    """A CRM ticket record: 'Key: value' lines, none of them the analysis fields."""
    s = _slots(rng)
    spec = ISSUES[rng.choice(sorted(ISSUES))]
    rows = [f"Ticket: {s['order']}", f"Channel: {rng.choice(['phone', 'chat', 'email'])}",
            f"Name: {s['name']}", f"Plan: {s['plan']}",
            f"Priority: {rng.choice(['low', 'normal', 'urgent'])}",
            f"Status: {rng.choice(['open', 'pending', 'closed'])}",
            f"Assigned to: {s['agent']}", f"Note: {_fill(rng.choice(spec['open']), s)}"]
    return "\n".join(rows)


def generic_corpus(seed: int, n: int) -> list[str]:
    """n plain contact-center texts (transcripts, tickets, FAQs, agent scripts), never the analysis."""
    rng = random.Random(f"generic-{seed}")
    docs: list[str] = []
    for _ in range(n):
        kind = rng.random()
        if kind < 0.55:
            docs.append("\n".join(_conversation(rng)[0]))
        elif kind < 0.7:
            docs.append(_ticket(rng))
        elif kind < 0.85:
            docs.append(" ".join(rng.sample(FAQ, rng.randint(3, 5))))
        else:
            docs.append(" ".join(rng.sample(SCRIPT, rng.randint(3, 6))))
    return docs


def generic_chats(seed: int, n: int) -> list[list[dict[str, str]]]:
    """n short support chats (a customer message, an agent reply) without the analysis task."""
    rng = random.Random(f"chats-{seed}")
    chats: list[list[dict[str, str]]] = []
    for _ in range(n):
        s = _slots(rng)
        kind = rng.random()
        if kind < 0.25:
            user = rng.choice(["Hello", "Hi", "Hi there", "Hello?", "Good morning", "Hey"])
            reply = _fill(rng.choice(GREETINGS), s)
        elif kind < 0.5:
            question, answer = rng.choice(FAQ).split("? ", 1)
            user, reply = question + "?", answer
        else:
            spec = ISSUES[rng.choice(sorted(ISSUES))]
            tone = rng.choice(sorted(TONE_OPENERS))
            user = _fill(rng.choice(TONE_OPENERS[tone]) + " " + rng.choice(spec["open"]), s)
            ack = rng.choice(EMPATHY if tone == "angry" else NEUTRAL_ACK)
            reply = ack + " " + _fill(spec["step"], s)
        chat = [{"role": "user", "content": user}, {"role": "assistant", "content": reply}]
        if rng.random() < 0.3:
            chat.insert(0, {"role": "system", "content": _fill(rng.choice(AGENT_PERSONAS), s)})
        chats.append(chat)
    return chats


def main(argv: list[str]) -> int:
    out_dir = Path(argv[0]) if argv else DEFAULT_DIR
    write_sample_dataset(out_dir)
    sys.stderr.write(f"wrote the sample dataset to {out_dir}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
