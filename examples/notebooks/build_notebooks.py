"""Writes the two example notebooks (outputs stripped). Edit the cells here, then: python build_notebooks.py

- build_chatbot_on_spr.ipynb: a chatbot on the embedded model in bf16 (MixedPrecisionConfig), streaming, chat.
- single_node_finetuning_on_spr.ipynb: fine-tune on Alpaca, summarization and code-generation files; evaluate;
  quantize to INT8 for OpenVINO; serve the result.

They run top to bottom on the embedded model in minutes; tests/examples/test_notebooks.py executes them.
"""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

SETUP = """import os, sys
from pathlib import Path
# Run from the repository (or any folder once the package is installed with pip install -e .)
REPO = Path.cwd()
while not (REPO / "setup.cfg").is_file() and REPO != REPO.parent:
    REPO = REPO.parent
sys.path.insert(0, str(REPO))
os.chdir(REPO)
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")"""

CHATBOT = [
    new_markdown_cell("""# Build a chatbot on a Xeon CPU (bf16 on AMX)

NeuralChat's *build_chatbot_on_spr* notebook, rebuilt on this project. The code is NeuralChat's with only the
import lines changed. The model is the embedded SmolLM2-135M-Instruct (no download), run in bf16: stock PyTorch
uses the CPU's AMX tiles through oneDNN, with no extension to install."""),
    new_code_cell(SETUP),
    new_markdown_cell("## What this CPU can do\n`compute_summary` reads the CPU flags and says what runs here and "
                      "why: AMX and AVX512-BF16 make bf16 the fast path; without them the chatbot runs in fp32."),
    new_code_cell("""from finetune.hardware import compute_summary, configure_threads
threads = configure_threads()
print(compute_summary("cpu", threads=threads))"""),
    new_markdown_cell("## Build the chatbot\n`MixedPrecisionConfig()` asks for bf16."),
    new_code_cell("""from neural_chat_app import build_chatbot, PipelineConfig, MixedPrecisionConfig, GenerationConfig
chatbot = build_chatbot(PipelineConfig(optimization_config=MixedPrecisionConfig()))
print(chatbot.predict(query="What is the capital of France?"))"""),
    new_markdown_cell("## Stream a reply\n`predict_stream` returns a generator of text chunks and the retrieval "
                      "sources (none here). `return_stats` appends latency and throughput."),
    new_code_cell("""chunks, links = chatbot.predict_stream(
    "Tell me one fact about Intel Xeon processors.",
    GenerationConfig(max_new_tokens=48, do_sample=False, return_stats=True))
for chunk in chunks:
    print(chunk, end="", flush=True)"""),
    new_markdown_cell("## A conversation\n`chat` keeps the history of each conversation id."),
    new_code_cell("""cfg = GenerationConfig(max_new_tokens=40, do_sample=False)
print(chatbot.chat("My name is Ada and I like hiking.", cfg, conversation_id="demo"))
reply = chatbot.chat("What is my name?", cfg, conversation_id="demo")
print(reply)
assert reply.strip(), "the chatbot answered nothing\""""),
    new_markdown_cell("""## Serve it
The same model behind an OpenAI-compatible API and a web page (run in a terminal):

```bash
.venv/bin/python -m neural_chat_app serve --config configs/server.yaml
```"""),
    new_code_cell("chatbot.close()"),
]

PARAMETERS = """STEPS = 24          # optimizer steps of the Alpaca run
SHORT_STEPS = 16    # of the summarization and code-generation runs
EVAL_EXAMPLES = 12  # held-out questions in the base-vs-tuned comparison
NEW_TOKENS = 40     # tokens generated per answer"""

FINETUNE = [
    new_markdown_cell("""# Single-node fine-tuning on a Xeon CPU

NeuralChat's *single_node_finetuning_on_spr* notebook, rebuilt on this project: fine-tune the embedded
SmolLM2-135M-Instruct with bf16 LoRA on an Alpaca-format file, a summarization set and a code-generation set, look
at the loss curves, evaluate the tuned model against the base, quantize it to INT8 for OpenVINO and chat with it.
The runs are short (a few dozen steps) so the notebook finishes in minutes on 2 cores; raise `max_steps` or use
`num_train_epochs` for real training."""),
    new_code_cell(SETUP),
    new_markdown_cell("## Settings\nRaise them for real training (or use `num_train_epochs`). The test suite runs "
                      "this notebook with the smallest values that still execute every cell."),
    new_code_cell(PARAMETERS, metadata={"tags": ["parameters"]}),
    new_code_cell("""from finetune import (ModelArguments, DataArguments, FinetuningArguments, TrainingArguments,
                      TextGenerationFinetuningConfig, finetune_model)

# Only the Alpaca run is evaluated and quantized below, so only it writes a merged model (540 MB in fp32), and
# no run compares base and tuned generations by itself (generation_eval): the evaluation cell below does, once.
def run(task, train_file, output_dir, steps=STEPS, merged=False):
    return finetune_model(TextGenerationFinetuningConfig(
        model_args=ModelArguments(model_name_or_path="smollm2-135m-instruct"),
        data_args=DataArguments(train_file=train_file, validation_split_percentage=10, max_seq_length=256),
        training_args=TrainingArguments(output_dir=output_dir, do_train=True, do_eval=True, max_steps=steps,
                                        per_device_train_batch_size=4, learning_rate=5e-4, logging_steps=2,
                                        save_strategy="no", overwrite_output_dir=True, bf16=True,
                                        disable_tqdm=True, report_to="none"),
        finetune_args=FinetuningArguments(task=task, lora_all_linear=True, lora_rank=16, lora_alpha=32,
                                          save_merged_model=merged, generation_eval=False)))"""),
    new_markdown_cell("## 1. Alpaca format (`instruction` / `input` / `output`), task `completion`"),
    new_code_cell("""alpaca = run("completion", "examples/data/alpaca_aurora.json", "runs/notebook/alpaca", merged=True)
print(alpaca.metrics)"""),
    new_markdown_cell("## 2. Summarization (`article` / `highlights`)"),
    new_code_cell("""summaries = run("summarization", "examples/data/summaries.jsonl", "runs/notebook/summaries",
                steps=SHORT_STEPS)
print(summaries.metrics)"""),
    new_markdown_cell("## 3. Code generation (`prompt` / `completion`)"),
    new_code_cell("""code = run("code-generation", "examples/data/code_pairs.jsonl", "runs/notebook/code",
           steps=SHORT_STEPS)
print(code.metrics)"""),
    new_markdown_cell("## Loss curves\nEvery run writes `training_metadata.json` with its loss history."),
    new_code_cell("""import json
import matplotlib.pyplot as plt
fig, ax = plt.subplots(figsize=(7, 3))
for name, result in [("alpaca", alpaca), ("summaries", summaries), ("code", code)]:
    history = json.loads((result.output_dir / "training_metadata.json").read_text())["history"]
    steps = [h["step"] for h in history if "loss" in h]
    ax.plot(steps, [h["loss"] for h in history if "loss" in h], label=name)
ax.set_xlabel("step")
ax.set_ylabel("training loss")
ax.legend()
plt.show()
for name, result in [("alpaca", alpaca), ("summaries", summaries), ("code", code)]:
    m = result.metrics
    print(f"{name}: held-out loss {m['eval_loss_before']:.3f} (base) -> {m['eval_loss']:.3f} (tuned)")"""),
    new_markdown_cell("## Evaluate: base vs tuned on held-out questions\nThe same greedy generation settings for "
                      "both models; BLEU, chrF, ROUGE and exact match, plus a Markdown report with plots."),
    new_code_cell("""from finetune.evaluate import EvalConfig, evaluate_models, summary_table
results = evaluate_models(["smollm2-135m-instruct", str(alpaca.output_dir)],
                          EvalConfig(task="completion", data="examples/data/alpaca_aurora.json",
                                     max_examples=EVAL_EXAMPLES, max_new_tokens=NEW_TOKENS, labels=["base", "tuned"]))
print(summary_table(results))"""),
    new_markdown_cell("## Quantize to INT8 for OpenVINO\nWeights compressed by NNCF; `quantization.json` records "
                      "the size and the measured quality against the source."),
    new_code_cell("""from quantize import quantize_model
artifact = quantize_model(model=str(alpaca.output_dir), backend="openvino", scheme="rtn", bits=8,
                          output_dir="runs/notebook/quantized", num_eval_prompts=2, eval_new_tokens=8)
print(json.dumps(json.loads((artifact / "quantization.json").read_text())["quality"], indent=1))"""),
    new_markdown_cell("## Chat with the quantized model"),
    new_code_cell("""from neural_chat_app import build_chatbot, PipelineConfig, GenerationConfig
bot = build_chatbot(PipelineConfig(model_name_or_path=str(artifact), backend="openvino"))
print(bot.predict("How heavy is the Aurora X2?", GenerationConfig(max_new_tokens=NEW_TOKENS, do_sample=False,
                                                                  task="completion")))
bot.close()"""),
]


def write(name: str, cells: list) -> None:
    nb = new_notebook(cells=cells, metadata={"kernelspec": {"name": "python3", "display_name": "Python 3",
                                                            "language": "python"}})
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    write("build_chatbot_on_spr.ipynb", CHATBOT)
    write("single_node_finetuning_on_spr.ipynb", FINETUNE)
    print("wrote", ", ".join(sorted(p.name for p in HERE.glob("*.ipynb"))))
