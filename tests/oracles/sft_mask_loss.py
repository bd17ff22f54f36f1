"""Oracle for supervised fine-tuning (host/src/sft): the token stream and assistant mask of chat conversations, and
the mean token cross-entropy, next-token accuracy and entropy of the predicted distribution over the assistant
tokens, on the tiny Llama model.

Independent of the Rust code: the stream is cut from transformers' `apply_chat_template` renderings of growing
prefixes of the conversation (the host uses a sentinel in the last assistant turn instead), each assistant turn is
its content tokenized alone plus the eos token, and the loss is a plain transformers forward with
`torch.nn.functional.cross_entropy` in float64 on the assistant positions.

Run from the repository root (rewrites tests/fixtures/sft/tiny_llama.json):
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/sft_mask_loss.py
"""

import json
import os

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MODEL = os.path.join(ROOT, "tests", "fixtures", "model", "tiny", "llama")
OUT = os.path.join(ROOT, "tests", "fixtures", "sft", "tiny_llama.json")

CONVERSATIONS = [
    # One turn with a system prompt.
    [
        {"role": "system", "content": "Reply with the number only."},
        {"role": "user", "content": "What is 2 + 3?"},
        {"role": "assistant", "content": "5"},
    ],
    # Tool calling: the tool's reply and the next user turn are never trained on; a trailing user turn is dropped.
    [
        {"role": "user", "content": "Use the calculator to solve: 6 * 7"},
        {"role": "assistant", "content": "<tool:calc>6 * 7</tool>"},
        {"role": "tool", "content": "42", "name": "calc"},
        {"role": "user", "content": "Now answer."},
        {"role": "assistant", "content": "<answer>42</answer>"},
        {"role": "user", "content": "Thanks!"},
    ],
    # Two assistant turns in a row, and no system prompt (the template adds its own).
    [
        {"role": "user", "content": "Count to two."},
        {"role": "assistant", "content": "one"},
        {"role": "assistant", "content": "two"},
    ],
]


def render(tok, messages, generation_prompt):
    return tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def stream(tok, messages):
    eos_id = tok.eos_token_id
    eos = tok.convert_ids_to_tokens(eos_id)
    last = max(i for i, m in enumerate(messages) if m["role"] == "assistant")
    messages = messages[: last + 1]
    first = next(i for i, m in enumerate(messages) if m["role"] == "assistant")
    ids = encode(tok, render(tok, messages[:first], True))
    mask = [False] * len(ids)
    i = first
    while True:
        turn = encode(tok, messages[i]["content"]) + [eos_id]
        ids += turn
        mask += [True] * len(turn)
        if i == last:
            break
        nxt = next(j for j in range(i + 1, len(messages)) if messages[j]["role"] == "assistant")
        # What the template writes between the end of this assistant text and the start of the next turn's text.
        before = render(tok, messages[: i + 1], False)
        after = render(tok, messages[:nxt], True)
        assert after.startswith(before[: -len(eos + "\n")] if before.endswith(eos + "\n") else before)
        closing_at = len(before) - len(eos + "\n") if before.endswith(eos + "\n") else len(before)
        glue = after[closing_at:]
        assert glue.startswith(eos)
        glue = glue[len(eos):]  # the eos is the model's own action, already in the stream
        g = encode(tok, glue)
        ids += g
        mask += [False] * len(g)
        i = nxt
    return ids, mask


def main():
    tok = AutoTokenizer.from_pretrained(MODEL)
    model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.float32).double().eval()
    cases = []
    all_nll, all_correct, all_entropy = [], [], []
    for messages in CONVERSATIONS:
        ids, mask = stream(tok, messages)
        with torch.no_grad():
            logits = model(torch.tensor([ids])).logits[0]
        pred = torch.tensor([m for m in mask[1:]])
        targets = torch.tensor(ids[1:])[pred]
        lg = logits[:-1][pred]
        nll = torch.nn.functional.cross_entropy(lg, targets, reduction="none")
        correct = (lg.argmax(-1) == targets).tolist()
        log_p = torch.log_softmax(lg, -1)
        entropy = -(log_p.exp() * log_p).sum(-1)
        all_entropy += entropy.tolist()
        all_nll += nll.tolist()
        all_correct += correct
        cases.append(
            {
                "messages": messages,
                "tokens": ids,
                "assistant": mask,
                "assistant_text": tok.decode([t for t, m in zip(ids, mask) if m]),
                "loss": nll.mean().item(),
                "accuracy": sum(correct) / len(correct),
                "entropy": entropy.mean().item(),
                "assistant_tokens": len(correct),
            }
        )
    batch = {
        "loss": sum(all_nll) / len(all_nll),
        "accuracy": sum(all_correct) / len(all_correct),
        "entropy": sum(all_entropy) / len(all_entropy),
        "assistant_tokens": len(all_nll),
    }
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    with open(OUT, "w") as f:
        json.dump({"model": "tests/fixtures/model/tiny/llama", "cases": cases, "batch": batch}, f, indent=1)
        f.write("\n")
    print(f"wrote {OUT}: {len(cases)} conversations, batch loss {batch['loss']:.6f}")


if __name__ == "__main__":
    main()
