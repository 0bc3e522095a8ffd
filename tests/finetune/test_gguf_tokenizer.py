"""A GGUF file's SentencePiece vocabulary rebuilt as a fast tokenizer encodes as SentencePiece itself does.

The reference is the `sentencepiece` library on the model the GGUF vocabulary was written from (pieces, scores and
types, as llama.cpp's converter writes them). transformers 5.5's own GGUF reader gives such a vocabulary a dummy
merge list: here it encodes without <bos>; on Gemma 3 270M's 262k pieces it spells words letter by letter.
"""

from __future__ import annotations

import io

import pytest

from finetune.gguf_tokenizer import gguf_tokenizer, read_gguf_vocab

sentencepiece = pytest.importorskip("sentencepiece")

TEXTS = [
    "The capital of France is Paris.",
    "Hello,  world!\n\nNew   paragraph\twith a tab.",
    " leading space and trailing space ",
    "<start_of_turn>user\nWhat is 2 and 2?<end_of_turn>\n<start_of_turn>model\n",
    "def f(x):\n    return x ** 2  # square\n",
    "émigré naïve coöperate — café ☃ 日本語 🙂 12345",
    "",
]


def _train(add_dummy_prefix: bool):
    from tests.conftest import _CORPUS

    model = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(list(_CORPUS) * 10), model_writer=model, vocab_size=700, model_type="bpe",
        byte_fallback=True, hard_vocab_limit=False, minloglevel=2, normalization_rule_name="identity",
        remove_extra_whitespaces=False, add_dummy_prefix=add_dummy_prefix, split_digits=True,
        user_defined_symbols=["<start_of_turn>", "<end_of_turn>", "\n", "\n\n"],
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>")
    return sentencepiece.SentencePieceProcessor(model_proto=model.getvalue())


def _write_gguf(sp, path, add_dummy_prefix: bool):
    """The vocabulary as llama.cpp's converter writes a SentencePiece model's (types 1-6, scores, flags)."""
    import gguf

    types = []
    for i in range(sp.get_piece_size()):
        types.append(gguf.TokenType.CONTROL if sp.is_control(i) else gguf.TokenType.UNKNOWN if sp.is_unknown(i)
                     else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.UNUSED if sp.is_unused(i)
                     else gguf.TokenType.USER_DEFINED if sp.id_to_piece(i) in {"<start_of_turn>", "<end_of_turn>",
                                                                              "\n", "\n\n"}
                     else gguf.TokenType.NORMAL)
    writer = gguf.GGUFWriter(str(path), "gemma3")
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i).encode() for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    writer.add_token_types(types)
    writer.add_bos_token_id(2)
    writer.add_eos_token_id(1)
    writer.add_unk_token_id(3)
    writer.add_pad_token_id(0)
    writer.add_add_bos_token(True)
    writer.add_add_space_prefix(add_dummy_prefix)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def test_sentencepiece_gguf_vocabulary_encodes_as_sentencepiece_does(tmp_path):
    sp = _train(False)  # Gemma's: no dummy prefix
    path = _write_gguf(sp, tmp_path / "vocab.gguf", False)
    tokenizer = gguf_tokenizer(path, rows=sp.get_piece_size())
    assert read_gguf_vocab(path).add_space_prefix is False
    for text in TEXTS + ["The quick brown fox jumps over the lazy dog " * 3]:
        want = [2] + sp.encode(text)
        got = tokenizer(text)["input_ids"]
        assert got == want, (text, tokenizer.convert_ids_to_tokens(got), [sp.id_to_piece(i) for i in want])
        assert tokenizer.decode(got, skip_special_tokens=True) == text


def test_turn_markers_and_newline_runs_stay_whole_and_bos_comes_first(tmp_path):
    sp = _train(False)
    tokenizer = gguf_tokenizer(_write_gguf(sp, tmp_path / "vocab.gguf", False), rows=sp.get_piece_size())
    ids = tokenizer("<start_of_turn>user\nHi<end_of_turn>\n\n")["input_ids"]
    tokens = tokenizer.convert_ids_to_tokens(ids)
    assert tokens[:2] == ["<bos>", "<start_of_turn>"] and tokens[-2:] == ["<end_of_turn>", "\n\n"]
    assert tokenizer.bos_token == "<bos>" and tokenizer.eos_token == "<eos>" and tokenizer.pad_token == "<pad>"


def test_pieces_past_the_embedding_rows_are_dropped(tmp_path):
    sp = _train(False)
    tokenizer = gguf_tokenizer(_write_gguf(sp, tmp_path / "vocab.gguf", False), rows=sp.get_piece_size() - 5)
    assert len(tokenizer) == sp.get_piece_size() - 5
    assert max(tokenizer("The quick brown fox jumps over the lazy dog")["input_ids"]) < len(tokenizer)
