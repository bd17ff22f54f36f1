"""Reference sentence embeddings for multiturn_qa's dense retriever, from sentence-transformers itself.

Writes tests/fixtures/retrieval/minilm_embeddings.json: for each sentence, the word-piece ids sentence-transformers
feeds the model (after its truncation to max_seq_length, 256) and the normalized mean-pooled embedding (384 floats).
The Rust test (plugins/multiturn_qa/tests/dense.rs) requires the same ids and embeddings within 1e-4.

The sentences cover what could go wrong in a reimplementation: accents and curly quotes (the BERT normalizer strips
accents because the model lowercases), CJK characters (split one by one), a text longer than 128 word pieces (the
truncation that tokenizer.json itself declares, which sentence-transformers overrides), and one longer than 256
(truncated), batched together with one-word inputs so padding must not leak into the mean.

Run: ~/.cache/grpo-rs/venv/bin/python tests/oracles/minilm_embeddings.py [MODEL_DIR]
MODEL_DIR defaults to the directory `cargo xtask setup` fills: $GRPO_RS_CACHE/models/all-MiniLM-L6-v2.
"""

import json
import os
import pathlib
import sys

import sentence_transformers
import torch
from sentence_transformers import SentenceTransformer

OUT = pathlib.Path(__file__).resolve().parent.parent / "fixtures" / "retrieval" / "minilm_embeddings.json"


def default_model_dir() -> pathlib.Path:
    cache = os.environ.get("GRPO_RS_CACHE")
    if not cache:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        cache = os.path.join(base, "grpo-rs")
    return pathlib.Path(cache) / "models" / "all-MiniLM-L6-v2"


MEDIUM = (
    "At approximately 55 hours 55 minutes, the crew heard a loud bang and the main bus B undervoltage alarm came on. "
    "The pressure in oxygen tank 2 dropped to zero, and the pressure in tank 1 began to fall slowly. The crew was "
    "asked to power down the fuel cells one at a time, and the lunar module was activated as a lifeboat for the "
    "return to Earth. Water, electrical power and carbon dioxide removal then limited what could be done, so the "
    "flight plan was rewritten around the consumables that remained in the descent stage. Later analysis traced "
    "the failure to damaged Teflon insulation on the fan motor wires inside the tank, which had been exposed when "
    "the heater thermostatic switches welded shut during a detanking procedure before launch."
)
LONG = " ".join(
    f"Step {i}: the flight controllers checked tank pressure, quantity and heater currents, then logged the readings."
    for i in range(1, 31)
)

SENTENCES = [
    "The oxygen tank failed at about 56 hours into the mission.",
    "Houston, we've had a problem here.",
    "What did the potable water quantity reading decrease to at 23 hours?",
    "Café naïve résumé — accents, an em dash and “curly quotes”.",
    "a",
    "数据 2024年 temperature −40 °C, 3.5×10⁶ km",
    MEDIUM,
    LONG,
]


def main() -> None:
    model_dir = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default_model_dir()
    if not (model_dir / "model.safetensors").exists():
        sys.exit(f"no model in {model_dir}; run `cargo xtask setup` first")
    torch.manual_seed(0)
    model = SentenceTransformer(str(model_dir), device="cpu")
    model.eval()
    max_len = model.max_seq_length
    assert max_len == 256, max_len
    tokenizer = model.tokenizer
    ids = tokenizer(SENTENCES, truncation=True, max_length=max_len)["input_ids"]
    with torch.no_grad():
        emb = model.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True, normalize_embeddings=False)
    lengths = [len(i) for i in ids]
    assert lengths[-1] == max_len and 128 < lengths[-2] < max_len, lengths
    cases = [
        {"text": s, "input_ids": i, "embedding": [round(float(x), 8) for x in e]}
        for s, i, e in zip(SENTENCES, ids, emb)
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with open(OUT, "w") as f:
        json.dump(
            {
                "model": "sentence-transformers/all-MiniLM-L6-v2",
                "sentence_transformers": sentence_transformers.__version__,
                "max_seq_length": max_len,
                "cases": cases,
            },
            f,
            ensure_ascii=False,
        )
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} sentences, word pieces {lengths}")


if __name__ == "__main__":
    main()
