"""Render the diagrams shown in the documentation into docs/images/ (needs Graphviz's dot).

Run ``make images``. PNG bytes depend on the Graphviz version, so these files are not
compared by the tests; tests/compiler/test_render.py checks the diagrams' structure instead.
"""

from __future__ import annotations

from pathlib import Path

from archc import load
from archc.render import diagram, write_diagram

ROOT = Path(__file__).resolve().parent.parent
IMAGES = {
    "lenet5.png": ("lenet5", {"rankdir": "LR", "detail": "high"}),
    "resnet18.png": ("resnet18", {}),
    "resnet18_collapsed.png": ("resnet18", {"collapse": 2}),
    "googlenet_collapsed.png": ("googlenet", {"collapse": 1}),
    "googlenet_inception.png": ("googlenet", {"collapse": ["basic_conv"]}),
    "unet_collapsed.png": ("unet", {"collapse": 1}),
    "unet.png": ("unet", {"rankdir": "LR"}),
    "faster_rcnn_fpn.png": ("faster_rcnn", {"collapse": ["resnet_body", "rpn_head"]}),
}


def main() -> None:
    out = ROOT / "docs" / "images"
    (out / "library").mkdir(parents=True, exist_ok=True)
    for filename, (spec, options) in IMAGES.items():
        graph = load(ROOT / "specs" / f"{spec}.yaml")
        write_diagram(diagram(graph, **options), out / filename)
        print(f"wrote docs/images/{filename}")
    # One diagram per library spec, top-level blocks collapsed, for docs/architectures.md.
    for path in sorted((ROOT / "specs").glob("*.yaml")):
        graph = load(path)
        write_diagram(diagram(graph, collapse=1), out / "library" / f"{path.stem}.svg")
    print("wrote docs/images/library/*.svg")


if __name__ == "__main__":
    main()
