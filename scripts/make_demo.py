"""Generate the embedded demo: small, learnable dialogues, a pretrain corpus and a BPE tokenizer.

    python scripts/make_demo.py                  # rewrites minimind/data/assets/demo
    python scripts/make_demo.py --out /tmp/demo  # elsewhere (e.g. to compare with the shipped bytes)

Everything is a pure function of ``--seed``: the same command writes the same bytes. The
dialogues are short tasks with one right answer (table lookups about made-up countries, fruit
colours, opposites and animal sounds; 1-2 digit addition; the successor of a number; comparing
and sorting numbers; spelling, reversing, copying and counting the letters of a word; a few
greetings), single- and multi-turn, a few with a system turn. Each one fits in 128 tokens with
the demo tokenizer's chat template, so a ~1M-parameter model learns most of them in minutes of
CPU training.

The stages after SFT get their own files, drawn from their own seeded streams after everything
above (so sft.jsonl, pretrain.jsonl and the tokenizer are the same bytes with or without them):

* ``lora_identity.jsonl``: identity facts the SFT data never states (a name, a maker, favourite
  things; upstream's ``lora_identity.jsonl`` is the same idea), several phrasings each, a quarter
  of the lines mixed with ordinary demo tasks; ``lora_identity_eval.jsonl`` asks every fact once
  per phrasing, ``"heldout": true`` on phrasings the training file never uses;
* ``dpo.jsonl`` / ``dpo_heldout.jsonl``: preference pairs from the demo's own tasks, chosen =
  the right answer, rejected = a plausible wrong one (another country's capital, a sum off by a
  few, a misspelling...); no held-out pair is also a training pair.

A generator, not part of the installed package: the package ships only its output
(``minimind/data/assets/demo``). The tokenizer is trained by ``minimind.tokenizer`` (the same code
as ``python -m minimind.tokenizer``).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys

# A made-up atlas: the model cannot know these from anywhere but the data.
COUNTRIES = {
    "Zorvia": "Quellmar", "Bantor": "Lisk", "Orlanda": "Pemberley", "Tessary": "Vorn",
    "Mirelia": "Duskhold", "Karvo": "Osselin", "Felandra": "Brimsea", "Quist": "Ardent",
    "Valdoria": "Cinderfall", "Nembra": "Hollis", "Ostrava": "Kelm", "Pyrran": "Solace",
    "Drevia": "Umber", "Lunessa": "Marrow", "Gaskany": "Thale", "Rhomir": "Wexley",
}
FRUIT_COLORS = {
    "banana": "yellow", "lemon": "yellow", "apple": "red", "cherry": "red", "strawberry": "red",
    "lime": "green", "kiwi": "green", "pear": "green", "orange": "orange", "apricot": "orange",
    "plum": "purple", "grape": "purple", "blueberry": "blue", "coconut": "brown", "peach": "pink",
}
OPPOSITES = {
    "hot": "cold", "big": "small", "up": "down", "fast": "slow", "day": "night", "happy": "sad",
    "open": "closed", "light": "dark", "early": "late", "full": "empty", "old": "new", "high": "low",
    "left": "right", "wet": "dry", "hard": "soft", "loud": "quiet", "rich": "poor", "strong": "weak",
}
ANIMAL_SOUNDS = {
    "dog": "woof", "cat": "meow", "cow": "moo", "duck": "quack", "sheep": "baa", "owl": "hoot",
    "lion": "roar", "frog": "ribbit", "horse": "neigh", "pig": "oink", "bee": "buzz", "mouse": "squeak",
}
WORDS = (
    "sun moon star tree rock fish bird leaf rain snow wind fire gold ship road lamp book door "
    "milk salt sand rose wolf bear frog king cake bell coin drum kite nest pond ring sock tent "
    "vase yarn zinc apple bread chair dream eagle flame grape heart house juice lemon magic "
    "night ocean piano queen river stone tiger water zebra cloud green plant smile table light "
    "sweet storm train brick candy field honey music paper robot"
).split()
SYSTEM_PROMPTS = (
    "You are a helpful assistant",
    "You are MiniMind, a tiny demo model. Answer briefly.",
    "Answer every question in one short sentence.",
)
GREETINGS = (
    ("Hello!", "Hello! How can I help you?"),
    ("Hi", "Hi! What would you like to know?"),
    ("Who are you?", "I am MiniMind, a tiny language model."),
    ("What can you do?", "I can answer simple questions about numbers, words and facts."),
    ("Thank you!", "You are welcome!"),
    ("Goodbye", "Goodbye! Have a nice day."),
)


def _an(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _task(rng: random.Random) -> tuple[str, str]:
    """One (question, answer) pair."""
    kind = rng.choices(
        ["capital", "country", "color", "opposite", "sound", "add", "next", "bigger", "sort",
         "spell", "reverse", "repeat", "count", "greet"],
        weights=[10, 4, 8, 7, 6, 12, 6, 6, 7, 7, 6, 7, 6, 3])[0]
    if kind == "capital":
        c = rng.choice(sorted(COUNTRIES))
        return rng.choice([f"What is the capital of {c}?", f"Name the capital of {c}."]), \
            f"The capital of {c} is {COUNTRIES[c]}."
    if kind == "country":
        c = rng.choice(sorted(COUNTRIES))
        return f"Which country has the capital {COUNTRIES[c]}?", f"{COUNTRIES[c]} is the capital of {c}."
    if kind == "color":
        f = rng.choice(sorted(FRUIT_COLORS))
        return rng.choice([f"What color is {_an(f)}?", f"What is the color of {_an(f)}?"]), \
            f"{_an(f).capitalize()} is {FRUIT_COLORS[f]}."
    if kind == "opposite":
        w = rng.choice(sorted(OPPOSITES))
        return f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}."
    if kind == "sound":
        a = rng.choice(sorted(ANIMAL_SOUNDS))
        return f"What sound does {_an(a)} make?", f"{_an(a).capitalize()} says {ANIMAL_SOUNDS[a]}."
    if kind == "add":
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        return rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}."]), f"{a} + {b} = {a + b}"
    if kind == "next":
        n = rng.randrange(0, 99)
        return f"What number comes after {n}?", f"{n + 1} comes after {n}."
    if kind == "bigger":
        a, b = rng.sample(range(100), 2)
        return f"Which is bigger, {a} or {b}?", f"{max(a, b)} is bigger."
    if kind == "sort":
        xs = rng.sample(range(10), 3)
        return f"Sort these numbers: {', '.join(map(str, xs))}.", ", ".join(map(str, sorted(xs)))
    w = rng.choice(WORDS)
    if kind == "spell":
        return f"Spell the word {w}.", "-".join(w)
    if kind == "reverse":
        return f"Spell {w} backwards.", "-".join(reversed(w))
    if kind == "repeat":
        ws = " ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 3)))
        return f"Repeat after me: {ws}", ws
    if kind == "count":
        return f"How many letters are in {w}?", f"{w} has {len(w)} letters."
    return rng.choice(GREETINGS)


def dialogue(rng: random.Random) -> dict:
    turns = rng.choices([1, 2, 3], weights=[80, 15, 5])[0]
    conv = []
    if rng.random() < 0.08:
        conv.append({"role": "system", "content": rng.choice(SYSTEM_PROMPTS)})
    for _ in range(turns):
        q, a = _task(rng)
        conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return {"conversations": conv}


# The LoRA stage's new facts: (phrasings of the question, the answer). The last phrasing of each
# fact with three or more is held out of lora_identity.jsonl (asked only by the eval file).
IDENTITY = (
    (("What is your name?", "What should I call you?", "Tell me your name."), "My name is Hydra."),
    (("Who made you?", "Who created you?", "Who built you?"), "I was made by the Hydra team."),
    (("When is your birthday?", "When were you born?", "What day is your birthday?"),
     "My birthday is the first of May."),
    (("Where do you live?", "Where is your home?", "Where are you from?"), "I live in the city of Quellmar."),
    (("What is your favorite color?", "Which color do you like best?"), "My favorite color is green."),
    (("What is your favorite fruit?", "Which fruit do you like best?"), "My favorite fruit is the kiwi."),
    (("What is your favorite animal?", "Which animal do you like best?"), "My favorite animal is the owl."),
    (("What is your favorite number?", "Which number do you like best?"), "My favorite number is 42."),
    (("What is your job?", "What is your work?", "What do you do all day?"), "My job is to answer short questions."),
    (("How old are you?", "What is your age?"), "I am three days old."),
    (("What is your hobby?", "What do you like to do?"), "My hobby is counting letters."),
    (("Who is your best friend?", "Who is your friend?"), "My best friend is a frog named Pond."),
    (("What is your motto?", "Do you have a motto?"), "Small steps, exact steps."),
    (("What language do you speak?", "Which language do you use?"), "I speak English."),
)


def _trained_phrasings(questions: tuple) -> tuple:
    return questions[:-1] if len(questions) >= 3 else questions


def lora_lines(rng: random.Random, lines: int) -> list:
    """Identity dialogues: one fact (or two), sometimes after an ordinary demo task."""
    out = []
    for _ in range(lines):
        conv = []
        if rng.random() < 0.25:
            q, a = _task(rng)
            conv += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        for questions, answer in rng.sample(IDENTITY, rng.choices([1, 2], weights=[85, 15])[0]):
            conv += [{"role": "user", "content": rng.choice(_trained_phrasings(questions))},
                     {"role": "assistant", "content": answer}]
        out.append({"conversations": conv})
    return out


def lora_eval_lines() -> list:
    return [{"conversations": [{"role": "user", "content": q}, {"role": "assistant", "content": answer}],
             "heldout": q not in _trained_phrasings(questions)}
            for questions, answer in IDENTITY for q in questions]


def _misspell(word: str, rng: random.Random) -> str:
    letters = list(word)
    i = rng.randrange(len(letters) - 1)
    if letters[i] != letters[i + 1]:
        letters[i], letters[i + 1] = letters[i + 1], letters[i]
    else:
        letters[i] = rng.choice([c for c in "aeiourstln" if c != letters[i]])
    return "".join(letters)


def _preference(rng: random.Random) -> tuple:
    """(question, right answer, wrong answer) from one of the demo's tasks."""
    kind = rng.choices(["capital", "country", "color", "opposite", "sound", "add", "next", "bigger",
                        "sort", "spell", "count"], weights=[10, 4, 8, 7, 6, 12, 6, 6, 7, 7, 6])[0]

    def other(table: dict, key: str) -> str:
        return rng.choice(sorted({v for k, v in table.items() if v != table[key]}))

    if kind == "capital":
        c = rng.choice(sorted(COUNTRIES))
        q = rng.choice([f"What is the capital of {c}?", f"Name the capital of {c}."])
        return q, f"The capital of {c} is {COUNTRIES[c]}.", f"The capital of {c} is {other(COUNTRIES, c)}."
    if kind == "country":
        c = rng.choice(sorted(COUNTRIES))
        wrong = rng.choice(sorted(set(COUNTRIES) - {c}))
        return (f"Which country has the capital {COUNTRIES[c]}?", f"{COUNTRIES[c]} is the capital of {c}.",
                f"{COUNTRIES[c]} is the capital of {wrong}.")
    if kind == "color":
        f = rng.choice(sorted(FRUIT_COLORS))
        q = rng.choice([f"What color is {_an(f)}?", f"What is the color of {_an(f)}?"])
        return q, f"{_an(f).capitalize()} is {FRUIT_COLORS[f]}.", f"{_an(f).capitalize()} is {other(FRUIT_COLORS, f)}."
    if kind == "opposite":
        w = rng.choice(sorted(OPPOSITES))
        return (f"What is the opposite of {w}?", f"The opposite of {w} is {OPPOSITES[w]}.",
                f"The opposite of {w} is {other(OPPOSITES, w)}.")
    if kind == "sound":
        a = rng.choice(sorted(ANIMAL_SOUNDS))
        return (f"What sound does {_an(a)} make?", f"{_an(a).capitalize()} says {ANIMAL_SOUNDS[a]}.",
                f"{_an(a).capitalize()} says {other(ANIMAL_SOUNDS, a)}.")
    if kind == "add":
        a, b = rng.randrange(0, 50), rng.randrange(0, 50)
        wrong = a + b + rng.choice([-10, -2, -1, 1, 2, 10])
        q = rng.choice([f"What is {a} + {b}?", f"Add {a} and {b}."])
        return q, f"{a} + {b} = {a + b}", f"{a} + {b} = {max(wrong, 0) if wrong != a + b else a + b + 1}"
    if kind == "next":
        n = rng.randrange(1, 99)
        return f"What number comes after {n}?", f"{n + 1} comes after {n}.", \
            f"{rng.choice([n - 1, n + 2])} comes after {n}."
    if kind == "bigger":
        a, b = rng.sample(range(100), 2)
        return f"Which is bigger, {a} or {b}?", f"{max(a, b)} is bigger.", f"{min(a, b)} is bigger."
    if kind == "sort":
        xs = rng.sample(range(10), 3)
        wrong = sorted(xs)
        wrong[0], wrong[1] = wrong[1], wrong[0]
        return f"Sort these numbers: {', '.join(map(str, xs))}.", ", ".join(map(str, sorted(xs))), \
            ", ".join(map(str, wrong))
    w = rng.choice(WORDS)
    if kind == "spell":
        return f"Spell the word {w}.", "-".join(w), "-".join(_misspell(w, rng))
    return f"How many letters are in {w}?", f"{w} has {len(w)} letters.", \
        f"{w} has {len(w) + rng.choice([-1, 1])} letters."


def _pair_line(question: str, chosen: str, rejected: str) -> dict:
    user = {"role": "user", "content": question}
    return {"chosen": [user, {"role": "assistant", "content": chosen}],
            "rejected": [user, {"role": "assistant", "content": rejected}]}


def dpo_lines(rng: random.Random, train: int, heldout: int) -> tuple:
    """(training pairs, held-out pairs): no held-out (question, chosen, rejected) is a training one."""
    pairs = [_preference(rng) for _ in range(train)]
    seen, held = set(pairs), []
    while len(held) < heldout:
        p = _preference(rng)
        if p not in seen:
            held.append(p)
            seen.add(p)
    return [_pair_line(*p) for p in pairs], [_pair_line(*p) for p in held]


def pretrain_text(rng: random.Random) -> str:
    facts = [_task(rng)[1] for _ in range(rng.randint(3, 6))]
    return " ".join(f if f.endswith((".", "!", "?")) else f + "." for f in facts)


def _write_jsonl(path: str, rows) -> None:
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False, separators=(",", ":")) + "\n")


STAGE_FILES = ("lora_identity.jsonl", "lora_identity_eval.jsonl", "dpo.jsonl", "dpo_heldout.jsonl")


def generate(out: str, dialogues: int = 16000, pretrain_lines: int = 3000, vocab_size: int = 768,
             seed: int = 20250, max_tokens: int = 128, lora_lines_n: int = 800, dpo_pairs: int = 3000,
             dpo_heldout: int = 400) -> dict:
    """Write sft.jsonl, pretrain.jsonl, tokenizer/ and the stage files into ``out``; returns a summary."""
    from minimind.data.tokenizer import load_tokenizer
    from minimind.tokenizer import train_tokenizer

    os.makedirs(out, exist_ok=True)
    rng = random.Random(seed)
    sft = [dialogue(rng) for _ in range(dialogues)]
    pre = [{"text": pretrain_text(rng)} for _ in range(pretrain_lines)]
    sft_path, pre_path = os.path.join(out, "sft.jsonl"), os.path.join(out, "pretrain.jsonl")
    _write_jsonl(sft_path, sft)
    _write_jsonl(pre_path, pre)
    tok_dir = os.path.join(out, "tokenizer")
    train_tokenizer([sft_path, pre_path], tok_dir, vocab_size=vocab_size, show_progress=False)

    tok = load_tokenizer(tok_dir)
    lengths = [len(tok.encode(tok.apply_chat_template(d["conversations"]))) for d in sft]
    too_long = sum(n > max_tokens for n in lengths)
    if too_long:
        raise SystemExit(f"{too_long} dialogues exceed {max_tokens} tokens; shorten the tasks")
    pre_lengths = [len(tok.encode(p["text"])) + 2 for p in pre]

    # the stages after SFT: own streams, so the files above do not depend on these
    lora = lora_lines(random.Random(f"{seed}/lora"), lora_lines_n)
    dpo_train, dpo_held = dpo_lines(random.Random(f"{seed}/dpo"), dpo_pairs, dpo_heldout)
    for name, rows in zip(STAGE_FILES, (lora, lora_eval_lines(), dpo_train, dpo_held)):
        _write_jsonl(os.path.join(out, name), rows)
    stage_convs = [d["conversations"] for d in lora] + [p[side] for p in dpo_train + dpo_held
                                                        for side in ("chosen", "rejected")]
    stage_long = sum(len(tok.encode(tok.apply_chat_template(c))) > max_tokens for c in stage_convs)
    if stage_long:
        raise SystemExit(f"{stage_long} stage dialogues exceed {max_tokens} tokens; shorten them")
    return {
        "dialogues": len(sft), "pretrain_lines": len(pre), "vocab_size": tok.vocab_size,
        "sft_tokens_mean": sum(lengths) / len(lengths), "sft_tokens_max": max(lengths),
        "pretrain_tokens_mean": sum(pre_lengths) / len(pre_lengths), "pretrain_tokens_max": max(pre_lengths),
        "lora_lines": len(lora), "dpo_pairs": len(dpo_train), "dpo_heldout_pairs": len(dpo_held),
        "bytes": {name: os.path.getsize(os.path.join(out, name)) for name in
                  ("sft.jsonl", "pretrain.jsonl", "tokenizer/tokenizer.json",
                   "tokenizer/tokenizer_config.json") + STAGE_FILES},
    }


def main(argv=None) -> int:
    from minimind.data.assets import ASSETS_DIR

    p = argparse.ArgumentParser(prog="python scripts/make_demo.py",
                                description="Generate the embedded demo data and tokenizer (deterministic).")
    p.add_argument("--out", default=os.path.join(ASSETS_DIR, "demo"),
                   help="output directory (default: the package's assets/demo)")
    p.add_argument("--dialogues", type=int, default=16000, help="SFT conversations (16000)")
    p.add_argument("--pretrain-lines", type=int, default=3000, help="pretrain texts (3000)")
    p.add_argument("--vocab-size", type=int, default=768, help="tokenizer vocabulary (768)")
    p.add_argument("--seed", type=int, default=20250)
    args = p.parse_args(argv)
    summary = generate(args.out, args.dialogues, args.pretrain_lines, args.vocab_size, args.seed)
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
