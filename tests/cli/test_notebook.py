"""Notebooks: what archc's objects show as the last line of a cell, and the quick-start
notebook run from top to bottom by a real Jupyter kernel (nbclient)."""

from __future__ import annotations

import re
from pathlib import Path

import archc
from archc.analysis import analyse

ROOT = Path(__file__).resolve().parents[2]
NOTEBOOK = ROOT / "docs" / "notebooks" / "quickstart.ipynb"


def test_a_graph_shows_its_totals_and_diagram():
    graph = archc.load(ROOT / "specs" / "resnet18.yaml")
    shown = graph._repr_html_()
    assert "<b>resnet18</b>: 70 layers, 11,689,512 parameters, 1.81G MACs" in shown
    assert shown.count('class="node"') == 70  # every layer drawn
    large = archc.load(ROOT / "specs" / "resnet50.yaml")._repr_html_()
    assert "top-level blocks collapsed" in large and large.count('class="node"') < 30


def test_an_analysis_shows_the_summary_table():
    report = analyse(archc.load(ROOT / "specs" / "lenet5.yaml"))
    shown = report._repr_html_()
    assert "61,706 parameters" in shown
    cells = re.findall(r"<tr><td[^>]*>([^<]*)</td><td>([^<]*)</td>", shown)
    assert cells[0] == ("c1", "conv2d") and len(cells) == 12  # the summary's rows
    assert "<td><b>61,706</b></td>" in shown  # and its total


def test_a_model_and_a_history_show_themselves():
    from runtime.train import data
    from runtime.train.loop import TrainConfig, fit

    model = archc.compile(archc.load(ROOT / "specs" / "lenet5.yaml"), backend="cpu", seed=0)
    shown = model._repr_html_()
    assert "<th>backend</th><td>cpu</td>" in shown and "<td>61,706</td>" in shown
    assert "<th>mode</th><td>inference</td>" in shown
    history = fit(model, data.load("digits", (1, 32, 32), seed=0), TrainConfig(epochs=1),
                  report=lambda line: None)
    shown = history._repr_html_()
    assert shown.startswith("<div") and "1 epoch;" in shown and "<svg" in shown
    assert [ax.get_title() for ax in history.plot().axes][0] == "Loss"


def test_the_quickstart_notebook_runs(tmp_path):
    import nbclient  # the test extras install them, with ipykernel
    import nbformat

    notebook = nbformat.read(NOTEBOOK, as_version=4)
    assert all(not cell.get("outputs") for cell in notebook.cells if cell.cell_type == "code"), \
        "the notebook is stored without outputs"
    client = nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(NOTEBOOK.parent)}})
    client.execute()
    outputs = [cell.outputs for cell in notebook.cells if cell.cell_type == "code"]
    html = [o["data"]["text/html"] for out in outputs for o in out
            if o.get("output_type") == "execute_result" and "text/html" in o.get("data", {})]
    assert any("<b>lenet5</b>: 13 layers" in h for h in html)  # the graph
    assert any("<b>lenet5</b>, compiled" in h for h in html)  # the model
    assert any("epochs; the last" in h and "<svg" in h for h in html)  # the history
    shown = [o for out in outputs for o in out if o.get("output_type") == "execute_result"]
    assert any("image/svg+xml" in o["data"] for o in shown)  # the diagram (graphviz)
    assert any("image/png" in o["data"] for o in shown)  # the matplotlib figure
    printed = "".join(o.get("text", "") for out in outputs for o in out)
    assert "epoch 4/4" in printed
