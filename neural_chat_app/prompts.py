"""Turn a task and a list of messages into the prompt token ids a backend generates from."""

from __future__ import annotations

from finetune.chat_template import generation_prompt
from finetune.formatting import completion_prompt

SUMMARIZE_INSTRUCTION = "Summarize the following text in a few sentences.\n\n"


def resolve_task(task: str, tokenizer) -> str:
    """ "" means chat for a model with a chat template and text continuation for one without."""
    if task:
        return task
    return "chat" if getattr(tokenizer, "chat_template", None) else "text"


def prompt_ids(tokenizer, messages: list[dict], task: str, tools: list[dict] | None = None,
               thinking: bool | None = None) -> list[int]:
    """`tools` (OpenAI's function definitions) go to the chat template, for the chat task; `thinking` switches a
    thinking model's reasoning (None: its default; refused where the model cannot follow it)."""
    task = resolve_task(task, tokenizer)
    has_template = bool(getattr(tokenizer, "chat_template", None))
    if task == "text":
        text = "\n".join(m["content"] for m in messages if m["role"] != "system")
        return tokenizer(text, add_special_tokens=True)["input_ids"]
    if task == "completion" and not has_template:
        # NeuralChat's completion task wrapped the query in an instruction prompt: finetune's completion format,
        # so a base model tuned with task=completion is asked the way it learned
        return tokenizer(completion_prompt(messages[-1]["content"]), add_special_tokens=True)["input_ids"]
    if task == "completion":
        # An instruct model answers an instruction in its own chat format; as plain text it ended at once (the
        # embedded SmolLM2 returned an empty string). One turn: the query, after the system message if any.
        messages = [*[m for m in messages if m["role"] == "system"][:1], messages[-1]]
    if task == "summarization":
        messages = [*messages[:-1], {"role": "user", "content": SUMMARIZE_INSTRUCTION + messages[-1]["content"]}]
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(
            f"task={task!r} needs a chat template, and this model's tokenizer has none: use task='completion'"
        )
    # rendered as text, then tokenized as apply_chat_template does (no added specials): render_chat checks the
    # text for a dropped system message, so rendering it once serves both
    from neural_chat_app.reasoning import check_thinking

    check_thinking(tokenizer, thinking)
    extra = {"tools": tools} if tools else {}
    text = generation_prompt(tokenizer, messages, thinking, **extra)
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


