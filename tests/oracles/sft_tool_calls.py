"""Oracle for supervised fine-tuning on conversations with structured tool calls (TRL's `tool_calls` on assistant
messages and a `tools` column): the token stream and assistant mask host/src/sft/render.rs must build, for the
Qwen2.5 and Llama-3.1 chat templates (the byte-level tokenizers in tests/fixtures/model/chat/).

Independent of the Rust code, which writes each call as text through a placeholder question and then renders
the text: here the whole conversation, calls left structured, is rendered once with transformers'
`apply_chat_template`, and each assistant turn is located in it by rendering growing prefixes (the turn runs from
the end of the prefix rendered with the generation prompt up to and including the end-of-turn token). For these two
templates a call written as text renders exactly as the structured call does, so the two must agree token for
token.

Run from the repository root (rewrites tests/fixtures/sft/tool_calls.json):
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/sft_tool_calls.py
"""

import json
import os

from transformers import AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CHAT = os.path.join(ROOT, "tests", "fixtures", "model", "chat")
OUT = os.path.join(ROOT, "tests", "fixtures", "sft", "tool_calls.json")

CALC = {
    "type": "function",
    "function": {
        "name": "calc",
        "description": "Evaluate an arithmetic expression.",
        "parameters": {
            "type": "object",
            "properties": {"expression": {"type": "string"}},
            "required": ["expression"],
        },
    },
}
WEATHER = {
    "type": "function",
    "function": {
        "name": "weather",
        "description": "Today's weather in a city.",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}

CASES = [
    # Two calls after some text (OpenAI's shape, arguments as an object), the tools' replies, then the answer.
    {
        "family": "qwen2.5",
        "tools": [CALC, WEATHER],
        "messages": [
            {"role": "system", "content": "Use the tools."},
            {"role": "user", "content": "What is 6 * 7, and is it sunny in Oslo?"},
            {
                "role": "assistant",
                "content": "Let me check both.",
                "tool_calls": [
                    {"type": "function", "function": {"name": "calc", "arguments": {"expression": "6 * 7"}}},
                    {"type": "function", "function": {"name": "weather", "arguments": {"city": "Oslo"}}},
                ],
            },
            {"role": "tool", "content": "42", "name": "calc"},
            {"role": "tool", "content": "rain", "name": "weather"},
            {"role": "assistant", "content": "42, and no: it rains."},
        ],
    },
    # A call with no content and its arguments as a JSON string (as Arrow datasets store them), the flat shape.
    {
        "family": "qwen2.5",
        "tools": [CALC],
        "messages": [
            {"role": "user", "content": "2 + 2?"},
            {"role": "assistant", "content": None, "tool_calls": [{"name": "calc", "arguments": '{"expression": "2 + 2"}'}]},
            {"role": "tool", "content": "4"},
            {"role": "assistant", "content": "<answer>4</answer>"},
            {"role": "user", "content": "Thanks."},
        ],
    },
    # Llama 3.1: the call is the whole turn, as a JSON object with `parameters`; the tools go in the first user turn.
    {
        "family": "llama3.1",
        "tools": [CALC],
        "messages": [
            {"role": "user", "content": "What is 6 * 7?"},
            {"role": "assistant", "tool_calls": [{"type": "function", "function": {"name": "calc", "arguments": {"expression": "6 * 7"}}}]},
            {"role": "tool", "content": "42"},
            {"role": "assistant", "content": "42"},
        ],
    },
]


def render(tok, messages, tools, generation_prompt):
    return tok.apply_chat_template(messages, tools=tools, tokenize=False, add_generation_prompt=generation_prompt)


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def stream(tok, messages, tools):
    eos = tok.eos_token
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]
    full = render(tok, messages, tools, False)
    segments, at = [], 0
    for i, m in enumerate(messages):
        if m["role"] != "assistant":
            continue
        before = render(tok, messages[:i], tools, True)
        upto = render(tok, messages[: i + 1], tools, False)
        assert full.startswith(before) and full.startswith(upto)
        turn = upto[len(before):]
        cut = turn.rindex(eos) + len(eos)
        assert turn[cut:] in ("", "\n"), turn[cut:]
        # The template's text up to the turn (the eos that closed the last turn is the model's own, already in).
        segments.append((full[at: len(before)], False))
        segments.append((turn[:cut], True))
        at = len(before) + cut
    ids, mask = [], []
    for text, assistant in segments:
        piece = encode(tok, text)
        ids += piece
        mask += [assistant] * len(piece)
    return ids, mask


def main():
    cases = []
    for case in CASES:
        tok = AutoTokenizer.from_pretrained(os.path.join(CHAT, case["family"]))
        ids, mask = stream(tok, case["messages"], case["tools"])
        cases.append(
            {
                **case,
                "tokens": ids,
                "assistant": mask,
                "assistant_text": tok.decode([t for t, m in zip(ids, mask) if m]),
            }
        )
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"cases": cases}, f, indent=1)
        f.write("\n")
    for c in cases:
        print(c["family"], len(c["tokens"]), repr(c["assistant_text"]))


if __name__ == "__main__":
    main()
