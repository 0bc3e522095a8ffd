"""Trainer callbacks: useful tokens/s in the logs and on the progress bar, and the loss history."""

from __future__ import annotations

import time

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


class ThroughputCallback(TrainerCallback):
    """Adds `tokens_per_s` (input tokens; batches carry no padding, so all are useful) to every training log,
    also in `state.log_history`, which checkpoints keep and a resumed run restores."""

    def __init__(self):
        self._t0 = self._tokens0 = None
        self._last_t = self._last_tokens = None
        self.tokens_per_s: float | None = None

    def on_train_begin(self, args, state, control, **kwargs):
        self._t0 = self._last_t = time.perf_counter()
        self._tokens0 = self._last_tokens = state.num_input_tokens_seen

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs is None or self._last_t is None:
            return
        now, tokens = time.perf_counter(), state.num_input_tokens_seen
        if "loss" in logs and now > self._last_t:
            logs["tokens_per_s"] = round((tokens - self._last_tokens) / (now - self._last_t), 1)
            self._last_t, self._last_tokens = now, tokens
            if state.log_history and state.log_history[-1].get("step") == state.global_step:
                state.log_history[-1]["tokens_per_s"] = logs["tokens_per_s"]
        if now > self._t0 and tokens > self._tokens0:
            self.tokens_per_s = (tokens - self._tokens0) / (now - self._t0)


class BarProgressCallback(ProgressCallback):
    """The stock progress bar, with loss and tokens/s shown on the bar instead of a dict printed per log."""

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or logs is None:
            return super().on_log(args, state, control, logs=logs, **kwargs)
        shown = {k: logs[k] for k in ("loss", "eval_loss", "tokens_per_s", "learning_rate") if k in logs}
        if shown:
            self.training_bar.set_postfix({k: f"{v:.3g}" for k, v in shown.items()}, refresh=True)
