"""The screenshots of docs/report.md: `archc report` pages opened in Debian's headless
Chromium (the browser the tests use), one picture per tab, written to docs/images/report/.

    .venv/bin/python scripts/gen_report_docs.py
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "docs" / "images" / "report"


def browser():
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    if not (chromium and driver):
        sys.exit("needs Debian's chromium and chromium-driver (make browser installs them)")
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for arg in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync", "--window-size=1400,900",
                "--hide-scrollbars"):
        options.add_argument(arg)
    return webdriver.Chrome(service=Service(driver), options=options)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import archc
    from archc.analysis import get_device
    from archc.page import report_page

    OUT.mkdir(parents=True, exist_ok=True)
    os.chdir(ROOT)  # the page names the spec as given: specs/resnet50.yaml
    driver = browser()
    try:
        with tempfile.TemporaryDirectory() as tmp:
            page = Path(tmp) / "resnet50.html"
            page.write_text(report_page(archc.load("specs/resnet50.yaml"),
                                        device=get_device("h100")))
            driver.get(page.as_uri())
            # a block collapsed, one of its neighbours' layers chosen
            driver.execute_script("archcReport.collapse('layer2.0');")
            driver.execute_script("archcReport.find('layer2.1.conv2');")
            time.sleep(0.3)
            driver.save_screenshot(str(OUT / "diagram.png"))
            for tab, name in (("Layers", "layers"), ("Plots", "plots"), ("Memory", "memory")):
                driver.find_element("xpath", f"//nav/button[text()='{tab}']").click()
                if name == "layers":
                    driver.find_element("css selector", "#layer-table th[data-key='macs']").click()
                time.sleep(0.3)
                driver.save_screenshot(str(OUT / f"{name}.png"))
                print(f"wrote {OUT / name}.png")
    finally:
        driver.quit()


if __name__ == "__main__":
    main()
