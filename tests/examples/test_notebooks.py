"""Execute the example notebooks top to bottom (nbclient), as a user would in Jupyter.

pytest tests/examples/test_notebooks.py   (several minutes: they fine-tune and quantize the embedded model)
"""

import json
import shutil
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NOTEBOOKS = Path(__file__).resolve().parents[2] / "examples" / "notebooks"
# The smallest settings that still run every cell (papermill's convention: the cell tagged "parameters"). The
# notebook's own values train for minutes; the test checks that every cell runs, not how well the model learns.
SMALLEST = {"single_node_finetuning_on_spr.ipynb": "STEPS = 3\nSHORT_STEPS = 2\nEVAL_EXAMPLES = 2\nNEW_TOKENS = 8\n"}


@pytest.mark.parametrize("name", ["build_chatbot_on_spr.ipynb", "single_node_finetuning_on_spr.ipynb"])
def test_notebook_runs_top_to_bottom(name, tmp_path, monkeypatch):
    import nbformat
    from nbclient import NotebookClient

    from tests.conftest import cores_per_worker

    # The kernel is the only busy process of this worker while the test waits on it: give it the worker's cores.
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores_per_worker()))
    nb = nbformat.read(NOTEBOOKS / name, as_version=4)
    parameters = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(parameters) == (1 if name in SMALLEST else 0)
    for cell in parameters:
        names = {line.split("=")[0].strip() for line in cell.source.splitlines() if "=" in line}
        assert names == {line.split("=")[0].strip() for line in SMALLEST[name].splitlines()}, names
        cell.source = SMALLEST[name]
    runs = NOTEBOOKS.parents[1] / "runs" / "notebook"  # where the fine-tuning notebook writes, as a user would see
    had_runs = runs.exists()
    try:
        client = NotebookClient(nb, timeout=1200, kernel_name="python3",
                                resources={"metadata": {"path": str(NOTEBOOKS)}})
        client.execute()
    finally:
        if not had_runs:  # about 1 GB of models: not left behind in the checkout (CI's disk is not large)
            shutil.rmtree(runs, ignore_errors=True)
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    assert any(o.get("output_type") == "stream" and o.get("text", "").strip() for o in outputs)


@pytest.mark.parametrize("name", ["build_chatbot_on_spr.ipynb", "single_node_finetuning_on_spr.ipynb"])
def test_committed_notebooks_have_no_outputs(name):
    nb = json.loads((NOTEBOOKS / name).read_text())
    for cell in nb["cells"]:
        assert not cell.get("outputs") and cell.get("execution_count") is None
