"""Writes the dataset fixtures in tests/fixtures/datasets/ (a few kilobytes each; committed, so tests need no Python).

    ~/.cache/grpo-rs/venv/bin/pip install pyarrow   # once
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/dataset_fixtures.py [--gsm8k-rows N]

- hub/datasets--openai--gsm8k/: a Hugging Face hub cache entry laid out as the real GSM8K is (config `main`, splits
  `train` and `test`, one Parquet shard each, snappy-compressed as the hub's), holding grade-school word problems
  made here from templates with known answers (question; answer = worked solution ending in `#### N`).
- math_sample.jsonl: MATH-shaped rows (problem, solution with \\boxed{...}, level, type), written by hand below.
- verl_sample.parquet: verl's RL format (data_source, prompt as a list of chat messages, ability, reward_model as a
  struct with ground_truth, extra_info), to test nested columns.
- gsm8k_like.jsonl: the same train rows as JSON lines (TRL-style), for the JSONL path.
"""

import argparse
import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "datasets"
REVISION = "e53f048856ff4f594e959d75785d2c2d37b678ee"  # any 40-hex name; the cache resolves refs/main to it

NAMES = ["Natalia", "Tom", "Aisha", "Mateo", "Priya", "Lena", "Omar", "Kenji", "Sofia", "Ravi"]
ITEMS = ["apples", "pencils", "stickers", "marbles", "books", "cookies", "stamps", "shells"]


def problem(rng: random.Random):
    """One word problem: (question, worked solution ending in #### N, N)."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    kind = rng.randrange(6)
    if kind == 0:
        a, b, c = rng.randint(5, 60), rng.randint(2, 40), rng.randint(1, 5)
        c = min(c, a + b)
        n = a + b - c
        q = f"{name} has {a} {item}. {name} buys {b} more and gives {c} away. How many {item} does {name} have now?"
        s = f"After buying, {name} has {a}+{b}={a + b} {item}.\nAfter giving {c} away, {a + b}-{c}={n}.\n#### {n}"
    elif kind == 1:
        a, b = rng.randint(2, 12), rng.randint(3, 25)
        n = a * b
        q = f"A box holds {b} {item}. How many {item} are in {a} boxes?"
        s = f"{a} boxes hold {a}*{b}={n} {item}.\n#### {n}"
    elif kind == 2:
        b = rng.randint(2, 9)
        n = rng.randint(3, 30)
        a = b * n
        q = f"{name} shares {a} {item} equally among {b} friends. How many {item} does each friend get?"
        s = f"Each friend gets {a}/{b}={n} {item}.\n#### {n}"
    elif kind == 3:
        price, count = rng.randint(2, 15), rng.randint(2, 9)
        paid = price * count + rng.randint(0, 20)
        n = paid - price * count
        q = (f"{name} buys {count} {item} at ${price} each and pays with ${paid}. "
             f"How many dollars of change does {name} get?")
        s = f"The {item} cost {count}*{price}=${price * count}.\nThe change is {paid}-{price * count}=${n}.\n#### {n}"
    elif kind == 4:
        per_day, days = rng.randint(120, 480), rng.randint(3, 9)
        n = per_day * days
        q = f"A shop sells {per_day} {item} a day. How many {item} does it sell in {days} days?"
        s = f"It sells {per_day}*{days}={n:,} {item}.\n#### {n}"
    else:
        a, b = rng.randint(10, 90), rng.randint(10, 90)
        n = 2 * (a + b)
        q = f"A rectangle is {a} meters long and {b} meters wide. What is its perimeter in meters?"
        s = f"The perimeter is 2*({a}+{b})=2*{a + b}={n} meters.\n#### {n}"
    return q, s, n


def write_parquet(path: Path, rows: list, schema=None):
    path.parent.mkdir(parents=True, exist_ok=True)
    table = pa.Table.from_pylist(rows, schema=schema)
    pq.write_table(table, path, compression="snappy")


MATH_ROWS = [
    ("What is $\\frac{1}{2} + \\frac{1}{3}$?", "We have $\\frac{3}{6}+\\frac{2}{6} = \\boxed{\\frac{5}{6}}$.",
     "Level 1", "Prealgebra"),
    ("Compute $2^{10}$.", "$2^{10} = 1024$, so the answer is $\\boxed{1024}$.", "Level 1", "Algebra"),
    ("Solve $3x - 7 = 11$ for $x$.", "Adding 7 gives $3x = 18$, so $x = \\boxed{6}$.", "Level 2", "Algebra"),
    ("What is $0.25$ as a fraction in lowest terms?", "$0.25 = \\frac{25}{100} = \\boxed{\\dfrac{1}{4}}$.",
     "Level 1", "Prealgebra"),
    ("What is the sum of the interior angles of a triangle, in degrees?",
     "It is always $\\boxed{180^\\circ}$.", "Level 1", "Geometry"),
    ("Evaluate $-\\frac{6}{4}$ in lowest terms.", "$-\\frac{6}{4} = \\boxed{-\\frac{3}{2}}$.", "Level 1", "Prealgebra"),
    ("How many positive divisors does 12 have?", "They are 1, 2, 3, 4, 6, 12: $\\boxed{6}$.", "Level 2",
     "Number Theory"),
    ("Simplify $\\sqrt{50}$.", "$\\sqrt{50} = \\sqrt{25 \\cdot 2} = \\boxed{5\\sqrt{2}}$.", "Level 2", "Algebra"),
    ("What is $15\\%$ of 80?", "$0.15 \\cdot 80 = \\boxed{12}$.", "Level 1", "Prealgebra"),
    ("A rope of 3.5 meters is cut in half. How long is each piece, in meters?",
     "Each piece is $\\boxed{1.75}$ meters.", "Level 1", "Prealgebra"),
    ("What is $1000 \\cdot 12$?", "The product is $\\boxed{12{,}000}$.", "Level 1", "Prealgebra"),
    ("What is the smallest prime greater than 20?", "It is $\\boxed{23}$.", "Level 1", "Number Theory"),
]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gsm8k-rows", type=int, default=300, help="train rows of the GSM8K-shaped fixture")
    ap.add_argument("--gsm8k-test-rows", type=int, default=60)
    args = ap.parse_args()
    rng = random.Random(20261205)
    train = [dict(zip(["question", "answer"], problem(rng)[:2])) for _ in range(args.gsm8k_rows)]
    test = [dict(zip(["question", "answer"], problem(rng)[:2])) for _ in range(args.gsm8k_test_rows)]

    repo = OUT / "hub" / "datasets--openai--gsm8k"
    snap = repo / "snapshots" / REVISION
    write_parquet(snap / "main" / "train-00000-of-00001.parquet", train)
    write_parquet(snap / "main" / "test-00000-of-00001.parquet", test)
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(REVISION)

    with open(OUT / "gsm8k_like.jsonl", "w") as f:
        for row in train[:40]:
            f.write(json.dumps(row) + "\n")

    with open(OUT / "math_sample.jsonl", "w") as f:
        for problem_, solution, level, type_ in MATH_ROWS:
            f.write(json.dumps({"problem": problem_, "solution": solution, "level": level, "type": type_}) + "\n")

    verl = []
    for i in range(5):
        q, s, n = problem(rng)
        verl.append({
            "data_source": "openai/gsm8k",
            "prompt": [{"role": "system", "content": "Think step by step."}, {"role": "user", "content": q}],
            "ability": "math",
            "reward_model": {"style": "rule", "ground_truth": str(n)},
            "extra_info": {"split": "train", "index": i},
        })
    write_parquet(OUT / "verl_sample.parquet", verl)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
