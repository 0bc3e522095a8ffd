"""A GGUF file's tokenizer as a plain fast tokenizer that saves, reloads and converts to OpenVINO like any other.

Two kinds of GGUF vocabulary reach us:
- byte-level BPE (`tokenizer.ggml.model = gpt2`: SmolLM2, Llama 3, Qwen): transformers' GGUF loader builds it
  right but labels it CodeLlamaTokenizer and appends CodeLlama's infill tokens; `gguf_tokenizer` keeps its backend
  without them.
- SentencePiece BPE without a dummy prefix (`llama`, add_space_prefix false: Gemma): the file holds pieces and
  scores, no merge list. transformers 5.5 hands a dummy merge list to GemmaTokenizer's BPE, which then spells
  every word letter by letter ("capital" -> c,ap,it,al): Gemma 3 270M read that way answered "is is is is".
  `sentencepiece_tokenizer` derives the merges from the scores, as llama.cpp's tokenizer merges (highest-scoring
  piece first); on the real Gemma 3 270M file it gives llama.cpp's token ids on every text tried (212 texts:
  README excerpts, code, accents, CJK, emoji, whitespace runs).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

# llama.cpp's token types (gguf.TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


@dataclass(frozen=True)
class GGUFVocab:
    model: str  # tokenizer.ggml.model: "gpt2" (byte-level BPE), "llama" (SentencePiece), ...
    tokens: list[str]
    types: list[int]
    scores: list[float]
    special_ids: dict[str, int]  # bos, eos, unk, pad where the file names them
    add_bos: bool
    add_eos: bool
    add_space_prefix: bool
    chat_template: str | None


def read_gguf_vocab(path: str | Path) -> GGUFVocab:
    from gguf import GGUFReader

    fields = GGUFReader(str(path)).fields

    def scalar(key, default=None):
        field = fields.get(key)
        return field.contents() if field is not None else default

    def array(key, convert):
        field = fields.get(key)
        return [convert(field.parts[i]) for i in field.data] if field is not None else []

    model = scalar("tokenizer.ggml.model", "")
    tokens = array("tokenizer.ggml.tokens", lambda part: bytes(part).decode("utf-8"))
    keys = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}
    specials = {name: scalar(f"tokenizer.ggml.{key}_token_id") for name, key in keys.items()}
    return GGUFVocab(
        model=model,
        tokens=tokens,
        types=array("tokenizer.ggml.token_type", lambda part: int(part[0])) or [NORMAL] * len(tokens),
        scores=array("tokenizer.ggml.scores", lambda part: float(part[0])) or [0.0] * len(tokens),
        special_ids={name: int(i) for name, i in specials.items() if i is not None},
        add_bos=bool(scalar("tokenizer.ggml.add_bos_token", model == "llama")),
        add_eos=bool(scalar("tokenizer.ggml.add_eos_token", False)),
        # llama.cpp's default for a SentencePiece vocabulary without the key (Llama 2, Mistral v0.1): a prefix space
        add_space_prefix=bool(scalar("tokenizer.ggml.add_space_prefix", model == "llama")),
        chat_template=scalar("tokenizer.chat_template"),
    )


def sentencepiece_tokenizer(vocab: GGUFVocab, rows: int | None = None):
    """The SentencePiece BPE vocabulary (without a dummy prefix, as Gemma's) as a `tokenizers.Tokenizer`, merges
    ranked by the merged piece's score.

    `rows`: the model's embedding rows; pieces past them (which no row can embed) are dropped."""
    from tokenizers import AddedToken, Tokenizer, decoders, normalizers, processors
    from tokenizers.models import BPE
    from transformers.convert_slow_tokenizer import generate_merges

    count = min(len(vocab.tokens), rows or len(vocab.tokens))
    tokens, types = vocab.tokens[:count], vocab.types[:count]
    ids = {token: i for i, token in enumerate(tokens)}
    # Only normal pieces take part in merging; control and user-defined pieces are matched whole, bytes are the
    # fallback for text no piece covers (262k pieces: about 7 s).
    normal = {token: i for i, token in enumerate(tokens) if types[i] == NORMAL}
    merges = generate_merges(normal, [(token, vocab.scores[i]) for token, i in normal.items()])
    unk = tokens[vocab.special_ids["unk"]] if vocab.special_ids.get("unk", count) < count else None
    backend = Tokenizer(BPE(ids, merges, unk_token=unk, fuse_unk=True, byte_fallback=True))
    backend.normalizer = normalizers.Replace(" ", "▁")
    backend.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    backend.add_tokens([AddedToken(t, special=False, normalized=False)
                        for t, kind in zip(tokens, types) if kind == USER_DEFINED])
    backend.add_special_tokens([AddedToken(t, special=True, normalized=False)
                                for t, kind in zip(tokens, types) if kind == CONTROL])
    def added(name, wanted):  # [token] when the file asks for it on every encoding and the model embeds it
        i = vocab.special_ids.get(name, count)
        return [(tokens[i], i)] if wanted and i < count else []

    bos, eos = added("bos", vocab.add_bos), added("eos", vocab.add_eos)
    if bos or eos:
        first, last = [t for t, _ in bos], [t for t, _ in eos]
        backend.post_processor = processors.TemplateProcessing(
            single=" ".join([*first, "$A", *last]), pair=" ".join([*first, "$A", *last, *first, "$B", *last]),
            special_tokens=bos + eos)
    return backend


def without_tokens_past(backend, rows: int):
    """The backend without the tokens whose ids no embedding row can hold."""
    from tokenizers import Tokenizer

    data = json.loads(backend.to_str())
    extra = {t["content"] for t in data.get("added_tokens", []) if t["id"] >= rows}
    if not extra:
        return backend
    data["added_tokens"] = [t for t in data["added_tokens"] if t["id"] < rows]
    vocab = data.get("model", {}).get("vocab")
    if isinstance(vocab, dict):
        data["model"]["vocab"] = {token: i for token, i in vocab.items() if i < rows}
    return Tokenizer.from_str(json.dumps(data))


def gguf_tokenizer(gguf_path: Path, rows: int, *, eos: str | None = None, pad: str | None = None,
                   add_bos: bool | None = None, chat_template: str | None = None):
    """The GGUF file's tokenizer as a `PreTrainedTokenizerFast`, trimmed to the model's `rows` embeddings.

    eos, pad, add_bos, chat_template: corrections where the file's metadata is wrong or missing (embedded models).
    """
    from tokenizers import decoders, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    vocab = read_gguf_vocab(gguf_path)
    # With a dummy prefix (Llama 2, Mistral v0.1, Phi-3) SentencePiece and llama.cpp disagree on whether a space
    # follows each marker inside a text, and transformers' converters already build those with merges: they keep it.
    rebuilt = vocab.model == "llama" and not vocab.add_space_prefix
    if rebuilt:
        backend = sentencepiece_tokenizer(vocab, rows)

        def named(key):
            i = vocab.special_ids.get(key)
            return vocab.tokens[i] if i is not None and i < len(vocab.tokens) else None

        bos, file_eos, unk, file_pad = named("bos"), named("eos"), named("unk"), named("pad")
    else:
        # transformers 5.5 labels a GGUF byte-level BPE tokenizer CodeLlamaTokenizer; saved and reloaded under
        # that class it inserts <unk> between words, and it adds CodeLlama's five infill tokens past the model's
        # rows (SmolLM2: 49157 tokens for 49152 rows), which llama.cpp's converter refuses. Its backend is right.
        loaded = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
        backend = without_tokens_past(loaded.backend_tokenizer, rows)
        if type(backend.pre_tokenizer).__name__ == "ByteLevel":
            # The GGUF loader wraps ByteLevel in a sentencepiece-style chain (ByteFallback, Fuse, Replace) that
            # decodes the same text but that openvino_tokenizers cannot convert.
            backend.decoder = decoders.ByteLevel()
        if add_bos is False:
            backend.post_processor = processors.ByteLevel(trim_offsets=False)
        bos, file_eos, unk, file_pad = loaded.bos_token, loaded.eos_token, loaded.unk_token, loaded.pad_token
    if add_bos is False and rebuilt:
        backend.post_processor = None
    eos = eos or file_eos
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token=eos,
        pad_token=pad or file_pad or eos,
        unk_token=unk,
        chat_template=chat_template or vocab.chat_template,
        clean_up_tokenization_spaces=False,
    )
