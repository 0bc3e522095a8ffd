"""What happens to the logits between the model and the sampled token, for the torch backend, in one chain.

The chain is ours, not generate()'s: generate() is called with its own processors neutral, so the order is
fixed and known (the same reason the schema mask comes before top-k/top-p: a warper may keep only tokens the
grammar forbids):
  raw logits -> [log-probabilities recorded] -> repetition penalty -> presence/frequency penalties -> logit bias
  -> JSON-schema mask -> temperature -> top-k -> top-p -> sample (or argmax)
Log-probabilities are those of the raw model output, before penalties and temperature, as vLLM reports them by
default: a client scoring text (lm-evaluation-harness) gets the model's own distribution.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from neural_chat_app.config import GenerationConfig


@dataclass
class TokenLogprob:
    """One token of a reply (or of an echoed prompt): its log-probability and the most likely alternatives."""

    token_id: int
    logprob: float | None  # None for a prompt's first token: nothing comes before it
    top: list[tuple[int, float]] = field(default_factory=list)  # (token id, log-probability), best first
    offset: int = 0  # characters of the text before this token's own


class LogprobRecorder:
    """A logits processor that keeps each step's log-probabilities: the top `k` and the full row, which the
    streamer reads once it knows the chosen token. First in the chain, so it sees the raw logits."""

    def __init__(self, top: int):
        self.top = top
        self.steps: list[torch.Tensor] = []  # log-probabilities of the step's last position, float32

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        self.steps.append(torch.log_softmax(scores[0].float(), dim=-1))
        return scores

    def entry(self, step: int, token_id: int) -> TokenLogprob:
        row = self.steps[step]
        self.steps[step] = None  # the row is 4 bytes x vocabulary: keep only what was asked for
        return token_entry(row, token_id, self.top)


def token_entry(row: torch.Tensor, token_id: int, top: int) -> TokenLogprob:
    best = []
    if top:
        values, ids = torch.topk(row, top)
        best = list(zip(ids.tolist(), values.tolist()))
    return TokenLogprob(token_id, float(row[token_id]), best)


class PresenceFrequencyPenalty:
    """OpenAI's penalties on the tokens of the reply so far (not the prompt's):
    logit -= count * frequency_penalty + (count > 0) * presence_penalty."""

    def __init__(self, prompt_len: int, presence: float, frequency: float):
        self.prompt_len, self.presence, self.frequency = prompt_len, presence, frequency

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.prompt_len :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores)
        counts.scatter_add_(1, generated, torch.ones_like(generated, dtype=scores.dtype))
        return scores - counts * self.frequency - (counts > 0).to(scores.dtype) * self.presence


class LogitBias:
    """OpenAI's logit_bias: a fixed number added to given tokens' logits (-100 bans a token, +100 forces it)."""

    def __init__(self, bias: dict[int, float], vocab_size: int):
        self.ids = torch.tensor(list(bias), dtype=torch.long)
        self.values = torch.tensor(list(bias.values()), dtype=torch.float32)
        if int(self.ids.max()) >= vocab_size:
            raise ValueError(f"logit_bias names token {int(self.ids.max())}; this model has {vocab_size} tokens")

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.clone()
        scores[:, self.ids] += self.values.to(scores.dtype)
        return scores


def logits_chain(config: GenerationConfig, prompt_len: int, vocab_size: int, schema_processor=None,
                 recorder: LogprobRecorder | None = None) -> list:
    """The processors of one generation, in the order the module docstring gives."""
    from transformers import (
        RepetitionPenaltyLogitsProcessor,
        TemperatureLogitsWarper,
        TopKLogitsWarper,
        TopPLogitsWarper,
    )

    chain: list = [recorder] if recorder is not None else []
    if config.repetition_penalty != 1.0:
        chain.append(RepetitionPenaltyLogitsProcessor(config.repetition_penalty))
    if config.presence_penalty or config.frequency_penalty:
        chain.append(PresenceFrequencyPenalty(prompt_len, config.presence_penalty, config.frequency_penalty))
    if config.logit_bias:
        chain.append(LogitBias(config.logit_bias, vocab_size))
    if schema_processor is not None:
        chain.append(schema_processor)
    if not config.greedy:
        if config.temperature != 1.0:
            chain.append(TemperatureLogitsWarper(config.temperature))
        if config.top_k > 0:
            chain.append(TopKLogitsWarper(config.top_k))
        if config.top_p < 1.0:
            chain.append(TopPLogitsWarper(config.top_p))
    return chain


def prompt_logprobs(model, ids: list[int], top: int) -> list[TokenLogprob]:
    """Teacher-forced log-probabilities of every token of `ids` (the first has none): what `echo` returns."""
    entries = [TokenLogprob(ids[0], None)]
    if len(ids) < 2:
        return entries
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0, :-1].float()
    rows = torch.log_softmax(logits, dim=-1)
    entries += [token_entry(rows[i], ids[i + 1], top) for i in range(len(ids) - 1)]
    return entries


def finite(value: float) -> float:
    """JSON has no -inf: a banned token's log-probability is reported as the most negative float."""
    return value if math.isfinite(value) else -9999.0
