"""Writes tests/fixtures/datasets/formats/: small data files in the formats `datasets.load_dataset` reads besides
JSON Lines and Parquet, and `expected.json`, the rows `datasets` itself gives for each (the oracle that
host/tests/datasets.rs compares the host's reading with). Committed, so tests need no Python.

    ~/.cache/grpo-rs/venv/bin/pip install datasets pandas   # once
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/dataset_formats.py

- columns.json: one pretty-printed object of lists (`{"prompt": [...], "answer": [...]}`), which `datasets` reads as
  one row holding two lists, not as a table of columns.
- frame.json: what pandas' `DataFrame.to_json()` writes by default (columns keyed by row label): one row as well.
- objects.json: pretty-printed objects one after another, one row each (keys missing from one are null there).
- train.csv: a header, quoted cells holding commas, quotes and a newline, integer, float, boolean and string columns,
  empty cells, and an identifier with leading zeros beside a word (so a string column).
- train.tsv: tab-separated, which `datasets` reads with its CSV builder and `sep="\t"`.
- train.jsonl.gz: gzipped JSON Lines.
- corpus.txt: plain text, a row per line (an empty line and a Windows line end among them).
- twice/: the same rows uploaded as `train.csv` and as the hub's Parquet conversion; a folder read as one split.
- saved/: a `DatasetDict` written by `save_to_disk` (splits `train` and `test`, Arrow IPC streams), with a list of
  chat messages, a struct and a null among its columns; its rows as `load_from_disk` gives them.
"""

import gzip
import json
from pathlib import Path

import datasets
import pandas as pd

OUT = Path(__file__).resolve().parent.parent / "fixtures" / "datasets" / "formats"

ROWS = [
    {"prompt": "What is 12 + 30?", "answer": 42},
    {"prompt": "Add 7 and 8, then double it.", "answer": 30},
    {"prompt": "How many legs do 3 spiders have?", "answer": 24},
]

CSV = (
    "question,answer,weight,verified,id\n"
    '"What is 1,5 + 2?\nGive a number.",3.5,1,True,007\n'
    '"She said ""nine"".",9,,false,x12\n'
    "Plain,4,2,TRUE,\n"
)


def rows_of(path: Path, builder: str, **kwargs):
    """The rows `datasets` reads from one file, as plain JSON values (NaN as null)."""
    ds = datasets.load_dataset(builder, data_files=str(path), split="train", **kwargs)
    return json.loads(json.dumps(ds.to_list(), allow_nan=True).replace("NaN", "null"))


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    columns = {key: [r[key] for r in ROWS] for key in ROWS[0]}
    (OUT / "columns.json").write_text(json.dumps(columns, indent=2) + "\n")
    frame = pd.DataFrame({"prompt": [r["prompt"] for r in ROWS], "answer": [42.0, None, 24.0]})
    (OUT / "frame.json").write_text(frame.to_json())
    (OUT / "objects.json").write_text("".join(json.dumps(r, indent=2) + "\n" for r in ROWS[:2] + [{"prompt": "?"}]))
    (OUT / "train.csv").write_text(CSV)
    (OUT / "train.tsv").write_text("question\tanswer\nsix times seven, please\t42\nten less three\t7\n")
    with gzip.open(OUT / "train.jsonl.gz", "wt") as f:
        f.writelines(json.dumps(r) + "\n" for r in ROWS)
    (OUT / "corpus.txt").write_bytes(b"The sky is blue.\n\nWater boils at 100 C.\r\nLast line without an end")
    twice = OUT / "twice"
    twice.mkdir(exist_ok=True)
    (twice / "train.csv").write_text("prompt,answer\n" + "".join(f"\"{r['prompt']}\",{r['answer']}\n" for r in ROWS))
    pd.DataFrame(ROWS).to_parquet(twice / "train-00000-of-00001.parquet", index=False)

    saved = datasets.DatasetDict({
        "train": datasets.Dataset.from_list([
            {"prompt": [{"role": "user", "content": "What is 12 + 30?"}], "reward_model": {"ground_truth": "42"},
             "level": 1},
            {"prompt": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "7 + 8?"}],
             "reward_model": {"ground_truth": "15"}, "level": None},
        ]),
        "test": datasets.Dataset.from_list([
            {"prompt": [{"role": "user", "content": "3 * 8?"}], "reward_model": {"ground_truth": "24"}, "level": 2},
        ]),
    })
    saved.save_to_disk(str(OUT / "saved"))
    from_disk = datasets.load_from_disk(str(OUT / "saved"))

    expected = {
        "columns.json": rows_of(OUT / "columns.json", "json"),
        "frame.json": rows_of(OUT / "frame.json", "json"),
        "objects.json": rows_of(OUT / "objects.json", "json"),
        "train.csv": rows_of(OUT / "train.csv", "csv"),
        "train.tsv": rows_of(OUT / "train.tsv", "csv", sep="\t"),
        "train.jsonl.gz": rows_of(OUT / "train.jsonl.gz", "json"),
        "corpus.txt": rows_of(OUT / "corpus.txt", "text"),
        "twice": json.loads(json.dumps(datasets.load_dataset(str(twice), split="train").to_list())),
        "saved/train": from_disk["train"].to_list(),
        "saved/test": from_disk["test"].to_list(),
    }
    (OUT / "expected.json").write_text(json.dumps(expected, indent=1) + "\n")
    print(json.dumps(expected, indent=1))


if __name__ == "__main__":
    main()
