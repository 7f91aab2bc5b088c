"""Write an SFT file whose conversations spread in length like upstream's sft_mini_512.jsonl.

    python benchmarks/make_sft.py --out /tmp/sft_spread.jsonl              # 4000 conversations
    python benchmarks/make_sft.py --out /tmp/sft_spread.jsonl --median 160 --sigma 0.7 --samples 8000

The packing benchmark (benchmarks/packing.py) needs SFT data whose lengths are spread the way
real SFT data is, not the demo's short dialogues. Upstream's sft_mini_512.jsonl is conversations
filtered to under 512 characters and trained at max_length 512: most of them fill a fraction of
the row, a few fill it. That file is not here (1.2 GB), so this draws the *shape* instead
(an assumption, stated so it can be checked against the real file): each conversation's length
in tokens is log-normal with median ``--median`` (160) and log-sd ``--sigma`` (0.7), clipped to
[24, ``--max-tokens`` (640)], so about 3% exceed 512 and are truncated; 70% have one turn, 20%
two, 10% three; the user writes 30% of each turn, the assistant (the supervised part) 70%.

Texts are words drawn from a fixed list, sized with the tokenizer's measured tokens per word (the
embedded demo tokenizer by default, ``--tokenizer DIR`` for another). After writing, the file is
read back through :class:`minimind.data.SFTDataset` and the real rendered lengths are printed
(mean, percentiles, share over 512): those, not the targets, are what the benchmark reports.
Deterministic: the same arguments write the same bytes.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import statistics
from pathlib import Path
from typing import Dict, Optional, Sequence

from common import positive_int

WORDS = ("the a of to and in is it that for on with as was at by this be from or have an they which one "
         "you were her all she there would their we him been has when who will more no if out so said what "
         "up its about into than them can only other new some could time these two may then do first any "
         "my now such like our over man me even most made after also did many before must through back "
         "years where much your way well down should because each just those people how too little state "
         "good very make world still own see men work long get here between both life being under never day "
         "same another know while last might us great old year off come since against go came right used "
         "take three river garden window market winter morning number question answer reason example").split()
TURNS = ((1, 0.7), (2, 0.2), (3, 0.1))


def tokens_per_word(tokenizer, rng: random.Random, n: int = 400) -> float:
    """Mean tokens of one word in running text (with its space), measured on ``n`` words."""
    text = " ".join(rng.choice(WORDS) for _ in range(n))
    return len(tokenizer.encode(text)) / n


def sentence(rng: random.Random, n_words: int) -> str:
    words = [rng.choice(WORDS) for _ in range(max(1, n_words))]
    words[0] = words[0].capitalize()
    return " ".join(words) + "."


def conversation(rng: random.Random, n_tokens: int, tpw: float, overhead: int) -> Dict:
    turns = rng.choices([t for t, _ in TURNS], weights=[w for _, w in TURNS])[0]
    budget = max(8, n_tokens - overhead * turns) / turns / tpw  # words per turn
    msgs = []
    for _ in range(turns):
        msgs.append({"role": "user", "content": sentence(rng, round(0.3 * budget))})
        msgs.append({"role": "assistant", "content": sentence(rng, round(0.7 * budget))})
    return {"conversations": msgs}


def generate(out: Path, samples: int, seed: int, median: float, sigma: float, max_tokens: int,
             tokenizer: Optional[str]) -> None:
    from minimind.data.tokenizer import load_tokenizer

    rng = random.Random(seed)
    tok = load_tokenizer(tokenizer)
    tpw = tokens_per_word(tok, random.Random(seed + 1))
    overhead = 8  # the chat template's tokens around one user + assistant turn (about)
    with open(out, "w") as f:
        for _ in range(samples):
            n = min(max_tokens, max(24, round(math.exp(rng.gauss(math.log(median), sigma)))))
            f.write(json.dumps(conversation(rng, n, tpw, overhead)) + "\n")


def measure(path: Path, tokenizer: Optional[str], max_length: int) -> Dict[str, float]:
    """Rendered lengths (tokens, before truncation to max_length) and supervised shares."""
    from minimind.data import SFTDataset

    ds = SFTDataset(str(path), tokenizer=tokenizer, max_length=4096)
    lengths, supervised = [], []
    for start in range(0, len(ds), 256):
        ids, labels = ds._batch(list(range(start, min(start + 256, len(ds)))))
        lengths += (ids != ds.tokenizer.pad_token_id).sum(1).tolist()
        supervised += (labels != -100).sum(1).tolist()
    q = statistics.quantiles(lengths, n=10)
    return {"samples": len(lengths), "mean": statistics.fmean(lengths), "p10": q[0], "p50": q[4], "p90": q[8],
            "max": max(lengths), "over_max_length": sum(n > max_length for n in lengths) / len(lengths),
            "supervised_share": sum(supervised) / sum(lengths),
            "fill_at_max_length": sum(min(n, max_length) for n in lengths) / (len(lengths) * max_length)}


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python benchmarks/make_sft.py", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, type=Path)
    p.add_argument("--samples", type=positive_int, default=4000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--median", type=float, default=160.0, help="median conversation length, tokens")
    p.add_argument("--sigma", type=float, default=0.7, help="log-sd of the length")
    p.add_argument("--max-tokens", type=positive_int, default=640)
    p.add_argument("--max-length", type=positive_int, default=512, help="for the report: share truncated")
    p.add_argument("--tokenizer", default=None, help="tokenizer dir (default: the embedded demo tokenizer)")
    return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    args = parse_args(argv)
    generate(args.out, args.samples, args.seed, args.median, args.sigma, args.max_tokens, args.tokenizer)
    stats = measure(args.out, args.tokenizer, args.max_length)
    print(f"{args.out}: {stats['samples']} conversations; rendered tokens: mean {stats['mean']:.0f}, "
          f"p10 {stats['p10']:.0f}, p50 {stats['p50']:.0f}, p90 {stats['p90']:.0f}, max {stats['max']}; "
          f"{stats['over_max_length']:.1%} over {args.max_length}; supervised share "
          f"{stats['supervised_share']:.1%}; a row of {args.max_length} is {stats['fill_at_max_length']:.1%} "
          "full on average")
    return stats


if __name__ == "__main__":
    main()
