"""`archc report`: the self-contained HTML page, its data (the same analysis `archc summary`
prints), and the page itself in a real headless Chromium."""

from __future__ import annotations

import base64
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import archc
from archc.analysis import analyse, get_device
from archc.cli import main
from archc.layers import fmt_shape
from archc.page import OPEN_LIMIT, report_page

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "specs"


def page_json(text: str) -> dict:
    raw = re.search(r'<script type="application/json" id="archc-data">(.*?)</script>', text, re.S)
    return json.loads(raw.group(1))


def test_report_holds_what_summary_prints(tmp_path, capsys):
    out = tmp_path / "r.html"
    assert main(["report", str(SPECS / "resnet18.yaml"), "--batch", "4", "-o", str(out)]) == 0
    assert f"wrote {out} (" in capsys.readouterr().out
    data = page_json(out.read_text())
    assert main(["summary", str(SPECS / "resnet18.yaml"), "--batch", "4", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert data["totals"] == summary["totals"] and data["blocks"] == summary["blocks"]
    assert len(data["layers"]) == len(summary["nodes"])
    for layer, node in zip(data["layers"], summary["nodes"]):
        assert {k: layer[k] for k in node} == node  # every number of the summary, unchanged
    assert max(data["live_bytes"]) == summary["totals"]["inference_peak_bytes"]


def test_training_only_layers_are_marked_and_left_out_of_the_inference_plots():
    graph = archc.load(SPECS / "googlenet.yaml", aux_logits=True, resolution=96)
    data = page_json(report_page(graph))
    marked = {layer["name"] for layer in data["layers"] if layer["training_only"]}
    assert marked == graph.training_only()
    assert len(data["live_bytes"]) == len(graph) - len(marked)  # inference's order
    assert max(data["live_bytes"]) == data["totals"]["inference_peak_bytes"]
    assert data["totals"]["inference_params"] == 6_624_904


def test_report_is_self_contained(tmp_path):
    text = report_page(archc.load(SPECS / "googlenet.yaml"))
    # nothing fetched when opened: no external scripts, styles, images or fonts
    assert not re.search(r'<(script|link|img|iframe)[^>]+(src|href)="(?!data:)', text)
    assert "@import" not in text and "url(http" not in text
    assert text.count("<script") == 2  # the data and the page's own script, both inline


def test_views_collapse_blocks_and_the_deepest_draws_every_layer():
    graph = archc.load(SPECS / "resnet18.yaml")
    data = page_json(report_page(graph))
    views = data["views"]
    assert [v["depth"] for v in views] == [1, 2, 3, None]  # stages, blocks, downsample
    assert views[-1]["nodes"] == len(graph) and not views[-1]["collapsed"]
    assert views[0]["nodes"] < views[1]["nodes"] < views[2]["nodes"] < views[3]["nodes"]
    # depth 1: the four stages; runs of identical blocks inside them at depth 2
    assert sorted(views[0]["collapsed"]) == ["b_layer1", "b_layer2", "b_layer3", "b_layer4"]
    assert views[1]["collapsed"]["b_layer2.0"] == ["layer2.0"]
    assert views[2]["collapsed"]["b_layer2.0.downsample"] == ["layer2.0.downsample"]
    assert data["first_view"] == 3  # 70 layers: everything open
    for view in views:  # every collapsed id is a node of its own drawing
        for cid in view["collapsed"]:
            assert f"<title>{cid}</title>" in view["svg"]


def test_a_large_network_opens_collapsed_and_stays_small(tmp_path, capsys):
    # DenseNet-201's blocks (6, 12, 48, 32): 708 layers
    out = tmp_path / "d.html"
    assert main(["report", str(SPECS / "densenet121.yaml"), "--set", "block_config=[6,12,48,32]",
                 "-o", str(out)]) == 0
    data = page_json(out.read_text())
    assert len(data["layers"]) > 500
    first = data["views"][data["first_view"]]
    assert first["nodes"] <= OPEN_LIMIT and first["depth"] is not None
    assert out.stat().st_size < 4 * 2**20
    for spec in ("resnet50", "densenet121"):
        assert main(["report", str(SPECS / f"{spec}.yaml"), "-o", str(out)]) == 0
        assert out.stat().st_size < 3 * 2**20, spec


def test_report_refuses_what_it_cannot_write(tmp_path, capsys):
    assert main(["report", str(SPECS / "lenet5.yaml"), "-o", str(tmp_path / "r.svg")]) == 2
    assert "the report is an HTML page: name it .html" in capsys.readouterr().err
    assert main(["report", str(SPECS / "lenet5.yaml"), "-o", str(tmp_path / "no/r.html")]) == 2
    assert main(["report", str(SPECS / "lenet5.yaml"), "-o", str(tmp_path / "r.html"),
                 "--device", "tpu"]) == 2
    assert "unknown device 'tpu'" in capsys.readouterr().err


def write_run(folder: Path, epochs: int = 3) -> Path:
    """A run folder as archc train writes it: 10 steps an epoch, loss falling."""
    folder.mkdir()
    rows = [{"epoch": e, "steps": 10 * e, "lr": 0.1 / e, "train_loss": 2.0 / e,
             "train_accuracy": 0.5 + 0.1 * e, "test_loss": 2.2 / e,
             "test_accuracy": 0.45 + 0.1 * e, "images_per_s": 300.0 + e, "seconds": 2.0,
             "loss_steps": [[10 * (e - 1) + k, 2.0 / e + 0.01 * (5 - k)] for k in range(1, 11)]}
            for e in range(1, epochs + 1)]
    (folder / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / "config.json").write_text(json.dumps({"epochs": epochs, "optimizer": "sgd",
                                                    "lr": 0.1, "batch_size": 32}))
    (folder / "task.json").write_text(json.dumps({"task": "classify",
                                                  "classes": [str(c) for c in range(10)]}))
    return folder


def test_report_with_a_training_run(tmp_path, capsys):
    run = write_run(tmp_path / "run")
    out = tmp_path / "r.html"
    assert main(["report", str(SPECS / "lenet5.yaml"), "--run", str(run), "-o", str(out)]) == 0
    data = page_json(out.read_text())["run"]
    assert [r["epoch"] for r in data["epochs"]] == [1, 2, 3]
    assert data["epochs"][2]["test_accuracy"] == pytest.approx(0.75)
    assert len(data["epochs"][0]["loss_steps"]) == 10 and data["settings"]["optimizer"] == "sgd"
    assert data["task"] == "classify" and data["classes"][9] == "9"
    assert page_json(report_page(archc.load(SPECS / "lenet5.yaml")))["run"] is None


@pytest.mark.parametrize("damage, message", [
    (lambda run: (run / "log.jsonl").write_text("{\"epoch\": 1}\n{not json"),
     "line 2, is not valid JSON"),
    (lambda run: (run / "log.jsonl").write_text('{"steps": 3}\n'), "line 1, has no epoch number"),
    (lambda run: (run / "log.jsonl").write_text('{"epoch": 1, "loss_steps": [[1, "x"]]}\n'),
     "loss_steps is not a list of [step, loss] pairs"),
    (lambda run: (run / "config.json").unlink(), "config.json"),
    (lambda run: (run / "task.json").write_bytes(b"\xff\xfe"), "task.json"),
])
def test_a_damaged_run_folder_is_refused_with_its_name(tmp_path, capsys, damage, message):
    run = write_run(tmp_path / "run")
    damage(run)
    assert main(["report", str(SPECS / "lenet5.yaml"), "--run", str(run),
                 "-o", str(tmp_path / "r.html")]) == 2
    err = capsys.readouterr().err
    assert message in err and str(run) in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r.html").exists()
    assert main(["report", str(SPECS / "lenet5.yaml"), "--run", str(tmp_path / "nothing"),
                 "-o", str(tmp_path / "r.html")]) == 2
    assert "is not a run folder" in capsys.readouterr().err


def test_report_compares_two_networks(tmp_path, capsys):
    out = tmp_path / "c.html"
    spec = str(SPECS / "resnet18.yaml")
    assert main(["report", spec, "--set", "num_classes=10", "--compare", spec,
                 "--compare-set", "width=32", "-o", str(out)]) == 0
    data = page_json(out.read_text())
    other = data["compare"]
    narrow = analyse(archc.load(SPECS / "resnet18.yaml", num_classes=10, width=32))
    assert other["totals"] == narrow.totals  # the variant keeps --set num_classes=10
    assert other["variables"]["width"] == 32 and other["variables"]["num_classes"] == 10
    assert len(other["layers"]) == len(data["layers"])
    # another spec does not take this one's --set values
    assert main(["report", spec, "--set", "width=32", "--compare", str(SPECS / "lenet5.yaml"),
                 "-o", str(out)]) == 0
    assert page_json(out.read_text())["compare"]["name"] == "lenet5"
    assert main(["report", spec, "--compare-set", "width=32", "-o", str(out)]) == 2
    assert "--compare-set changes the network given by --compare" in capsys.readouterr().err


# ----------------------------------------------------------------------------- in Chromium
CHROMIUM, DRIVER = shutil.which("chromium"), shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed "
                                    "(make test installs it with the test extras)")
    if not (CHROMIUM and DRIVER):
        pytest.skip("Debian's chromium and chromium-driver are not installed (make test "
                    "installs them; apt-get install chromium chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,1000"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    yield driver
    driver.quit()


def open_page(browser, path: Path) -> None:
    browser.get(path.as_uri())
    errors = [e for e in browser.get_log("browser") if e["level"] == "SEVERE"]
    assert errors == [], errors


def js(browser, script: str, *args):
    return browser.execute_script(script, *args)


def diagram_titles(browser) -> list[str]:
    return js(browser, "return [...document.querySelectorAll('#canvas svg g.node > title')]"
                       ".map(t => t.textContent)")


def click_node(browser, title: str) -> None:
    """Click the diagram node Graphviz titled ``title`` (its layer's or block's id)."""
    browser.find_element("xpath", "//*[name()='g'][contains(@class,'node')]"
                                  f"[*[name()='title'][text()='{title}']]").click()


def test_the_page_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    graph = archc.load(SPECS / "resnet18.yaml")
    report = analyse(graph)
    path = tmp_path / "resnet18.html"
    path.write_text(report_page(graph, report=report))
    open_page(browser, path)
    assert browser.title == "resnet18: archc report"
    # the first view draws every layer: a node per layer of the spec
    assert sorted(diagram_titles(browser)) == sorted("n_" + node.name for node in graph)

    # a click on a node shows its details, with the analysis' numbers
    node = report.node("layer3.0.conv1")
    click_node(browser, "n_layer3.0.conv1")
    details = browser.find_element(By.ID, "details").text
    assert details.startswith("layer3.0.conv1") and "conv2d" in details
    assert f"{node.params:,}" in details and f"{node.macs:,}" in details
    conv = graph["layer3.0.conv1"]
    assert f"output {fmt_shape(conv.shape)}" in details  # 256x14x14
    source = conv.inputs[0]
    assert f"inputs {source} {fmt_shape(graph[source].shape)}" in details

    # collapsing its block (the button in the details) changes the diagram's node count
    before = len(diagram_titles(browser))
    browser.find_element(By.XPATH, "//div[@id='details']//button[text()='collapse layer3.0']").click()
    titles = diagram_titles(browser)
    assert len(titles) < before and "b_layer3.0" in titles and "n_layer3.0.conv1" not in titles
    assert browser.find_element(By.ID, "details").text.startswith("layer3.0")
    # a click on a collapsed block opens it again
    click_node(browser, "b_layer3.0")
    browser.find_element(By.XPATH, "//div[@id='details']//button[text()='open layer3.0']").click()
    assert "n_layer3.0.conv1" in diagram_titles(browser)

    # the search box finds layers by name
    js(browser, "const s = document.getElementById('search'); s.value = 'downsample.0';"
                "s.dispatchEvent(new Event('input'))")
    assert browser.find_element(By.ID, "found").text == "3 layers"
    assert len(browser.find_elements(By.CSS_SELECTOR, "#canvas g.node.found")) == 3

    # the table sorted by MACs puts the largest layer first
    browser.find_element(By.XPATH, "//nav/button[text()='Layers']").click()
    browser.find_element(By.CSS_SELECTOR, "#layer-table th[data-key='macs']").click()
    first = browser.find_element(By.CSS_SELECTOR, "#layer-table tbody tr").get_attribute("data-layer")
    largest = max(report.nodes, key=lambda n: (n.macs, -report.nodes.index(n)))
    assert first == largest.name
    # and the filter keeps the matching rows
    js(browser, "const f = document.getElementById('filter'); f.value = 'layer4.1';"
                "f.dispatchEvent(new Event('input'))")
    rows = browser.find_elements(By.CSS_SELECTOR, "#layer-table tbody tr[data-layer]")
    assert rows and all(r.get_attribute("data-layer").startswith("layer4.1.") for r in rows)

    # the plots draw, and still no error in the console
    browser.find_element(By.XPATH, "//nav/button[text()='Plots']").click()
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tab-plots .plot svg")) == 4
    assert len(browser.find_elements(By.CSS_SELECTOR, "#tab-plots polyline")) >= 3
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_run_tab_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    path = tmp_path / "lenet5.html"
    path.write_text(report_page(archc.load(SPECS / "lenet5.yaml"), run=write_run(tmp_path / "run")))
    open_page(browser, path)
    browser.find_element(By.XPATH, "//nav/button[text()='Run']").click()
    cards = browser.find_element(By.ID, "run-cards").text
    assert "0.75" in cards and "best test accuracy (epoch 3)" in cards and "303 img/s" not in cards
    assert "302 img/s" in cards  # the mean of 301, 302 and 303
    charts = browser.find_elements(By.CSS_SELECTOR, "#tab-run .plot")
    assert [c.find_element(By.TAG_NAME, "h3").text for c in charts] == [
        "Loss", "Metrics per epoch", "Learning rate per epoch", "Training speed per epoch"]
    series = [g.get_attribute("data-series") for g in
              charts[0].find_elements(By.CSS_SELECTOR, "g[data-series]")]
    assert series == ["training loss per step", "training loss (epoch mean)", "test loss"]
    assert "optimizer" in browser.find_element(By.ID, "run-settings").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_compare_tab_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    wide = archc.load(SPECS / "resnet18.yaml")
    narrow = archc.load(SPECS / "resnet18.yaml", width=32)
    path = tmp_path / "compare.html"
    path.write_text(report_page(wide, compare=narrow))
    open_page(browser, path)
    browser.find_element(By.XPATH, "//nav/button[text()='Compare']").click()
    row = browser.find_element(By.CSS_SELECTOR, "#compare-totals tr[data-key='parameters']")
    cells = [td.text for td in row.find_elements(By.TAG_NAME, "td")]
    a, b = analyse(wide).totals["params"], analyse(narrow).totals["params"]
    assert cells[1:3] == [f"{a:,}", f"{b:,}"]
    assert cells[3] == f"\u2212{a - b:,} (\u2212{100 * (a - b) / a:.1f}%)"
    layers = browser.find_element(By.ID, "compare-layers").text
    assert "layer1.0.conv1" in layers and "fc" in layers  # narrower convs, a smaller fc
    title = browser.find_element(By.XPATH, "//h3[starts-with(text(), 'Layers that differ')]").text
    changed = sum(1 for n, m in zip(analyse(wide).nodes, analyse(narrow).nodes)
                  if (n.params, n.macs, n.output_shape) != (m.params, m.macs, m.output_shape))
    assert title == f"Layers that differ ({changed} of {len(wide)})"
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_the_held_out_evaluation_in_chromium(browser, tmp_path):
    from selenium.webdriver.common.by import By

    from runtime.train import pictures

    picture = pictures.enlarge(np.full((8, 8, 3), 200, np.uint8))
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(picture).save(buffer, format="PNG")
    evaluation = {"data": "digits", "images": 12, "task": "classify", "classes": ["a", "b", "c"],
                  "metrics": {"accuracy": 0.75, "loss": 0.5},
                  "per_class": {"precision": [1.0, 0.5, None], "recall": [0.8, 1.0, 0.0],
                                "iou": [0.8, 0.5, None]},
                  "support": [5, 4, 3], "confusion": [[4, 1, 0], [0, 4, 0], [0, 3, 0]],
                  "pictures": [{"name": "test-0000", "found": "a 0.900", "truth": "a",
                                "png": buffer.getvalue()}]}
    path = tmp_path / "lenet5.html"
    path.write_text(report_page(archc.load(SPECS / "lenet5.yaml"), run=write_run(tmp_path / "run"),
                                evaluation=evaluation))
    open_page(browser, path)
    browser.find_element(By.XPATH, "//nav/button[text()='Run']").click()
    rows = browser.find_elements(By.CSS_SELECTOR, "#per-class tbody tr")
    assert [r.text.split() for r in rows] == [["a", "100.0%", "80.0%", "80.0%", "5"],
                                              ["b", "50.0%", "100.0%", "50.0%", "4"],
                                              ["c", "\u2014", "0.0%", "\u2014", "3"]]
    cells = browser.find_elements(By.CSS_SELECTOR, "#confusion tbody td")
    assert [c.text for c in cells] == ["4", "1", "0", "0", "4", "0", "0", "3", "0"]
    image = browser.find_element(By.CSS_SELECTOR, "#pictures img")
    assert js(browser, "return arguments[0].complete && arguments[0].naturalWidth", image) == \
        picture.shape[1]
    assert "test-0000: a 0.900 (truth: a)" in browser.find_element(By.ID, "pictures").text
    assert [e for e in browser.get_log("browser") if e["level"] == "SEVERE"] == []


def test_a_screenshot_is_not_blank(browser, tmp_path):
    path = tmp_path / "googlenet.html"
    path.write_text(report_page(archc.load(SPECS / "googlenet.yaml"),
                                device=get_device("h100")))
    open_page(browser, path)
    png = browser.get_screenshot_as_png()
    assert png.startswith(b"\x89PNG")
    # the browser decodes its own screenshot: many pixels that are not the background
    shot = "data:image/png;base64," + base64.b64encode(png).decode()
    inked = browser.execute_async_script("""
        const done = arguments[arguments.length - 1], img = new Image();
        img.onload = () => {
          const c = document.createElement('canvas'); c.width = img.width; c.height = img.height;
          const g = c.getContext('2d'); g.drawImage(img, 0, 0);
          const px = g.getImageData(0, 0, c.width, c.height).data;
          let n = 0, colours = new Set();
          for (let i = 0; i < px.length; i += 4 * 7) {
            if (px[i] < 235 || px[i + 1] < 235 || px[i + 2] < 235) n++;
            colours.add(px[i] >> 4 << 8 | px[i + 1] >> 4 << 4 | px[i + 2] >> 4);
          }
          done([n, colours.size]);
        };
        img.src = arguments[0];""", shot)
    assert inked[0] > 2000 and inked[1] > 20, inked
    # the roofline of the chosen device is drawn, one point per layer that moves bytes
    browser.find_element("xpath", "//nav/button[text()='Plots']").click()
    assert len(browser.find_elements("css selector", "#tab-plots circle")) > 50
