"""Turn records into token ids and labels for each task, masking the prompt unless `train_on_inputs`.

The prompt templates are NeuralChat's (Alpaca for completion and code generation), so a model tuned here
answers the same prompts that `neural_chat_app` builds with `task="completion"`.
"""

from __future__ import annotations

from dataclasses import dataclass

from finetune.chat_template import chat_tokens_and_labels
from finetune.records import summary_columns, tool_definitions, trl_format

IGNORE_INDEX = -100

PROMPT_NO_INPUT = (
    "Below is an instruction that describes a task. Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Response:\n"
)
PROMPT_WITH_INPUT = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request.\n\n"
    "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
)
SUMMARIZATION_PROMPT = "Summarize the following article.\n\n### Article:\n{article}\n\n### Summary:\n"



def completion_prompt(instruction: str, input_text: str = "") -> str:
    if input_text:
        return PROMPT_WITH_INPUT.format(instruction=instruction, input=input_text)
    return PROMPT_NO_INPUT.format(instruction=instruction)


@dataclass(frozen=True)
class FormatOptions:
    task: str
    max_seq_length: int
    train_on_inputs: bool = False
    max_source_length: int | None = None
    max_target_length: int | None = None
    prompt_column: str | None = None
    response_column: str | None = None


def tokenize_record(tokenizer, record: dict, opts: FormatOptions) -> dict | None:
    """Return {"input_ids", "labels"} or None when truncation left no token to learn from."""
    # code generation keeps its prompt tokenized alone, as at inference (TRL's joined tokenization may merge the
    # prompt's last newline into the code's indentation)
    kind = trl_format(record) if opts.task not in ("summarization", "code-generation") else None
    if kind is not None:
        ids, labels = _tokenize_trl(tokenizer, record, kind, opts)
    elif opts.task in ("chat", "extraction"):
        ids, labels = chat_tokens_and_labels(tokenizer, record["messages"], opts.max_seq_length, opts.train_on_inputs,
                                             tool_definitions(record.get("tools"))[0])
    else:
        prompt, response = _prompt_and_response(record, opts)
        ids, labels = _tokenize_pair(tokenizer, prompt, response, opts)
    if all(label == IGNORE_INDEX for label in labels[1:]):
        return None
    return {"input_ids": ids, "labels": labels}


def _tokenize_trl(tokenizer, record: dict, kind: str, opts: FormatOptions) -> tuple[list[int], list[int]]:
    """TRL's SFT formats, tokenized as TRL's SFTTrainer does (so data prepared for it trains the same here):
    prompt and completion are tokenized together, the completion learned from where the prompt's own tokens stop
    being a prefix; the end-of-sequence token ends plain text; the chat template renders conversational ones."""
    eos = tokenizer.eos_token or ""
    if kind == "language modeling":
        text = record["text"] if record["text"].endswith(eos) else record["text"] + eos
        ids = tokenizer(text)["input_ids"][: opts.max_seq_length]
        return ids, list(ids)
    if kind == "prompt-completion":
        completion = record["completion"] if record["completion"].endswith(eos) else record["completion"] + eos
        prompt_ids = tokenizer(record["prompt"])["input_ids"]
        ids = tokenizer(record["prompt"] + completion)["input_ids"]
    else:
        from finetune.chat_template import generation_prompt, render_chat
        from finetune.tool_calls import tool_messages

        tools = tool_definitions(record.get("tools"))[0]
        prompt, tools_shown = tool_messages(record["prompt"], tools, tokenizer)
        messages, _ = tool_messages(record["prompt"] + record["completion"], tools, tokenizer)
        extra = {"tools": tools_shown} if tools_shown else {}
        prompt_text = generation_prompt(tokenizer, prompt, **extra)
        text = render_chat(tokenizer, messages, tokenize=False, **extra)
        prompt_ids = tokenizer(prompt_text, add_special_tokens=False)["input_ids"]
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    start = next((i for i, (a, b) in enumerate(zip(prompt_ids, ids)) if a != b), min(len(prompt_ids), len(ids)))
    labels = list(ids) if opts.train_on_inputs else [IGNORE_INDEX] * start + ids[start:]
    return ids[: opts.max_seq_length], labels[: opts.max_seq_length]


def _prompt_and_response(record: dict, opts: FormatOptions) -> tuple[str, str]:
    if opts.task == "summarization":
        source, target = summary_columns(set(record), opts.prompt_column, opts.response_column)
        return SUMMARIZATION_PROMPT.format(article=str(record[source])), str(record[target])
    if opts.task == "code-generation" and "prompt" in record and "completion" in record:
        return str(record["prompt"]), str(record["completion"])
    return completion_prompt(str(record["instruction"]), str(record.get("input") or "")), str(record["output"])


def _tokenize_pair(tokenizer, prompt: str, response: str, opts: FormatOptions) -> tuple[list[int], list[int]]:
    if opts.task == "summarization":
        # Cut the article, not the prompt's scaffolding, so the model always sees where the summary starts.
        head, _, tail = SUMMARIZATION_PROMPT.partition("{article}")
        article = prompt[len(head): len(prompt) - len(tail)]
        article_ids = tokenizer(article, add_special_tokens=False)["input_ids"][: opts.max_source_length]
        prompt_ids = (tokenizer(head)["input_ids"] + article_ids
                      + tokenizer(tail, add_special_tokens=False)["input_ids"])
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"][: opts.max_target_length]
    else:
        prompt_ids = tokenizer(prompt)["input_ids"]
        response_ids = tokenizer(response, add_special_tokens=False)["input_ids"]
    response_ids = response_ids + [tokenizer.eos_token_id]
    ids = (prompt_ids + response_ids)[: opts.max_seq_length]
    prompt_labels = prompt_ids if opts.train_on_inputs else [IGNORE_INDEX] * len(prompt_ids)
    labels = (prompt_labels + response_ids)[: opts.max_seq_length]
    return ids, labels


def pack_examples(examples: list[dict], max_seq_length: int) -> list[dict]:
    """Greedily pack tokenized examples into rows of at most max_seq_length tokens.

    Each row keeps per-example position ids, which makes attention stay within each example (transformers
    builds a block-diagonal mask from restarting positions), unlike concatenate-and-chunk packing.
    """
    rows: list[dict] = []
    current = {"input_ids": [], "labels": [], "position_ids": []}
    for ex in examples:
        if current["input_ids"] and len(current["input_ids"]) + len(ex["input_ids"]) > max_seq_length:
            rows.append(current)
            current = {"input_ids": [], "labels": [], "position_ids": []}
        current["input_ids"] += ex["input_ids"]
        # The first label of each example would be predicted from the previous example's last token.
        current["labels"] += [IGNORE_INDEX] + ex["labels"][1:]
        current["position_ids"] += list(range(len(ex["input_ids"])))
    if current["input_ids"]:
        rows.append(current)
    return rows
