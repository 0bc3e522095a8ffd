"""Turn a task and a list of messages into the prompt token ids a backend generates from."""

from __future__ import annotations

from finetune.chat_template import render_chat

SUMMARIZE_INSTRUCTION = "Summarize the following text in a few sentences.\n\n"


def resolve_task(task: str, tokenizer) -> str:
    """ "" means chat for a model with a chat template and completion for one without."""
    if task:
        return task
    return "chat" if getattr(tokenizer, "chat_template", None) else "completion"


def prompt_ids(tokenizer, messages: list[dict], task: str) -> list[int]:
    task = resolve_task(task, tokenizer)
    if task == "completion":
        # Plain continuation of the text, as NeuralChat's completion task did.
        text = "\n".join(m["content"] for m in messages if m["role"] != "system")
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    if task == "summarization":
        messages = [*messages[:-1], {"role": "user", "content": SUMMARIZE_INSTRUCTION + messages[-1]["content"]}]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"task={task!r} needs a chat template, and this model's tokenizer has none: use task='completion'"
        )
    # rendered as text, then tokenized as apply_chat_template does (no added specials): render_chat checks the
    # text for a dropped system message, so rendering it once serves both
    text = render_chat(tokenizer, messages, tokenize=False, add_generation_prompt=True)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


