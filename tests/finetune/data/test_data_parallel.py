"""Worker processes over chunks of the input (finetune/data/chunks.py): the output is byte for byte that of one
process, duplicates are found across chunk boundaries, and every stage is timed.

Run: OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python -m pytest -q tests/finetune/data/test_data_parallel.py
"""

import json
import shutil

import pytest

from finetune.data import DataPipelineConfig, prepare_dataset
from finetune.data import chunks as chunks_module
from finetune.data.timing import STAGES
from tests.finetune.data._data_helpers import make_chatlog, read_jsonl, write_preferences, write_tricky

OUTPUTS = ("train", "validation", "test")


@pytest.fixture
def small_chunks(monkeypatch):
    """~40 records per JSON Lines chunk and 7 per chunk of a JSON array or chat log, so a small input has many."""
    monkeypatch.setattr(chunks_module, "CHUNK_BYTES", 30_000)
    monkeypatch.setattr(chunks_module, "CHUNK_RECORDS", 7)


@pytest.fixture
def mixed_input(tmp_path, fixtures_dir):
    """A folder with every source kind: the tricky JSON Lines (duplicates far apart and near, PII, every reject),
    the fixtures (JSON arrays, CRLF with BOM, bad records) and a chat log whose sessions repeat each other."""
    logs = tmp_path / "logs"
    shutil.copytree(fixtures_dir, logs)
    write_tricky(logs / "tricky.jsonl", 1500, seed=3)
    sessions = {f"s{i}": [("user", f"Is office {i % 12} open on Sunday, and where is it?", None),
                          ("assistant", f"No, office {i % 12} opens Monday to Friday; mail help@example.org.", 1)]
                for i in range(30)}
    make_chatlog(logs / "chat.db", sessions)
    return logs


def run(paths, out, workers, **sections):
    sections.setdefault("export", {}).setdefault("min_conversations", 0)
    sections["export"]["output_dir"] = str(out)
    return prepare_dataset(DataPipelineConfig.from_dict({"ingest": {"paths": [str(p) for p in paths]},
                                                         "workers": workers, **sections}))


def outputs(result) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in result.output_dir.iterdir() if p.suffix in (".jsonl", ".json")}
    assert "rejects.jsonl" in files and "stats.json" in files
    return files


@pytest.mark.parametrize("sections", [
    {},
    {"split": {"group_by": "tree"}, "export": {"multi_turn": "per_turn", "format_type": "alpaca"}},
    {"dedup": {"exact": False, "threshold": 0.5}, "export": {"format_type": "chatml", "keep_metadata": False}},
], ids=["defaults", "group_by-per_turn-alpaca", "near_only-chatml"])
def test_one_two_and_three_workers_write_the_same_bytes(mixed_input, tmp_path, small_chunks, sections):
    one = run([mixed_input], tmp_path / "w1", 1, **json.loads(json.dumps(sections)))
    expected = outputs(one)
    assert one.stats["records_read"] > 1500 and one.stats["accounting_ok"]
    assert sum(one.stats["duplicates_removed"].values()) > 100 and sum(one.stats["redactions"].values()) > 100
    for workers in (2, 3):
        many = run([mixed_input], tmp_path / f"w{workers}", workers, **json.loads(json.dumps(sections)))
        assert outputs(many) == expected, f"{workers} workers wrote other bytes than 1"
        assert many.stats == one.stats and many.timings["workers"] == workers and one.timings["workers"] == 0


@pytest.mark.parametrize("export", [{}, {"preference_task": "kto", "keep_metadata": False}], ids=["dpo", "kto"])
def test_preference_data_is_the_same_bytes_for_one_two_and_three_workers(tmp_path, small_chunks, export):
    """Preference records: the parent's layout check (the first record's kind and style decide), dedup on whole
    examples across chunks and the split by prompt must not depend on how the chunks were shared out."""
    src = write_preferences(tmp_path / "prefs.jsonl", 1500, seed=2)
    sections = {"export": {"format_type": "preference", **export}}
    one = run([src], tmp_path / "w1", 1, **json.loads(json.dumps(sections)))
    expected = outputs(one)
    rejected = one.stats["rejected_by_reason"]
    assert one.stats["records_read"] == 1500 and one.stats["accounting_ok"]
    assert rejected["dedup.exact"] > 20 and rejected["dedup.near"] > 20 and rejected["export.mixed_style"] > 5
    assert sum(one.stats["redactions"].values()) > 50
    for workers in (2, 3):
        many = run([src], tmp_path / f"w{workers}", workers, **json.loads(json.dumps(sections)))
        assert outputs(many) == expected, f"{workers} workers wrote other bytes than 1"
        assert many.stats == one.stats and many.timings["workers"] == workers


def test_duplicates_are_found_across_chunk_boundaries(tmp_path, small_chunks):
    src = write_tricky(tmp_path / "in.jsonl", 1500, seed=4)
    result = run([src], tmp_path / "out", 2)
    chunk_of = {}  # line -> chunk, as plan_chunks cuts the file
    for chunk in chunks_module.plan_chunks([src], [0.0]):
        lines = chunk.first_line + src.read_bytes()[chunk.offset: chunk.offset + chunk.length].count(b"\n")
        chunk_of.update({line: chunk.index for line in range(chunk.first_line, lines + 1)})
    assert len(set(chunk_of.values())) > 20
    dups = [r for r in read_jsonl(result.rejects) if r["reason"].startswith("dedup.")]
    across = [r for r in dups if chunk_of[int(r["origin"].rsplit(":", 1)[1])] !=
              chunk_of[int(r["detail"].rsplit(":", 1)[1])]]
    assert {r["reason"] for r in across} == {"dedup.exact", "dedup.near"}
    # the duplicate's record is written as it was read, from its own line
    first = across[0]
    line = int(first["origin"].rsplit(":", 1)[1])
    assert first["record"] == json.loads(src.read_bytes().split(b"\n")[line - 1])


def test_every_stage_is_timed(tmp_path, small_chunks):
    src = write_tricky(tmp_path / "in.jsonl", 400, seed=5)
    result = run([src], tmp_path / "out", 2)
    seconds = result.timings["stages"]
    assert list(seconds)[: len(STAGES)] == list(STAGES)
    busy = ("read", "normalize", "redact", "filters", "exact_dedup", "near_dedup", "write")
    assert all(seconds[s] > 0 for s in busy)
    assert seconds["tokens"] == 0 and result.timings["wall"] > 0
    cpu = result.timings["cpu"]  # CPU seconds over the same laps: the workers' own and this process's
    assert list(cpu)[: len(STAGES)] == list(STAGES) and cpu["tokens"] == 0
    assert sum(cpu[s] for s in busy) > 0 and all(cpu[s] >= 0 for s in STAGES)


def test_workers_default_to_the_cores_and_refuse_zero():
    import os

    from finetune.data import ConfigError

    assert DataPipelineConfig().worker_count == len(os.sched_getaffinity(0))
    assert DataPipelineConfig.from_dict({}, ["workers=1"]).worker_count == 1
    with pytest.raises(ConfigError, match="workers must be >= 1"):
        DataPipelineConfig.from_dict({"workers": 0})


def test_a_small_input_runs_in_this_process(tmp_path, monkeypatch):
    """One chunk: starting workers would cost more than it saves."""
    def no_pool(*args, **kwargs):
        raise AssertionError("a pool was started for a one-chunk input")

    monkeypatch.setattr(chunks_module, "ProcessPoolExecutor", no_pool)
    src = write_tricky(tmp_path / "in.jsonl", 50)
    result = run([src], tmp_path / "out", 4)
    assert result.stats["accounting_ok"] and result.timings["workers"] == 0


@pytest.mark.slow
def test_token_filter_in_workers_matches_one_process(tmp_path, small_chunks, tiny_model_dir):
    src = write_tricky(tmp_path / "in.jsonl", 300, seed=6)
    sections = {"filter": {"tokenizer": str(tiny_model_dir), "max_tokens": 400}}
    one = run([src], tmp_path / "w1", 1, **json.loads(json.dumps(sections)))
    two = run([src], tmp_path / "w2", 2, **json.loads(json.dumps(sections)))
    assert outputs(two) == outputs(one)
    assert one.stats["rejected_by_reason"].get("filter.max_tokens", 0) > 0
    assert one.stats["length_histogram"]["unit"] == "tokens" and one.timings["stages"]["tokens"] > 0
