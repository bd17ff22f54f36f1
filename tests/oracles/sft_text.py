"""Oracle for supervised fine-tuning on TRL's standard (plain-text) dataset rows: the token ids and loss mask
host/src/sft/render.rs (`render_text`) must build for language-modeling rows (`{"text": ...}`) and string
prompt-completion rows, with three tokenizers: the byte-level fixture tokenizer (tests/fixtures/model/tiny/llama),
the same with a post-processor that adds a BOS token (written here to tests/fixtures/sft/bos_tokenizer/), and the
default model's real BPE tokenizer (~/.cache/grpo-rs/models/SmolLM2-135M-Instruct, from `cargo xtask setup`), whose
merges make a prompt ending in a space tokenize differently alone and joined with its completion.

The rule is the one TRL's `SFTTrainer` documents and applies to non-conversational rows:
- the tokenizer's `eos_token` is appended to the text (or the completion) unless it already ends with it;
- the text is tokenized with the tokenizer's special tokens (`tokenizer(text)`);
- language modeling trains on every token (but the first, which nothing predicts);
- prompt-completion tokenizes the prompt alone and `prompt + completion` (with the eos), and trains on the latter's
  tokens after as many as the prompt alone has, even where the two disagree at the seam.

Here it is computed with transformers' own tokenizers, independently of the Rust code.

Run from the repository root (rewrites tests/fixtures/sft/text.json):
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/sft_text.py
"""

import json
import os

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
OUT = os.path.join(ROOT, "tests", "fixtures", "sft", "text.json")
BYTE_LEVEL = os.path.join(ROOT, "tests", "fixtures", "model", "chat", "llama3.1")
BOS = os.path.join(ROOT, "tests", "fixtures", "sft", "bos_tokenizer")
TOKENIZERS = {
    "byte-level": os.path.join(ROOT, "tests", "fixtures", "model", "tiny", "llama"),
    "bos": BOS,
    "default": os.path.join(os.path.expanduser("~"), ".cache", "grpo-rs", "models", "SmolLM2-135M-Instruct"),
}

ROWS = [
    {"text": "Paris is the capital of France."},
    {"text": "Two lines,\nwith a trailing newline.\n"},
    {"prompt": "Question: what is 6 * 7?\nAnswer:", "completion": " 42"},
    # The prompt ends in a space that the completion's first word takes when they are tokenized together.
    {"prompt": "The sky is ", "completion": "blue."},
    {"prompt": "", "completion": "An empty prompt trains on everything."},
]


def with_eos(text, eos):
    return text if text.endswith(eos) else text + eos


def tokenize(tok, row):
    """The ids, which of them the loss covers, and whether the prompt's ids start the whole's."""
    eos = tok.eos_token
    if "text" in row:
        ids = tok(with_eos(row["text"], eos))["input_ids"]
        mask, seamless = [True] * len(ids), True
    else:
        prompt_ids = tok(row["prompt"])["input_ids"]
        ids = tok(row["prompt"] + with_eos(row["completion"], eos))["input_ids"]
        mask = [i >= len(prompt_ids) for i in range(len(ids))]
        seamless = ids[: len(prompt_ids)] == prompt_ids
    # The labels are the ids shifted by one: nothing predicts the first, so no loss is taken on it.
    mask[0] = False
    return ids, mask, seamless


def write_bos_tokenizer():
    """Llama 3.1's special tokens on the byte-level fixture, with a post-processor adding `<|begin_of_text|>` as
    Llama 3's tokenizer does."""
    with open(os.path.join(BYTE_LEVEL, "tokenizer.json")) as f:
        tokenizer = json.load(f)
    bos = next(t for t in tokenizer["added_tokens"] if t["content"] == "<|begin_of_text|>")
    tokenizer["post_processor"] = {
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": bos["content"], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"SpecialToken": {"id": bos["content"], "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                 {"Sequence": {"id": "B", "type_id": 1}}],
        "special_tokens": {bos["content"]: {"id": bos["content"], "ids": [bos["id"]], "tokens": [bos["content"]]}},
    }
    config = {"bos_token": bos["content"], "eos_token": "<|eot_id|>", "tokenizer_class": "PreTrainedTokenizerFast"}
    os.makedirs(BOS, exist_ok=True)
    for name, value in [("tokenizer.json", tokenizer), ("tokenizer_config.json", config)]:
        with open(os.path.join(BOS, name), "w") as f:
            json.dump(value, f, indent=1)
            f.write("\n")


def main():
    write_bos_tokenizer()
    cases = []
    for family, path in TOKENIZERS.items():
        tok = AutoTokenizer.from_pretrained(path)
        rows = ROWS + [{"text": "Already closed." + tok.eos_token}]
        for row in rows:
            ids, mask, seamless = tokenize(tok, row)
            trained = tok.decode([t for t, m in zip(ids, mask) if m])
            cases.append(
                {"family": family, "row": row, "tokens": ids, "trained": mask, "seamless": seamless, "text": trained}
            )
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"cases": cases}, f, indent=1)
        f.write("\n")
    for c in cases:
        print(c["family"], len(c["tokens"]), c["seamless"], repr(c["text"]))


if __name__ == "__main__":
    main()
