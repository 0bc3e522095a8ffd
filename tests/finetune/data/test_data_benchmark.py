"""benchmarks/data_pipeline.py: the generated input, the size parser, the table, and one tiny real run."""

import argparse
import json

import pytest

from benchmarks.data_pipeline import generate, main, parse_size, render


def test_parse_size():
    assert parse_size("100MB") == 100 << 20 and parse_size("1GB") == 1 << 30 and parse_size("1.5kb") == 1536
    with pytest.raises(argparse.ArgumentTypeError, match="must look like 100MB"):
        parse_size("100")


def test_generate_is_seeded_sized_and_mixed(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    lines = generate(a, 200_000, seed=1)
    generate(b, 200_000, seed=1)
    assert a.read_bytes() == b.read_bytes()
    assert 200_000 <= a.stat().st_size < 210_000
    rows = a.read_text().splitlines()
    assert len(rows) == lines
    parsed = [json.loads(r) for r in rows if r.endswith("}")]
    assert all("messages" in r for r in parsed)
    assert len({json.dumps(r) for r in parsed}) < len(parsed)  # exact duplicates are in there on purpose


def test_render_reports_rss_growth_stages_and_the_datatrove_ratio():
    run = {"input_bytes": 100 << 20, "records_read": 10, "seconds": 1.0, "records_per_s": 10.0, "mb_per_s": 100.0,
           "peak_rss_mb": 500.0, "rss_after_import_mb": 450.0, "records_written": 9, "records_rejected": 1,
           "duplicates_removed": {"exact": 1, "near": 0}, "accounting_ok": True, "workers": 2,
           "tree_peak_rss_mb": 700.0, "load_average": [1.5, 1, 1, 2.5, 1, 1],
           "stage_seconds": {"read": 0.5, "near_dedup": 1.5}}
    big = {**run, "input_bytes": 1 << 30, "peak_rss_mb": 505.0, "stage_seconds": {"read": 1.0, "near_dedup": 3.0},
           "datatrove": {"seconds": 8.0, "records_per_s": 5.0, "mb_per_s": 40.0, "tree_peak_rss_mb": 900.0,
                         "near_duplicates_removed": 3, "tasks": 2, "load_average": [2, 1, 1, 2, 1, 1]}}
    table = render({"machine": {"cpu_model": "cpu", "usable_cores": 2, "ram_gb": 8, "python": "3.11"},
                    "runs": [run, big]})
    assert " 100 MB |" in table and " 1024 MB |" in table and "1.5->2.5" in table
    assert "input x10.2 -> peak RSS +5 MB" in table
    cells = lambda name: next(line for line in table.splitlines() if f" {name} |" in line).split()  # noqa: E731
    assert cells("near_dedup") == ["|", "near_dedup", "|", "1.50", "|", "3.00", "|", "75%", "|"]
    assert ["2.00x", "|", "2.50x"] == cells("ours / datatrove")[7:10]
    # with CPU seconds the stage table shows those (a shared machine stretches wall time only)
    cpu = {"stage_cpu_seconds": {"read": 0.25, "near_dedup": 0.75}, "cpu_seconds": 1.2, "worker_peak_rss_mb": 90.0}
    table = render({"machine": {"cpu_model": "cpu", "usable_cores": 2, "ram_gb": 8, "python": "3.11"},
                    "runs": [{**run, **cpu}, {**big, **cpu, "worker_peak_rss_mb": 95.0}]})
    assert "CPU seconds per stage" in table and "100 MB CPU s" in table
    assert cells("near_dedup") == ["|", "near_dedup", "|", "0.75", "|", "0.75", "|", "75%", "|"]
    assert "peak RSS +5 MB (parent), +5 MB (a worker)" in table


def test_compare_datatrove_without_datatrove_says_how_to_install(monkeypatch, capsys):
    import benchmarks.data_pipeline as bench

    monkeypatch.setattr(bench, "_version", lambda dist: None)
    assert main(["--sizes", "1KB", "--compare-datatrove"]) == 2
    assert "pip install datatrove" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_real_run_saves_json_and_accounts_for_every_record(tmp_path, capsys):
    out = tmp_path / "result.json"
    assert main(["--sizes", "300KB", "--output", str(out)]) == 0
    report = json.loads(out.read_text())
    (run,) = report["runs"]
    assert run["accounting_ok"] and run["records_read"] == run["input_lines"]
    assert run["records_written"] + run["records_rejected"] == run["records_read"]
    assert run["peak_rss_mb"] >= run["rss_after_import_mb"] > 0
    assert run["tree_peak_rss_mb"] > 0 and len(run["load_average"]) == 6
    assert set(run["stage_seconds"]) >= {"read", "redact", "near_dedup", "write"}
    out = capsys.readouterr().out
    assert "records/s" in out and "seconds per stage" in out


@pytest.mark.slow
def test_datatrove_side_by_side_on_a_tiny_input(tmp_path, capsys):
    pytest.importorskip("datatrove")
    out = tmp_path / "result.json"
    assert main(["--sizes", "300KB", "--compare-datatrove", "--output", str(out)]) == 0
    (run,) = json.loads(out.read_text())["runs"]
    dt = run["datatrove"]
    # every line is written or removed, but for a broken line (0.1% of them), which its reader skips
    assert run["input_lines"] - 2 <= dt["documents_written"] + dt["near_duplicates_removed"] <= run["input_lines"]
    assert dt["near_duplicates_removed"] > 0 and "ours / datatrove" in capsys.readouterr().out
