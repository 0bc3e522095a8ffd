"""`python -m benchmarks serve --replicas`: servers behind nginx (deploy/nginx's config), tokens/s per replica count
beside the cores' limit. The suite runs it small (one replica of the tiny model, few tokens; tests/test_replicas.py
runs three); the measured figures come from the command.

Run: PYTHONPATH=. pytest -q -m "" tests/benchmarks/test_serve_replicas.py
"""

from __future__ import annotations

import json

import pytest

from benchmarks import serve_load


def test_replicas_flags_are_bounded():
    for argv in (["--replicas", "0"], ["--replicas", "1,9"], ["--replicas", "2", "--url", "http://127.0.0.1:1"],
                 ["--replicas", "2", "--adapters", "4"], ["--replicas", "2", "--streams", "0"]):
        with pytest.raises(SystemExit):
            serve_load.main(argv)


def test_table_puts_the_cores_limit_beside_the_speedup():
    level = {"requests": 4, "errors": 0, "latency_p50_s": 1.0, "latency_p99_s": 2.0, "ttft_p50_s": 0.1}
    rows = [{"replicas": n, "threads_per_replica": 1, "tokens_per_s": tps, **level}
            for n, tps in ((1, 10.0), (2, 18.0), (3, 17.0))]
    serve_load.add_scaling(rows, cores=2)
    assert [(r["speedup"], r["scaling_limit"]) for r in rows] == [(1.0, 1), (1.8, 2), (1.7, 2)]
    section = {"cores": 2, "streams": 6, "postgres_log": True, "levels": rows}
    table = serve_load.render_replicas(section)
    assert "6 streams, 2 cores, every conversation logged to one PostgreSQL" in table
    assert "| 3 | 1 | 4 | 0 | 17.0 | 1.7 | 2 | 1.0 | 2.0 | 0.1 |" in table


@pytest.mark.integration
@pytest.mark.slow
def test_replicas_behind_nginx_report_tokens_per_second(tiny_model_dir, tmp_path, capsys):
    from benchmarks import cluster
    from tests.require_backends import skip_missing_program

    try:
        cluster.nginx_binary()
    except cluster.MissingBinary as err:
        skip_missing_program("nginx", str(err))
    code = serve_load.main(["--model", str(tiny_model_dir), "--replicas", "1", "--streams", "2", "--requests", "2",
                            "--max-tokens", "4", "--threads", "1", "--output-dir", str(tmp_path)])
    assert code == 0
    (saved,) = tmp_path.glob("serve_replicas-torch-*.json")
    report = json.loads(saved.read_text())
    levels = report["replicas"]["levels"]
    assert [r["replicas"] for r in levels] == [1] and report["replicas"]["cores"] >= 1
    assert levels[0]["errors"] == 0 and levels[0]["requests"] == 2 and levels[0]["tokens_per_s"] > 0
    assert levels[0]["scaling_limit"] == 1 and levels[0]["speedup"] == 1.0
    assert report["hardware"]["cpu_model"] and "| 1 | 1 | 2 | 0 |" in capsys.readouterr().out
