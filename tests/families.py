"""Tiny random models of every family users bring, each with its family's published chat template and markers.

A model is 2 layers of hidden 64 built from the family's own config class (Llama 3's rope scaling, Qwen 3's
q/k norms, Gemma 2's soft-capping and sliding window, Phi-3's fused projections), its tokenizer the tests' small
BPE with the family's special tokens added, the chat template copied from the family's tokenizer_config.json
(tests/fixtures/chat_templates/), and the end-of-turn tokens of the family's generation_config.json.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import build_tiny_tokenizer

TEMPLATES = Path(__file__).parent / "fixtures" / "chat_templates"

# family -> (template file, special tokens the template writes, bos, tokenizer eos, generation_config eos tokens)
FAMILIES = {
    "llama": ("llama3", ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"],
              "<|begin_of_text|>", "<|eot_id|>", ["<|eot_id|>"]),
    "qwen2": ("qwen2", [], None, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
    "qwen3": ("qwen3", ["<think>", "</think>"], None, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
    "mistral": ("mistral", ["<s>", "</s>", "[INST]", "[/INST]"], "<s>", "</s>", ["</s>"]),
    "gemma2": ("gemma2", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
               ["<eos>", "<end_of_turn>"]),
    "gemma3_text": ("gemma3", ["<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"], "<bos>", "<eos>",
                    ["<eos>", "<end_of_turn>"]),
    "phi3": ("phi3", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None, "<|endoftext|>",
             ["<|end|>", "<|endoftext|>"]),
    # Phi-4-mini: model_type phi3 again, but a partial rotary embedding, a tied head, longrope scaling, a GPT-2 style
    # BPE vocabulary, and a template that writes the role markers from variables with no newline after them
    "phi4mini": ("phi4mini", ["<|system|>", "<|user|>", "<|assistant|>", "<|end|>"], None, "<|endoftext|>",
                 ["<|end|>", "<|endoftext|>"]),
    # The families published as multimodal checkpoints from late 2025 on (NEW_FAMILIES below): their templates
    # think. Qwen 3.5's generation prompt opens a <think> block unless enable_thinking is false; Gemma 4's closes
    # an empty thought channel unless enable_thinking is true; Ministral 3 Reasoning always thinks, in [THINK].
    "qwen3_5": ("qwen3_5", ["<think>", "</think>"], None, "<|im_end|>", ["<|im_end|>", "<|endoftext|>"]),
    "gemma4": ("gemma4", ["<bos>", "<eos>", "<|turn>", "<turn|>", "<|channel>", "<channel|>", "<|think|>"], "<bos>",
               "<eos>", ["<eos>", "<turn|>"]),
    "ministral3": ("ministral3", ["<s>", "</s>", "[INST]", "[/INST]", "[SYSTEM_PROMPT]", "[/SYSTEM_PROMPT]", "[THINK]",
                                  "[/THINK]"], "<s>", "</s>", ["</s>"]),
}
# the families with a tiny model of their own here (family_config); TEMPLATE_NAMES: every template
NAMES = [f for f in FAMILIES if f not in ("qwen3_5", "gemma4", "ministral3")]
TEMPLATE_NAMES = list(FAMILIES)
# family -> the quantize.ollama.FORMATS entry its template renders as
OLLAMA_FORMAT = {"llama": "llama3", "qwen2": "chatml", "qwen3": "chatml", "mistral": "mistral", "gemma2": "gemma",
                 "gemma3_text": "gemma", "phi3": "phi3", "phi4mini": "phi4"}

# A conversation with a system message and several turns, as users' logs hold them.
CONVERSATION = [
    {"role": "system", "content": "You answer in one short sentence."},
    {"role": "user", "content": "What is 2 and 2?"},
    {"role": "assistant", "content": "It is 4."},
    {"role": "user", "content": "And twice that?"},
    {"role": "assistant", "content": "That makes 8."},
]


def chat_rows(count: int = 16) -> list[dict]:
    """`count` chats shaped like CONVERSATION, each with its own numbers."""
    rows = []
    for i in range(count):
        messages = [dict(m) for m in CONVERSATION]
        messages[1]["content"] = f"What is {i} and {i}?"
        messages[2]["content"] = f"It is {2 * i}."
        rows.append({"messages": messages})
    return rows


def family_tokenizer(family: str):
    template, specials, bos, eos, _ = FAMILIES[family]
    tokenizer = build_tiny_tokenizer()
    tokenizer.add_special_tokens({"additional_special_tokens": specials} if specials else {})
    tokenizer.bos_token = bos or tokenizer.bos_token
    tokenizer.eos_token = eos
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    return tokenizer


def family_config(family: str, tokenizer, **overrides):
    import transformers

    ids = dict(vocab_size=len(tokenizer), bos_token_id=tokenizer.bos_token_id, pad_token_id=tokenizer.pad_token_id,
               eos_token_id=[tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family][4]])
    shape = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=256, **ids)
    specific = {
        "llama": ("LlamaConfig", dict(tie_word_embeddings=True, rope_scaling={
            "rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64}, rope_theta=500000.0)),
        "qwen2": ("Qwen2Config", dict(tie_word_embeddings=True)),
        "qwen3": ("Qwen3Config", dict(head_dim=16, tie_word_embeddings=True)),
        "mistral": ("MistralConfig", dict(tie_word_embeddings=False, sliding_window=None)),
        # Gemma 2's real soft-capping values and a window shorter than the test's longer conversations
        "gemma2": ("Gemma2Config", dict(head_dim=16, query_pre_attn_scalar=16, final_logit_softcapping=30.0,
                                        attn_logit_softcapping=50.0, sliding_window=16)),
        "gemma3_text": ("Gemma3TextConfig", dict(head_dim=16, query_pre_attn_scalar=16, sliding_window=16,
                                                 layer_types=["sliding_attention", "full_attention"])),
        "phi3": ("Phi3Config", dict(tie_word_embeddings=False)),
        # microsoft/Phi-4-mini-instruct's values at the tiny size: 3/4 of each head rotated (12 of 16 dims), so the
        # longrope factors are 6 long, and 4x the original context as published (131072 over 4096 there)
        "phi4mini": ("Phi3Config", dict(tie_word_embeddings=True, partial_rotary_factor=0.75, sliding_window=262144,
                                        original_max_position_embeddings=64, rope_scaling={
                                            "rope_type": "longrope", "short_factor": [1.0, 1.0, 1.1, 1.3, 1.7, 2.4],
                                            "long_factor": [1.0, 1.2, 1.9, 3.5, 8.0, 17.0]})),
    }
    name, extra = specific[family]
    return getattr(transformers, name)(**{**shape, **extra, **overrides})


def gemma3_multimodal_config(tokenizer, **text_overrides):
    """Gemma 3 as published from 4B up (Gemma3ForConditionalGeneration): the tiny gemma3_text language model above
    beside a one-layer SigLIP vision tower. The image token lies past the vocabulary, so no text id is one."""
    import transformers

    text = family_config("gemma3_text", tokenizer, **text_overrides)
    vision = transformers.SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                             num_attention_heads=2, image_size=28, patch_size=14)
    return transformers.Gemma3Config(text_config=text.to_dict(), vision_config=vision.to_dict(), mm_tokens_per_image=4,
                                     boi_token_index=tokenizer.bos_token_id, eoi_token_index=tokenizer.eos_token_id,
                                     image_token_index=len(tokenizer))


def build_family_model(family: str, tokenizer, seed: int = 0, attn_implementation: str | None = None, **overrides):
    import torch
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    if family == "gemma3":  # multimodal: AutoModelForCausalLM builds Gemma3ForConditionalGeneration
        config = gemma3_multimodal_config(tokenizer, **overrides)
    else:
        config = family_config(family, tokenizer, **overrides)
    return AutoModelForCausalLM.from_config(config, attn_implementation=attn_implementation).float()


def teach_reply(family: str, tokenizer, ids: list[int], labels: list[int], folder):
    """A tiny model of Qwen 3's shape with `family`'s tokenizer and end-of-turn tokens, taught one labelled sequence
    (its loss is below 0.01 after 60 steps at 1e-2) and saved to `folder` with that family's generation config:
    a model that writes what the test taught it, in the family's format, after the family's prompt."""
    import torch
    from transformers import GenerationConfig

    eos = [tokenizer.convert_tokens_to_ids(t) for t in FAMILIES[family][4]]
    model = build_family_model("qwen3", tokenizer, eos_token_id=eos)
    ids, labels = torch.tensor([ids]), torch.tensor([labels])
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(60):
        model(input_ids=ids, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def packed_loss(model, examples: list[list[int]], labels: list[list[int]]):
    """(our training loss of `examples` in one padding-free row, the head the loss applied): packed attention,
    stateful layers once per example and lean ops on, as finetune_model trains; switched back after."""
    import torch

    from finetune.collate import PaddingFreeCollator, kept_positions_loss
    from finetune.lean_ops import use_lean_ops
    from finetune.packed_attention import use_packed_rows

    batch = PaddingFreeCollator(boundaries=True)([{"input_ids": i, "labels": lab} for i, lab in zip(examples, labels)])
    kept = batch.pop("labels")
    boundaries, undo_rows = use_packed_rows(model)
    assert boundaries
    head, undo = use_lean_ops(model, head_in_loss=True)
    try:
        with torch.no_grad():
            return kept_positions_loss(model(**batch), kept, head=head), head
    finally:
        undo()
        undo_rows()


def save_family(family: str, path: Path) -> Path:
    """A Hugging Face folder of the family's tiny model: config, weights, tokenizer, generation config."""
    from transformers import GenerationConfig

    tokenizer = family_tokenizer(family)
    model = build_family_model(family, tokenizer)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=model.config.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


# Families whose llama.cpp converter reads a SentencePiece model (tokenizer.model), as the published ones ship.
SENTENCEPIECE = {"gemma2": ("GemmaTokenizer", {"pad": "<pad>", "eos": "<eos>", "bos": "<bos>", "unk": "<unk>"}),
                 "phi3": ("LlamaTokenizer", {"pad": "<pad>", "eos": "<|endoftext|>", "bos": "<s>", "unk": "<unk>"})}


def gguf_family_tokenizer(family: str, folder: Path):
    """A tokenizer that llama.cpp's GGUF converter reads, as it reads the published models' (it has no GGUF form of
    the tests' own small BPE): the embedded SmolLM2 vocabulary with the family's markers added, or, for Gemma 2 and
    Phi-3, a small SentencePiece model trained here with the family's markers, saved into `folder`."""
    import io

    from transformers import AutoTokenizer

    from finetune.models import load_tokenizer

    template, specials, bos, eos, _ = FAMILIES[family]
    if family not in SENTENCEPIECE:
        tokenizer = load_tokenizer(None)
        tokenizer.add_special_tokens({"additional_special_tokens": specials} if specials else {})
        tokenizer.bos_token = bos or tokenizer.bos_token
        tokenizer.eos_token = eos
    else:
        import sentencepiece

        tokenizer_class, control = SENTENCEPIECE[family]
        markers = [t for t in specials if t not in control.values()]
        if family == "phi3":
            markers.append("<|endoftext|>")
            control = {**control, "eos": "</s>"}
        model = io.BytesIO()
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=iter(_corpus() * 10), model_writer=model, vocab_size=600, model_type="bpe",
            byte_fallback=True, hard_vocab_limit=False, minloglevel=2, user_defined_symbols=markers,
            pad_id=0, eos_id=1, bos_id=2, unk_id=3, **{f"{k}_piece": v for k, v in control.items()})
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "tokenizer.model").write_bytes(model.getvalue())
        (folder / "tokenizer_config.json").write_text(json.dumps({
            "tokenizer_class": tokenizer_class, "bos_token": bos, "eos_token": eos, "unk_token": "<unk>",
            "pad_token": "<pad>", "add_bos_token": family == "gemma2"}))
        tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.chat_template = (TEMPLATES / f"{template}.jinja").read_text(encoding="utf-8")
    tokenizer.save_pretrained(folder)
    if family == "phi4mini":  # the class Phi-4-mini publishes: llama.cpp's Phi-3 converter reads it as GPT-2 BPE
        config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "GPT2Tokenizer"}))
    if family in SENTENCEPIECE:  # a fast tokenizer's save leaves the SentencePiece model out: the converter reads it
        (folder / "tokenizer.model").write_bytes(model.getvalue())
    return tokenizer


def save_gguf_family(family: str, path: Path) -> Path:
    """The family's tiny model with a tokenizer llama.cpp's converter reads (gguf_family_tokenizer)."""
    from transformers import GenerationConfig

    tokenizer = gguf_family_tokenizer(family, path)
    # transformers' GGUF loader (the tests' reference reload) rebuilds some config fields from its own defaults, which
    # the published models match: Qwen 3's head_dim of 128, Gemma 3's query scaling of 256 (llama.cpp scales by
    # head_dim: in the published models both are 256) and its pattern of five sliding-window layers to one global.
    loader_defaults = {"qwen3": {"head_dim": 128},
                       "gemma3_text": {"head_dim": 256, "query_pre_attn_scalar": 256, "num_hidden_layers": 6,
                                       "layer_types": None}}
    model = build_family_model(family, tokenizer, **loader_defaults.get(family, {}))
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=model.config.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    return path


# Families published as one multimodal checkpoint from late 2025 on, each a tiny language model beside a one-layer
# vision tower, saved in the layout transformers writes: Qwen 3.5 (gated delta-net layers, three in four, beside
# attention), Ministral 3 (Mistral3ForConditionalGeneration: YaRN and position-scaled queries) and Gemma 4
# (per-layer inputs, shared KV layers), each with its own published chat template (the value here); for GGUF, a
# vocabulary llama.cpp's converter reads: its predecessor's (GGUF_PREDECESSOR).
NEW_FAMILIES = {"qwen3_5": "qwen3_5", "mistral3": "ministral3", "gemma4": "gemma4"}
GGUF_PREDECESSOR = {"qwen3_5": "qwen3", "mistral3": "mistral", "gemma4": "gemma2"}


def new_family_config(kind: str, tokenizer):
    import transformers
    from transformers.models.gemma4.configuration_gemma4 import Gemma4VisionConfig
    from transformers.models.qwen3_5.configuration_qwen3_5 import Qwen3_5VisionConfig

    vocab = len(tokenizer)
    shape = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, head_dim=16, max_position_embeddings=256, pad_token_id=tokenizer.pad_token_id,
                 bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id)
    extra = [vocab + i for i in range(7)]  # image, video, audio markers past the vocabulary: no text id is one
    if kind == "qwen3_5":  # layers 0-2 gated delta-net, layer 3 attention, as the published 3:1
        # a quarter of each head rotated, in interleaved multimodal sections as published (11, 11, 10 of 32 there)
        text = transformers.Qwen3_5TextConfig(**shape, linear_key_head_dim=16, linear_value_head_dim=16,
                                              linear_num_key_heads=2, linear_num_value_heads=4,
                                              tie_word_embeddings=True, rope_parameters={
                                                  "rope_type": "default", "rope_theta": 1e7,
                                                  "partial_rotary_factor": 0.25, "mrope_section": [1, 1, 0],
                                                  "mrope_interleaved": True})
        vision = Qwen3_5VisionConfig(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                                     patch_size=14, num_position_embeddings=64)
        return transformers.Qwen3_5Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                          image_token_id=extra[0], video_token_id=extra[1],
                                          vision_start_token_id=extra[2], vision_end_token_id=extra[3],
                                          tie_word_embeddings=True)
    if kind == "mistral3":  # YaRN from 16 positions, so the test rows pass where queries are scaled by position
        text = transformers.Ministral3Config(**shape, rope_parameters={
            "type": "yarn", "rope_theta": 1e6, "factor": 16.0, "original_max_position_embeddings": 16,
            "max_position_embeddings": 256, "beta_fast": 32.0, "beta_slow": 1.0, "mscale_all_dim": 1.0, "mscale": 1.0,
            "llama_4_scaling_beta": 0.1})
        vision = transformers.PixtralVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                                  num_attention_heads=2, image_size=56, patch_size=14, head_dim=16)
        return transformers.Mistral3Config(text_config=text.to_dict(), vision_config=vision.to_dict(),
                                           image_token_index=extra[0], tie_word_embeddings=False)
    if kind == "gemma4":  # a window shorter than the test rows; the last two layers reuse earlier layers' KV
        text = transformers.Gemma4TextConfig(**{**shape, "num_hidden_layers": 6}, global_head_dim=32,
                                             sliding_window=16, vocab_size_per_layer_input=vocab,
                                             hidden_size_per_layer_input=64, num_kv_shared_layers=2,
                                             layer_types=["sliding_attention", "full_attention"] * 3)
        vision = Gemma4VisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                                    num_key_value_heads=2, head_dim=16, position_embedding_size=64)
        return transformers.Gemma4Config(text_config=text.to_dict(), vision_config=vision.to_dict(), audio_config=None,
                                         boi_token_id=extra[0], eoi_token_id=extra[1], image_token_id=extra[2],
                                         video_token_id=extra[3], boa_token_id=extra[4], eoa_token_index=extra[5],
                                         audio_token_id=extra[6])
    raise ValueError(kind)


def build_new_family(kind: str, tokenizer, seed: int = 0, attn_implementation: str | None = None):
    """The model finetune_model trains for the published checkpoint: Qwen 3.5's language model alone, the others
    whole (finetune.language_model.auto_model_class)."""
    import torch
    from transformers import AutoModelForImageTextToText

    from finetune.language_model import auto_model_class, loads_language_model_alone

    config = new_family_config(kind, tokenizer)
    torch.manual_seed(seed)
    if loads_language_model_alone(config):
        model = auto_model_class(config).from_config(config.get_text_config(), attn_implementation=attn_implementation)
    else:
        model = AutoModelForImageTextToText.from_config(config, attn_implementation=attn_implementation)
    return model.float()


def save_new_family(kind: str, path: Path, gguf: bool = False) -> Path:
    """The published layout of the family's tiny model (the multimodal checkpoint), with its tokenizer; `gguf`: a
    tokenizer llama.cpp's converter reads (gguf_family_tokenizer; Gemma 4's converter reads Gemma's SentencePiece
    vocabulary)."""
    import torch
    from transformers import AutoModelForImageTextToText, GenerationConfig

    if gguf:
        tokenizer = gguf_family_tokenizer(GGUF_PREDECESSOR[kind], path)
    else:
        tokenizer = family_tokenizer(NEW_FAMILIES[kind])
    torch.manual_seed(0)
    model = AutoModelForImageTextToText.from_config(new_family_config(kind, tokenizer)).float()
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id,
                                               eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(path)
    if not gguf:
        tokenizer.save_pretrained(path)
    return path


def _corpus() -> list[str]:
    from tests.conftest import _CORPUS

    return list(_CORPUS)
