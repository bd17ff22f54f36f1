"""The Python reference for `cargo xtask bench-step`: one GRPO step the way re-grpo runs it, timed by phase.

re-grpo's loop (experiment_base): for each prompt of the batch, generate its group in one `generate` call
(`input_ids.repeat(G, 1)`); then a forward of the policy for the old log-probs and a separate forward of the
reference model; then micro-batches of forward, GRPO loss, backward, gradient clipping and an AdamW step. Here it
runs with full fine-tuning on the CPU or a GPU (`--device`), the same workload and thread count as our measurement,
with end-of-sequence suppressed so that both sides generate exactly max_new_tokens per rollout. `--precision bf16`
is mixed precision as accelerate's `--mixed_precision bf16` runs it: f32 weights, gradients and AdamW state, every
forward (generation, log-probs, training) under `torch.autocast(device_type, dtype=torch.bfloat16)`.

On a GPU each phase's clock is read after a device synchronisation (CUDA calls return before the work is done), and
the peak of allocated GPU memory is reported for the step and for each phase, and the peak the caching allocator
reserved for the step (peak statistics reset at the start of each phase); on the CPU those keys are null.

Usage: python bench_grpo_step.py MODEL_DIR --steps 3 --prompts 4 --group 4 --max-new 64 --threads 2
       [--precision f32|bf16] [--system TEXT] [--device cpu|cuda] [--gradient-checkpointing]
Prints one JSON object per measured step: {"rollout_s", "logprob_s", "train_s", "total_s", "tokens", "prompt_tokens",
"torch", "transformers", "precision", "device", "gpu", "peak_gpu_memory_gb" (allocated), "peak_gpu_reserved_gb",
"rollout_peak_gpu_gb", "logprob_peak_gpu_gb", "train_peak_gpu_gb"} (the last three allocated). `cargo xtask bench-step`
runs it beside `grpo-host train` on the same workload. Also each phase's peak resident set of the process in GiB
("rollout_peak_rss_gib", "logprob_peak_rss_gib", "train_peak_rss_gib"; Linux's VmHWM, reset at each phase's start).
`--gradient-checkpointing` turns on the policy's gradient checkpointing as re-grpo's `load_model` does
(non-reentrant); it acts in the training forwards only.
"""

import argparse
import contextlib
import json
import random
import time

import torch
import torch.nn.functional as F
import transformers
from transformers import AutoModelForCausalLM, AutoTokenizer


def sequence_log_probs(model, seq, attn):
    pos = attn.long().cumsum(-1) - 1
    pos.masked_fill_(attn == 0, 1)
    logits = model(input_ids=seq, attention_mask=attn, position_ids=pos, use_cache=False).logits
    logp = F.log_softmax(logits[:, :-1].float(), dim=-1)
    return logp.gather(-1, seq[:, 1:].unsqueeze(-1)).squeeze(-1)


def grpo_loss(lp, old, ref, adv, mask, clip=0.2, beta=0.01):
    ratio = (lp - old).exp()
    surrogate = -torch.min(ratio * adv, ratio.clamp(1 - clip, 1 + clip) * adv)
    diff = (ref - lp) * mask
    kl = diff.exp() - diff - 1
    per_token = surrogate + beta * kl
    return ((per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)).mean()


def question(rng):
    a, b = rng.randint(0, 9), rng.randint(0, 9)
    return f"What is {a} + {b}?"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--train-batch", type=int, default=4)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--system", default=None, help="a system message before each question")
    ap.add_argument("--precision", choices=["f32", "bf16"], default="f32")
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--gradient-checkpointing", action="store_true")
    args = ap.parse_args()
    device = torch.device(args.device)
    cuda = device.type == "cuda"

    def compute():
        if args.precision == "bf16":
            return torch.autocast(device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def clock():
        # CUDA calls return once the work is queued; the phase is over only when the device has done it.
        if cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def reset_peak():
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        # The process's peak resident set too, as grpo-host's `system/*_peak_rss_gb` measure it: Linux lowers VmHWM
        # to the current resident set when 5 is written to clear_refs.
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")
        except OSError:
            pass

    def peak_rss_gib():
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) * 1024 / 2**30
        except OSError:
            pass
        return None

    def peak_gb():
        # Peak allocated and peak reserved (what the caching allocator held, the figure comparable with our side's
        # `system/gpu_memory_reserved_gb`) since the last reset, in GB.
        if not cuda:
            return None, None
        return torch.cuda.max_memory_allocated() / 1e9, torch.cuda.max_memory_reserved() / 1e9

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rng = random.Random(0)
    tok = AutoTokenizer.from_pretrained(args.model)
    policy = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device)
    reference = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).to(device).eval()
    if args.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    opt = torch.optim.AdamW(policy.parameters(), lr=5e-6, weight_decay=0.01)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id

    for step in range(args.warmup + args.steps):
        reset_peak()  # the rollout phase's, and so the step's, start
        t0 = clock()
        policy.eval()
        sequences, masks, rewards, prompt_tokens = [], [], [], 0
        with torch.no_grad():
            for _ in range(args.prompts):
                messages = [{"role": "user", "content": question(rng)}]
                if args.system is not None:
                    messages.insert(0, {"role": "system", "content": args.system})
                text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
                ids = tok(text, return_tensors="pt").input_ids.to(device)
                prompt_tokens += ids.shape[1] * args.group
                with compute():
                    out = policy.generate(
                        input_ids=ids.repeat(args.group, 1),
                        attention_mask=torch.ones_like(ids).repeat(args.group, 1),
                        do_sample=True, temperature=0.7, top_k=50, top_p=1.0,
                        max_new_tokens=args.max_new, min_new_tokens=args.max_new, pad_token_id=pad,
                    )
                for row in out:
                    sequences.append(row)
                    m = torch.zeros(len(row) - 1, dtype=torch.bool, device=device)
                    m[ids.shape[1] - 1:] = True
                    masks.append(m)
                    rewards.append(rng.random())
        t1 = clock()
        rollout_peak, rollout_reserved = peak_gb()
        rollout_rss = peak_rss_gib()
        reset_peak()

        seq = torch.stack(sequences)
        attn = torch.ones_like(seq)
        mask = torch.stack(masks).float()
        r = torch.tensor(rewards, device=device).view(args.prompts, args.group)
        adv = ((r - r.mean(-1, keepdim=True)) / (r.std(-1, keepdim=True) + 1e-8)).view(-1, 1)
        with torch.no_grad(), compute():
            old = sequence_log_probs(policy, seq, attn)
            ref = sequence_log_probs(reference, seq, attn)
        t2 = clock()
        logprob_peak, logprob_reserved = peak_gb()
        logprob_rss = peak_rss_gib()
        reset_peak()

        policy.train()
        # Drawn on the CPU (the same permutation on either device), then moved to index the device tensors.
        order = torch.randperm(seq.shape[0]).to(device)
        for i in range(0, seq.shape[0], args.train_batch):
            idx = order[i:i + args.train_batch]
            opt.zero_grad()
            with compute():
                lp = sequence_log_probs(policy, seq[idx], attn[idx])
            loss = grpo_loss(lp, old[idx], ref[idx], adv[idx], mask[idx])
            loss.backward()
            torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
            opt.step()
        t3 = clock()
        train_peak, train_reserved = peak_gb()
        train_rss = peak_rss_gib()
        # The phases cover the step and each peak is counted from its phase's start (a reset sets the peak to what
        # is allocated, or reserved, then), so the step's peak is the largest of the three.
        step_peak = max(rollout_peak, logprob_peak, train_peak) if cuda else None
        step_reserved = max(rollout_reserved, logprob_reserved, train_reserved) if cuda else None
        if step >= args.warmup:
            print(json.dumps({
                "rollout_s": t1 - t0, "logprob_s": t2 - t1, "train_s": t3 - t2, "total_s": t3 - t0,
                "tokens": args.prompts * args.group * args.max_new, "prompt_tokens": prompt_tokens,
                "torch": torch.__version__, "transformers": transformers.__version__, "precision": args.precision,
                "device": args.device, "gpu": torch.cuda.get_device_name() if cuda else None,
                "peak_gpu_memory_gb": step_peak, "peak_gpu_reserved_gb": step_reserved,
                "rollout_peak_gpu_gb": rollout_peak, "logprob_peak_gpu_gb": logprob_peak,
                "train_peak_gpu_gb": train_peak, "gradient_checkpointing": args.gradient_checkpointing,
                "rollout_peak_rss_gib": rollout_rss, "logprob_peak_rss_gib": logprob_rss,
                "train_peak_rss_gib": train_rss,
            }), flush=True)


if __name__ == "__main__":
    main()
