"""Padding-free batches and a loss computed only where there is a label.

Every example of a batch goes into one row with restarting position ids, so no compute is spent on padding
(the largest waste on chat data of varied lengths) and attention stays within each example. The model then
projects to the 49152-word vocabulary only the positions that have a target (`logits_to_keep`): on chat data
with masked prompts that skips most of the largest matmul and most of the logits memory.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from finetune.formatting import IGNORE_INDEX
from finetune.lean_ops import head_loss


class PaddingFreeCollator:
    """Flattens a batch of {"input_ids", "labels"[, "position_ids"]} into one row.

    Returns input_ids and position_ids of shape (1, T), `logits_to_keep` (positions whose next token has a
    label), `labels` already aligned with those positions, for `kept_positions_loss`, and the example
    boundaries `cu_seq_lens_q` when `boundaries` is set (for a model switched to finetune.packed_attention: other
    models may not accept the key).
    """

    def __init__(self, boundaries: bool = False):
        self.boundaries = boundaries

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        ids: list[int] = []
        labels: list[int] = []
        positions: list[int] = []
        for f in features:
            ids += f["input_ids"]
            if "position_ids" in f:  # a packed row: labels at example starts are masked already
                positions += f["position_ids"]
                labels += f["labels"]
            else:
                positions += range(len(f["input_ids"]))
                labels += [IGNORE_INDEX] + list(f["labels"][1:])
        targets = torch.tensor(labels[1:] + [IGNORE_INDEX])
        keep = (targets != IGNORE_INDEX).nonzero().squeeze(1)
        batch = {
            "input_ids": torch.tensor([ids]),
            "position_ids": torch.tensor([positions]),
            "logits_to_keep": keep,
            "labels": targets[keep],
            # With a KV cache, transformers does not read packed sequences from position ids and would let
            # examples attend to each other.
            "use_cache": False,
        }
        if self.boundaries:
            starts = [i for i, p in enumerate(positions) if p == 0] + [len(positions)]
            batch["cu_seq_lens_q"] = torch.tensor(starts, dtype=torch.int32)
        return batch


# oneDNN's bf16 GEMMs run far slower at some ragged token counts: on 2 Zen 4 cores, x[T, 2048] @ W[2048, 8192] ran
# at 433 GFLOPS forward and 397 backward (grad-input) with T = 408, and at 324 and 236 with T = 407 (413 and 415
# slow too, 401, 403 and 409 not; every multiple of 8 from 400 to 512 fast; fp32 shows no such dip, AVX-512 or
# AVX2). A packed row of a bf16 or fp16 run is padded to the next multiple of 8 with a separate filler example that
# nothing attends to and no loss reads: 7 steps of the Llama-3.2-1B shape took 28.1-29.6 s instead of 31.9-32.0
# (2 Zen 4 cores), the ragged 407- and 413-token steps 17-31% less.
TOKEN_MULTIPLE = 8


def pad_packed_rows(decoder, precision: str, multiple: int | None = None):
    """Pad every packed row with example boundaries (`cu_seq_lens_q`: a model on finetune.packed_attention) that
    the decoder (the transformers model's inner `model`) receives in a bf16 or fp16 run to a multiple of `multiple`
    tokens (default TOKEN_MULTIPLE; 1: no padding), as a filler example of its own (position ids from 0, its own
    boundary). The real tokens' outputs, the kept positions and the loss are unchanged, and the Trainer's token
    count (taken before the forward) holds only real tokens. fp32 runs are left as they are (no dip to avoid).
    Returns the function that removes the hook."""
    multiple = multiple or TOKEN_MULTIPLE
    if precision == "fp32" or multiple == 1:
        return lambda: None

    def pad(module, args, kwargs):
        ids, positions, bounds = kwargs.get("input_ids"), kwargs.get("position_ids"), kwargs.get("cu_seq_lens_q")
        if args or ids is None or positions is None or bounds is None or ids.shape[0] != 1:
            # Only the rows our collator and preference forward build (their example boundaries go along): not
            # generation, whose logits come from the row's last position.
            return None
        filler = -ids.shape[1] % multiple
        if filler == 0:
            return None
        kwargs["input_ids"] = torch.cat([ids, ids.new_zeros(1, filler)], dim=1)
        kwargs["position_ids"] = torch.cat([positions, torch.arange(filler, dtype=positions.dtype,
                                                                    device=positions.device)[None]], dim=1)
        kwargs["cu_seq_lens_q"] = torch.cat([bounds, bounds[-1:] + filler])
        return args, kwargs

    return decoder.register_forward_pre_hook(pad, with_kwargs=True).remove


def kept_positions_loss(outputs, labels: torch.Tensor, num_items_in_batch=None, head=None,
                        head_dtype: torch.dtype | None = None) -> torch.Tensor:
    """Token-summed cross-entropy over the kept positions, divided by the label count of the whole
    accumulated batch (as transformers does), so gradient accumulation matches one large batch.

    With `head` (the output Linear that finetune.lean_ops.use_lean_ops switched to a pass-through),
    outputs.logits holds the last hidden states and the head is applied chunk by chunk inside the loss, its matmuls
    in `head_dtype` (the run's autocast dtype: the Trainer calls this outside autocast)."""
    if head is not None:
        loss = head_loss(outputs.logits, head.weight, labels, dtype=head_dtype)
    else:
        logits = outputs.logits.reshape(-1, outputs.logits.shape[-1]).float()
        loss = F.cross_entropy(logits, labels.to(logits.device), reduction="sum")
    denominator = num_items_in_batch if num_items_in_batch is not None else labels.numel()
    if torch.is_tensor(denominator):
        denominator = denominator.to(loss.device)
    return loss / denominator
