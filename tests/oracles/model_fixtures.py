"""Oracle fixtures for the native model runtime (host/src/model, tokenizer, generate).

Builds, with transformers as the reference implementation:
  * a tiny byte-level tokenizer (256 byte tokens + the chat special tokens, no merges);
  * tiny random Llama, Llama-3 (rope_scaling llama3), Qwen2, Qwen3, Mistral (with and without a sliding window),
    SmolLM3, OLMo 2, OLMo 3, Gemma 2 and 3, windowed Qwen2, Phi-3, Granite, ERNIE 4.5, GLM-4, Arcee, EXAONE 4,
    Hunyuan, Seed-OSS, StarCoder2, StableLM 2, Nemotron, Cohere 2 and mixture-of-experts (Qwen3-MoE, Qwen2-MoE,
    Mixtral, OLMoE, GraniteMoE, gpt-oss) models (f32, a few hundred KB each) with transformers' logits and next-token log-probs on a padded batch
    (and, for the mixtures, bf16 logits and every parameter's gradient), and transformers' greedy continuations;
  * chat-template cases for the SmolLM2, Qwen2.5, Qwen3 and Llama-3.1 templates (the real template texts in
    tests/fixtures/model/templates/), rendered with `apply_chat_template`, with and without tools and the
    generation prompt.

Run from the repository root (rewrites tests/fixtures/model/{tiny,chat}/; name tiny models to rewrite only those):
    ~/.cache/grpo-rs/venv/bin/python tests/oracles/model_fixtures.py [gemma3 qwen2_window ...]
"""

import json
import os
import shutil
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    ArceeConfig,
    Cohere2Config,
    CohereConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    Ernie4_5Config,
    ExaoneConfig,
    Exaone4Config,
    LlamaConfig,
    GemmaConfig,
    Gemma2Config,
    Gemma3TextConfig,
    Glm4Config,
    GlmConfig,
    GPT2Config,
    GPTNeoXConfig,
    GptOssConfig,
    GraniteConfig,
    GraniteMoeConfig,
    HeliumConfig,
    HunYuanDenseV1Config,
    MinistralConfig,
    MistralConfig,
    MixtralConfig,
    NanoChatConfig,
    NemotronConfig,
    OlmoConfig,
    Olmo2Config,
    Olmo3Config,
    OlmoeConfig,
    PhiConfig,
    Phi3Config,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2MoeConfig,
    Qwen3Config,
    Qwen3MoeConfig,
    SeedOssConfig,
    SmolLM3Config,
    StableLmConfig,
    Starcoder2Config,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIX = os.path.join(ROOT, "tests", "fixtures", "model")
TEMPLATES = os.path.join(FIX, "templates")
TINY = os.path.join(FIX, "tiny")


def attention_for(model_type):
    """transformers' attention for a family: eager where SDPA cannot compute it (Gemma 2's capped scores,
    gpt-oss's sinks)."""
    return "eager" if model_type in ("gemma2", "gpt_oss") else "sdpa"


def tiny_models_with(file_name):
    """The tiny models (folders of TINY) that hold `file_name`, sorted."""
    return sorted(d for d in os.listdir(TINY) if os.path.exists(os.path.join(TINY, d, file_name)))

SPECIALS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|begin_of_text|>",
    "<|eot_id|>",
    "<|start_header_id|>",
    "<|end_header_id|>",
    "<|eom_id|>",
    "<|python_tag|>",
]
VOCAB = 272  # 256 bytes + 9 specials, rounded up; the spare rows are never produced by the tokenizer


def tiny_tokenizer(**special):
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {ch: i for i, ch in enumerate(alphabet)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(SPECIALS)
    return PreTrainedTokenizerFast(tokenizer_object=tok, **special)


def save_tokenizer(tok, out, template=None):
    """Save with the chat template inside tokenizer_config.json, as the hub repos of these models ship it."""
    tok.save_pretrained(out)
    jinja = os.path.join(out, "chat_template.jinja")
    if os.path.exists(jinja):
        os.remove(jinja)
    if template is not None:
        path = os.path.join(out, "tokenizer_config.json")
        with open(path) as f:
            cfg = json.load(f)
        cfg["chat_template"] = template
        with open(path, "w") as f:
            json.dump(cfg, f, indent=2, ensure_ascii=False)
    # Check that transformers itself reads the layout back with the template.
    back = AutoTokenizer.from_pretrained(out)
    assert (back.chat_template is not None) == (template is not None)
    return back


# ---------------------------------------------------------------- tiny models

def tiny_shape():
    """The configuration every tiny model shares (reward_model.py's too)."""
    return dict(
        vocab_size=VOCAB,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
        initializer_range=0.1,
        rms_norm_eps=1e-6,
        bos_token_id=None,
        eos_token_id=258,
        pad_token_id=None,
    )


def greedy_continuations(model, prompts, max_new_tokens=12, **generate_kwargs):
    """transformers' greedy continuations, one prompt at a time (no padding), never stopping early; `generate_kwargs`
    go to `generate` (repetition_penalty.py's penalty)."""
    completions = []
    for p in prompts:
        with torch.no_grad():
            out_ids = model.generate(
                torch.tensor([p]),
                attention_mask=torch.ones(1, len(p), dtype=torch.long),
                do_sample=False,
                max_new_tokens=max_new_tokens,
                eos_token_id=None,
                pad_token_id=0,
                **generate_kwargs,
            )
        completions.append(out_ids[0, len(p) :].tolist())
    return completions


def tiny_configs():
    common = tiny_shape()
    return {
        "llama": LlamaConfig(**common, tie_word_embeddings=False),
        "llama3": LlamaConfig(
            **common,
            tie_word_embeddings=True,
            rope_theta=500000.0,
            rope_scaling={
                "rope_type": "llama3",
                "factor": 8.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 256,  # wavelengths 6, 167, 4443, 118000: one per band
            },
        ),
        "qwen2": Qwen2Config(**common, tie_word_embeddings=True, use_sliding_window=False),
        "qwen3": Qwen3Config(**{**common, "head_dim": 16}, tie_word_embeddings=False),
        # Mistral v0.2 and later: Llama's layers, no sliding window; head_dim given apart from hidden / heads, as
        # Mistral-Nemo's is.
        "mistral": MistralConfig(**{**common, "head_dim": 12}, tie_word_embeddings=False, sliding_window=None),
        # SmolLM3: four layers, so that the fourth is a NoPE layer (no rotary embedding).
        "smollm3": SmolLM3Config(**{**common, "num_hidden_layers": 4}, tie_word_embeddings=True),
        "olmo2": Olmo2Config(**common, tie_word_embeddings=False),
        # Mistral 7B v0.1's sliding window, narrower than the 12-token batch and the greedy continuations.
        "mistral_window": MistralConfig(**common, tie_word_embeddings=False, sliding_window=4),
        # Gemma 3: three layers, sliding-window (4 tokens) / full / sliding, each kind with its own rotary table
        # (linear scaling on the full layers, as the 4B and larger models have), a query scale apart from head_dim,
        # GELU-tanh, sandwich norms, per-head q/k norms and the scaled embedding.
        "gemma3": Gemma3TextConfig(
            **{**common, "num_hidden_layers": 3, "head_dim": 16},
            tie_word_embeddings=True,
            query_pre_attn_scalar=20,
            sliding_window=4,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 100000.0},
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
            hidden_activation="gelu_pytorch_tanh",
        ),
        # Qwen2 with `use_sliding_window`: layers from `max_window_layers` on attend within the window.
        "qwen2_window": Qwen2Config(
            **common, tie_word_embeddings=True, use_sliding_window=True, sliding_window=4, max_window_layers=1
        ),
        # Phi-3.5 / Phi-4-mini: fused qkv_proj and gate_up_proj, the rotary embedding on half of each head, and
        # LongRoPE whose pre-training context (32) the greedy continuations stay within; reference_long.safetensors
        # holds logits past it, where the long factors apply.
        "phi3": Phi3Config(
            **common,
            tie_word_embeddings=False,
            original_max_position_embeddings=32,
            rope_parameters={
                "rope_type": "longrope",
                "rope_theta": 10000.0,
                "partial_rotary_factor": 0.5,
                "short_factor": [1.0, 1.7],
                "long_factor": [2.5, 9.0],
                "original_max_position_embeddings": 32,
            },
        ),
        # Ministral: Mistral's layers, each full or sliding as layer_types says.
        "ministral": MinistralConfig(
            **{**common, "head_dim": 8},
            tie_word_embeddings=False,
            sliding_window=4,
            layer_types=["full_attention", "sliding_attention"],
        ),
        # OLMo 3: OLMo 2's layers, sliding (4 tokens) / sliding / sliding / full, YaRN on the full layer only (a
        # ramp across its four frequencies: one kept, one mixed, two divided).
        "olmo3": Olmo3Config(
            **{**common, "num_hidden_layers": 4},
            tie_word_embeddings=False,
            sliding_window=4,
            rope_parameters={
                "full_attention": {
                    "rope_type": "yarn",
                    "factor": 4.0,
                    "original_max_position_embeddings": 64,
                    "rope_theta": 10000.0,
                },
                "sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
            },
        ),
        # Qwen3-MoE: a sparse layer of four experts (two per token, their weights renormalised) and, from
        # `mlp_only_layers`, a dense one.
        "qwen3_moe": Qwen3MoeConfig(
            **{**common, "head_dim": 8},
            tie_word_embeddings=False,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            norm_topk_prob=True,
            mlp_only_layers=[1],
        ),
        # Qwen1.5/Qwen2-MoE: routed experts (weights not renormalised) beside a shared expert behind a sigmoid gate.
        "qwen2_moe": Qwen2MoeConfig(
            **common,
            tie_word_embeddings=False,
            num_experts=4,
            num_experts_per_tok=2,
            moe_intermediate_size=16,
            shared_expert_intermediate_size=24,
            norm_topk_prob=False,
        ),
        # Mixtral: four experts per layer under the `block_sparse_moe` names, two per token.
        "mixtral": MixtralConfig(
            **common, tie_word_embeddings=False, num_local_experts=4, num_experts_per_tok=2, sliding_window=None
        ),
        # OLMoE: OLMo 2's whole-projection q/k norms before each block, eight experts, three per token.
        "olmoe": OlmoeConfig(
            **{**common, "intermediate_size": 16}, tie_word_embeddings=False, num_experts=8, num_experts_per_tok=3
        ),
        # Gemma 2: three layers, sliding (4 tokens) / full / sliding, caps on the attention scores and the logits
        # low enough that the random model's values reach tanh's bend.
        "gemma2": Gemma2Config(
            **{**common, "num_hidden_layers": 3, "head_dim": 16},
            tie_word_embeddings=True,
            query_pre_attn_scalar=20,
            sliding_window=4,
            attn_logit_softcapping=0.5,
            final_logit_softcapping=1.5,
            hidden_activation="gelu_pytorch_tanh",
        ),
        # Granite: Llama's layers with its four multipliers, each away from 1.
        "granite": GraniteConfig(
            **common,
            tie_word_embeddings=False,
            embedding_multiplier=2.0,
            residual_multiplier=0.4,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
        # ERNIE 4.5: Llama's layers with a bias on every projection and the rotary embedding on adjacent pairs of
        # dimensions, computed in f32.
        "ernie4_5": Ernie4_5Config(**{**common, "head_dim": 8}, tie_word_embeddings=True, use_bias=True),
        # GLM-4: a fused gate_up_proj, q/k/v biases, the rotary embedding on adjacent pairs of half of each head;
        # GLM-4-0414 adds norms after attention and after the MLP.
        "glm": GlmConfig(**{**common, "head_dim": 8}, tie_word_embeddings=False),
        "glm4": Glm4Config(**{**common, "head_dim": 8}, tie_word_embeddings=False),
        # GraniteMoE: Granite's multipliers over four experts stacked in two tensors, two per token, the softmax
        # taken over the two chosen scores.
        "granitemoe": GraniteMoeConfig(
            **{**common, "intermediate_size": 16},
            tie_word_embeddings=False,
            num_local_experts=4,
            num_experts_per_tok=2,
            embedding_multiplier=2.0,
            residual_multiplier=0.4,
            attention_multiplier=0.3,
            logits_scaling=2.5,
        ),
        # Arcee (AFM): Llama's layers with an MLP of no gate, down(relu(up(x))^2).
        "arcee": ArceeConfig(**common, tie_word_embeddings=False),
        # EXAONE 4.0: OLMo 2's output norms, Qwen3's per-head q/k norms; layers 0-2 within a 4-token window with RoPE
        # (Llama 3's rescaling), layer 3 global without it (NoPE).
        "exaone4": Exaone4Config(
            **{**common, "num_hidden_layers": 4},
            tie_word_embeddings=False,
            sliding_window=4,
            sliding_window_pattern=4,
            rope_parameters={
                "rope_type": "llama3",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "low_freq_factor": 1.0,
                "high_freq_factor": 4.0,
                "original_max_position_embeddings": 64,
            },
        ),
        # gpt-oss: every other layer within a 4-token window, sinks, biased attention, YaRN (untruncated), and four
        # experts (two per token) behind a biased router, with a clamp low enough to bite on these small values.
        "gpt_oss": GptOssConfig(
            **{**common, "head_dim": 8},
            tie_word_embeddings=False,
            num_local_experts=4,
            num_experts_per_tok=2,
            sliding_window=4,
            swiglu_limit=0.5,
            rope_parameters={
                "rope_type": "yarn",
                "rope_theta": 10000.0,
                "factor": 4.0,
                "beta_fast": 32.0,
                "beta_slow": 1.0,
                "truncate": False,
                "original_max_position_embeddings": 64,
            },
        ),
        # Hunyuan dense: per-head q/k norms after the rotary embedding, whose base NTK-alpha stretches, tied.
        "hunyuan_v1_dense": HunYuanDenseV1Config(
            **{**common, "head_dim": 8},
            tie_word_embeddings=True,
            rope_parameters={"rope_type": "dynamic", "alpha": 1000.0, "factor": 1.0, "rope_theta": 10000.0},
        ),
        # Seed-OSS: Llama's layers with q/k/v biases and, set apart, the output projection's.
        "seed_oss": SeedOssConfig(
            **{**common, "head_dim": 8}, tie_word_embeddings=False, attention_bias=True, attention_out_bias=True
        ),
        # StarCoder2: LayerNorms with biases (drawn away from their 1 and 0), biases everywhere, an ungated GELU MLP,
        # tied embeddings and a 4-token window on every layer.
        "starcoder2": Starcoder2Config(**common, norm_epsilon=1e-5, sliding_window=4, use_bias=True),
        # StableLM 2: LayerNorms (drawn away from their 1 and 0), q/k/v biases, the rotary embedding on half of each
        # head.
        "stablelm": StableLmConfig(
            **common, tie_word_embeddings=False, layer_norm_eps=1e-5, use_qkv_bias=True, partial_rotary_factor=0.5
        ),
        # Nemotron: LayerNorm1P (gains stored as offsets from 1, drawn away from their init), half of each head
        # rotary, the ungated relu^2 MLP.
        "nemotron": NemotronConfig(**common, tie_word_embeddings=False, norm_eps=1e-5),
        # Command R7B's layers: one LayerNorm (drawn away from 1) before attention and the MLP side by side, layers
        # 0-2 within a 4-token window with adjacent-pair RoPE, layer 3 global without it, the logits times 1/16.
        "cohere2": Cohere2Config(
            **{**common, "num_hidden_layers": 4}, tie_word_embeddings=True, sliding_window=4, layer_norm_eps=1e-5
        ),
        # Command R+'s layers: Cohere 2's parallel blocks with adjacent-pair RoPE on every layer and q/k LayerNorms
        # with a gain per head (drawn away from 1), the logits times 1/16.
        "cohere": CohereConfig(**common, tie_word_embeddings=True, use_qk_norm=True, layer_norm_eps=1e-5),
        # Phi-2's layers, with Phi's optional q/k LayerNorms on: one LayerNorm before attention and the MLP side by
        # side, the rotary embedding on half of each head, biases everywhere (drawn away from 0, lm_head's too),
        # an ungated gelu_new MLP, a final LayerNorm.
        "phi": PhiConfig(**common, tie_word_embeddings=False, qk_layernorm=True, layer_norm_eps=1e-5),
        # Pythia's layers: LayerNorms before attention and before the MLP, the blocks side by side, the fused
        # per-head query_key_value, the rotary embedding on a quarter of each head, exact GELU, biases everywhere
        # (drawn away from 0). GPT-NeoX has no grouped-query attention.
        "gpt_neox": GPTNeoXConfig(
            **{**common, "num_key_value_heads": None, "head_dim": None},
            tie_word_embeddings=False,
            layer_norm_eps=1e-5,
            rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "partial_rotary_factor": 0.5},
        ),
        # GPT-2: learned positions (512 of them, as many as the tests' runs take), Conv1D projections stored [in, out]
        # with biases (drawn away from 0), LayerNorms, gelu_new, tied embeddings; no grouped-query attention.
        "gpt2": GPT2Config(
            vocab_size=VOCAB,
            n_embd=32,
            n_layer=2,
            n_head=4,
            n_positions=512,
            initializer_range=0.1,
            bos_token_id=None,
            eos_token_id=258,
            pad_token_id=None,
            tie_word_embeddings=True,
        ),
        # Gemma 1: Llama's layers with Gemma's 1 + w norms (drawn away from 0), the scaled embedding and GELU-tanh,
        # its config's legacy `gelu`; untied, since a tiny tied one repeats its prompt's last token forever.
        "gemma": GemmaConfig(**{**common, "head_dim": 16}, tie_word_embeddings=False, hidden_act="gelu"),
        # OLMo 1: LayerNorms without parameters, and q/k/v clamped at 0.5, low enough to cut these values.
        "olmo": OlmoConfig(**common, tie_word_embeddings=False, clip_qkv=0.5),
        # nanochat: parameter-free RMSNorms (the embedding's too), the rotary embedding turned the other way, q/k
        # norms after it, the ungated relu^2 fc1/fc2 MLP, and a final soft cap low enough to bend these logits.
        "nanochat": NanoChatConfig(**common, tie_word_embeddings=False, final_logit_softcapping=2.0),
        # EXAONE 3.5: Llama's layers, saved under EXAONE's own names (transformer.h.<i>.attn.attention.out_proj, ...).
        "exaone": ExaoneConfig(**common, tie_word_embeddings=True),
        # Helium: Llama's layers with f32 norm gains (drawn away from 1) and adjacent-pair RoPE; q/k/v biases under
        # attention_bias, none on the output projection.
        "helium": HeliumConfig(**{**common, "head_dim": 8}, tie_word_embeddings=False, attention_bias=True),
        # StableLM 2 12B's layers: one LayerNorm before attention and the MLP side by side, and a LayerNorm without
        # a bias for each head's queries and each key head's keys, stored one module per head (gains drawn away
        # from 1, differently for each head).
        "stablelm_12b": StableLmConfig(
            **common, tie_word_embeddings=False, layer_norm_eps=1e-5, qk_layernorm=True, use_parallel_residual=True
        ),
    }


def redraw(model, selected, draw):
    """Apply `draw` in place, outside autograd, to each parameter whose name `selected` accepts, in order."""
    with torch.no_grad():
        for name, param in model.named_parameters():
            if selected(name):
                draw(param)


def moe_gradients(model, cfg, ids, mask, pos):
    """Gradients of the sum of the real positions' next-token log-probs for every parameter of a mixture, under
    the checkpoint's names: the router's gradient flows only through the chosen experts' weights."""
    model.zero_grad()
    logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    (lp * (mask[:, :-1] * mask[:, 1:])).sum().backward()
    return gradients_by_checkpoint_name(model, cfg)


def gradients_by_checkpoint_name(model, cfg):
    """Every parameter's gradient after a backward pass (zeros where none reached it), under the checkpoint's
    names, and zeroes them. transformers 5 trains each layer's experts as two stacked tensors, split back here
    into the checkpoint's one per expert."""
    mixtral = cfg.model_type == "mixtral"
    names = ("w1", "w3", "w2") if mixtral else ("gate_proj", "up_proj", "down_proj")
    grads = {}
    for name, param in model.named_parameters():
        if mixtral:
            name = name.replace(".mlp.", ".block_sparse_moe.")
        g = param.grad.detach().clone() if param.grad is not None else torch.zeros_like(param)
        if cfg.model_type == "gpt_oss":
            # gpt-oss's checkpoints keep the experts stacked under transformers' own names.
            grads[name] = g.contiguous()
        elif cfg.model_type == "granitemoe":
            # GraniteMoE's checkpoints keep the experts stacked, under their own names.
            name = name.replace("experts.gate_up_proj", "input_linear.weight")
            name = name.replace("experts.down_proj", "output_linear.weight")
            grads[name.replace("router.weight", "router.layer.weight")] = g.contiguous()
        elif name.endswith("experts.gate_up_proj"):
            half = g.shape[1] // 2
            for e in range(g.shape[0]):
                grads[f"{name[: -len('gate_up_proj')]}{e}.{names[0]}.weight"] = g[e, :half].contiguous()
                grads[f"{name[: -len('gate_up_proj')]}{e}.{names[1]}.weight"] = g[e, half:].contiguous()
        elif name.endswith("experts.down_proj"):
            for e in range(g.shape[0]):
                grads[f"{name[: -len('down_proj')]}{e}.{names[2]}.weight"] = g[e].contiguous()
        else:
            grads[name] = g.contiguous()
    model.zero_grad()
    return grads


def make_tiny_models(only=None):
    """Write every tiny model, or those named in `only`."""
    out_root = TINY
    smol_template = open(os.path.join(TEMPLATES, "HuggingFaceTB-SmolLM2-135M-Instruct.jinja")).read()
    for i, (name, cfg) in enumerate(tiny_configs().items()):
        if only is not None and name not in only:
            continue
        torch.manual_seed(1000 + i)
        out = os.path.join(out_root, name)
        shutil.rmtree(out, ignore_errors=True)
        attention = attention_for(cfg.model_type)
        model = AutoModelForCausalLM.from_config(cfg, attn_implementation=attention, dtype=torch.float32).eval()
        if hasattr(cfg, "num_experts_per_tok"):
            # transformers starts some routers at zero, where every expert ties; spread them so that each token's
            # choice is clear of ties.
            redraw(model, lambda n: n.endswith(("mlp.gate.weight", "router.weight")), lambda p: p.normal_(0.0, 0.5))
        if cfg.model_type == "gpt_oss":
            # Sinks far enough from 0 to take a visible share of each query's attention.
            redraw(model, lambda n: n.endswith("sinks"), lambda p: p.normal_(0.0, 1.0))
        if cfg.model_type in ("starcoder2", "stablelm", "nemotron", "cohere2", "cohere", "phi", "gpt_neox", "gpt2"):
            # LayerNorms start at a gain of 1 and a bias of 0; moved off them, a missed gain or bias shows.
            redraw(model, lambda n: "norm" in n or ".ln_" in n, lambda p: p.add_(torch.randn_like(p) * 0.3))
        if cfg.model_type == "helium":
            redraw(model, lambda n: "norm" in n, lambda p: p.add_(torch.randn_like(p) * 0.3))
            redraw(model, lambda n: n.endswith(".bias"), lambda p: p.add_(torch.randn_like(p) * 0.3))
        if cfg.model_type in ("phi", "gpt_neox", "gpt2"):
            # Projection biases start at 0 too; lm_head's stays small, or one token would win every greedy step
            # (and GPT-2's, whose every layer adds to one residual stream).
            size = 0.05 if cfg.model_type == "gpt2" else 0.3
            redraw(model, lambda n: n.endswith(".bias"), lambda p: p.add_(torch.randn_like(p) * size))
            redraw(model, lambda n: n == "lm_head.bias", lambda p: p.mul_(0.1))
        if cfg.model_type in ("gemma", "gemma2", "gemma3_text"):
            # Gemma's norms start at a zero offset from a gain of 1; random ones make the offset matter.
            redraw(model, lambda n: "norm" in n, lambda p: p.normal_(0.0, 0.3))
        model.generation_config.eos_token_id = None
        model.save_pretrained(out, safe_serialization=True)
        tok = tiny_tokenizer(eos_token="<|im_end|>", bos_token="<|im_start|>", pad_token="<|endoftext|>")
        save_tokenizer(tok, out, smol_template)

        # A padded batch: full, left-padded, right-padded.
        g = torch.Generator().manual_seed(7 + i)
        ids = torch.randint(0, 265, (3, 12), generator=g)
        mask = torch.ones(3, 12, dtype=torch.long)
        mask[1, :3] = 0
        mask[2, 8:] = 0
        ids = ids.masked_fill(mask == 0, 0)
        pos = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        with torch.no_grad():
            logits = model(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float()
        lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None]).squeeze(-1)
        reference = {
            "input_ids": ids.contiguous(),
            "attention_mask": mask.contiguous(),
            "position_ids": pos.contiguous(),
            "logits": logits.contiguous(),
            "token_log_probs": lp.contiguous(),
        }
        if hasattr(cfg, "num_experts_per_tok"):
            # bf16 rounding can move a token to another expert, in transformers as anywhere: a mixture's bf16
            # logits are compared with transformers' own bf16 ones, not with f32's.
            half = AutoModelForCausalLM.from_pretrained(out, dtype=torch.bfloat16, attn_implementation=attention).eval()
            with torch.no_grad():
                reference["logits_bf16"] = (
                    half(input_ids=ids, attention_mask=mask, position_ids=pos).logits.float().contiguous()
                )
        save_file(reference, os.path.join(out, "reference.safetensors"))
        if hasattr(cfg, "num_experts_per_tok"):
            save_file(moe_gradients(model, cfg, ids, mask, pos), os.path.join(out, "reference_grads.safetensors"))
        if name == "phi3":
            # A row of 40 positions, past the 32 of LongRoPE's pre-training context (the long factors), and a
            # right-padded one of 30 within it (the short factors), each scored on its own as transformers scores
            # a sequence (a padded batch would take the long factors for both rows).
            long_ids = torch.randint(0, 265, (2, 40), generator=g)
            long_mask = torch.ones(2, 40, dtype=torch.long)
            long_mask[1, 30:] = 0
            long_ids = long_ids.masked_fill(long_mask == 0, 0)
            long_pos = (long_mask.cumsum(-1) - 1).masked_fill(long_mask == 0, 1)
            rows = []
            for row in range(2):
                n = int(long_mask[row].sum())
                with torch.no_grad():
                    alone = model(input_ids=long_ids[row : row + 1, :n]).logits[0]
                rows.append(torch.cat([alone, torch.zeros(40 - n, alone.shape[-1])]))
            long_logits = torch.stack(rows)
            save_file(
                {
                    "input_ids": long_ids.contiguous(),
                    "attention_mask": long_mask.contiguous(),
                    "position_ids": long_pos.contiguous(),
                    "logits": long_logits.float().contiguous(),
                },
                os.path.join(out, "reference_long.safetensors"),
            )
            # Greedy continuations that cross the context: transformers' Phi-3 `generate` re-encodes the sequence
            # with the long factors at the crossing.
            own = torch.Generator().manual_seed(99)  # not `g`, whose later draws make greedy.json
            crossing = [torch.randint(0, 265, (n,), generator=own).tolist() for n in (28, 31, 32, 40)]
            completions = greedy_continuations(model, crossing)
            with open(os.path.join(out, "greedy_long.json"), "w") as f:
                json.dump({"prompts": crossing, "max_new_tokens": 12, "completions": completions}, f)

        # Greedy continuations, one prompt at a time (no padding), never stopping early.
        prompts = [
            torch.randint(0, 265, (n,), generator=g).tolist() for n in (5, 9, 2)
        ]
        greedy = greedy_continuations(model, prompts)
        with open(os.path.join(out, "greedy.json"), "w") as f:
            json.dump({"prompts": prompts, "max_new_tokens": 12, "completions": greedy}, f)
        print(f"tiny {name}: {os.path.getsize(os.path.join(out, 'model.safetensors'))} bytes of weights")


# ---------------------------------------------------------------- chat templates

FAMILIES = {
    "smollm2": (
        "HuggingFaceTB-SmolLM2-135M-Instruct.jinja",
        dict(bos_token="<|im_start|>", eos_token="<|im_end|>", pad_token="<|im_end|>", unk_token="<|endoftext|>"),
    ),
    "qwen2.5": (
        "Qwen-Qwen2.5-7B-Instruct.jinja",
        dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    ),
    "qwen3": (
        "Qwen-Qwen3-0.6B.jinja",
        dict(eos_token="<|im_end|>", pad_token="<|endoftext|>"),
    ),
    "llama3.1": (
        "meta-llama-Llama-3.1-8B-Instruct.jinja",
        dict(bos_token="<|begin_of_text|>", eos_token="<|eot_id|>"),
    ),
}

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calculator",
            "description": "Evaluate an arithmetic expression, e.g. \"2 * (3 + 4)\".",
            "parameters": {
                "type": "object",
                "properties": {"expression": {"type": "string", "description": "The expression"}},
                "required": ["expression"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "search",
            "description": "Search the knowledge base — returns passages.",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}, "k": {"type": "integer", "default": 3}},
                "required": ["query"],
            },
        },
    },
]

SIMPLE = [{"role": "user", "content": "What is 17 + 25?"}]
WITH_SYSTEM = [
    {"role": "system", "content": "You are terse.\nAnswer with a number."},
    {"role": "user", "content": "What is 17 + 25?"},
    {"role": "assistant", "content": "42"},
    {"role": "user", "content": "And times 2? Ünïcödé ok"},
]
TOOL_CALL = [
    {"role": "user", "content": "Compute 6*7 please."},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"type": "function", "function": {"name": "calculator", "arguments": {"expression": "6*7"}}}
        ],
    },
    {"role": "tool", "content": "42"},
    {"role": "assistant", "content": "The answer is 42."},
    {"role": "user", "content": "Thanks"},
]
THINKING = [
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "<think>\nThe user greets.\n</think>\n\nHello!"},
    {"role": "user", "content": "What is 2+2?"},
]


def chat_cases(family):
    cases = []
    for gen in (False, True):
        cases.append(dict(name=f"simple_gen{int(gen)}", messages=SIMPLE, tools=None, add_generation_prompt=gen))
        cases.append(dict(name=f"system_gen{int(gen)}", messages=WITH_SYSTEM, tools=None, add_generation_prompt=gen))
    if family != "smollm2":  # SmolLM2's template has no tool support
        cases.append(dict(name="tools_gen1", messages=SIMPLE, tools=TOOLS, add_generation_prompt=True))
        cases.append(dict(name="tools_system_gen0", messages=WITH_SYSTEM, tools=TOOLS, add_generation_prompt=False))
        cases.append(dict(name="tool_call_gen1", messages=TOOL_CALL, tools=TOOLS, add_generation_prompt=True))
    if family == "qwen3":
        cases.append(dict(name="thinking_gen1", messages=THINKING, tools=None, add_generation_prompt=True))
        cases.append(
            dict(
                name="no_thinking_gen1",
                messages=SIMPLE,
                tools=None,
                add_generation_prompt=True,
                extra={"enable_thinking": False},
            )
        )
    return cases


def make_chat_fixtures():
    out_root = os.path.join(FIX, "chat")
    shutil.rmtree(out_root, ignore_errors=True)
    for family, (template_file, special) in FAMILIES.items():
        template = open(os.path.join(TEMPLATES, template_file)).read()
        out = os.path.join(out_root, family)
        tok = save_tokenizer(tiny_tokenizer(**special), out, template)
        cases = chat_cases(family)
        for case in cases:
            case["expected"] = tok.apply_chat_template(
                case["messages"],
                tools=case["tools"],
                add_generation_prompt=case["add_generation_prompt"],
                tokenize=False,
                **case.get("extra", {}),
            )
        with open(os.path.join(out, "cases.json"), "w") as f:
            json.dump(cases, f, indent=1, ensure_ascii=False)
        print(f"chat {family}: {len(cases)} cases")


if __name__ == "__main__":
    # `model_fixtures.py gemma3 qwen2_window` rewrites only those tiny models; no argument rewrites everything.
    names = sys.argv[1:]
    if names:
        make_tiny_models(set(names))
    else:
        make_chat_fixtures()
        make_tiny_models()
