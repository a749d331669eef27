"""``archc predict``, ``archc visualize`` and ``archc stylize``: what trained weights see,
and what a network looks for."""

from __future__ import annotations

import argparse

from archc.cli.common import (COMMANDS, EXIT_OK, add_data_arguments, add_spec_arguments,
                              add_weights_options, compile_for_data, load_graph, load_weights,
                              positive, settings_of)
from archc.errors import DataError


def _images(args, graph, shape, described: dict, count: int):
    """The images a command looks at: ``--image`` files (standardized as the run's
    training data was, when its task.json says how), else the first ``count`` held-out
    images of ``--data`` (or the spec's training data) from ``--index`` on. Returns the
    batch, a function giving pictures' pixel values back, names, and the split (None for
    files)."""
    from pathlib import Path

    import numpy as np

    from runtime.train import data, pictures

    if args.image:
        x = np.stack([pictures.load_image(p, shape) for p in args.image])
        if "mean" not in described:
            return x, (lambda v: v), [Path(p).stem for p in args.image], None
        mean = np.array(described["mean"], np.float32).reshape(-1, 1, 1)
        std = np.array(described["std"], np.float32).reshape(-1, 1, 1)
        return ((x - mean) / std, (lambda v: v * std + mean),
                [Path(p).stem for p in args.image], None)
    settings = settings_of(args, graph)
    split = data.load(settings.data, shape, seed=settings.config.seed)
    start = getattr(args, "index", 0)
    if not 0 <= start < len(split.test):
        raise DataError(f"--index {start} is outside the {len(split.test)} held-out images")
    x = split.test.x[start:start + count]
    return x, split.pixels, [f"test-{k:04d}" for k in range(start, start + len(x))], split


def _cmd_predict(args: argparse.Namespace) -> int:
    from pathlib import Path

    from runtime.train import pictures, tasks

    graph = load_graph(args)
    model = compile_for_data(graph, args, 0)
    load_weights(model, args.weights, args)
    shape = next(iter(model.program.inputs.values()))
    described = tasks.find_description(args.weights) or {}
    x, show, names, split = _images(args, graph, shape, described, count=args.count)
    if not described:
        if split is None:
            raise DataError(f"{args.weights} has no task.json beside it (a run directory "
                            f"of archc train has one): give --data to say what it predicts")
        described = tasks.make(None, split, model.program, {}).describe()
    task = tasks.restore(described, split, model.program)
    out = predictions(task, model, x, args.score)
    if task.kind == "classify":
        for name, top in zip(names, task.top_classes(out)):
            print(f"{name}: " + ", ".join(f"{label} {p:.3f}" for label, p in top))
        return EXIT_OK
    if task.kind == "embed":
        raise DataError("predict draws segmentation masks and detection boxes and names "
                        "classes; for an embedding network use archc eval (retrieval and "
                        "verification)")
    out_dir = Path(args.out)
    for name, picture, found in prediction_pictures(task, x, out, show, names, args.score):
        path = pictures.save(picture, out_dir / f"{name}.png")
        print(f"{path}: {found or 'nothing found'}")
    return EXIT_OK


def predictions(task, model, x, score: float):
    """The model's outputs for the batch ``x`` in inference mode: class scores or
    segmentation maps, or for a detector per image (boxes, scores, classes, instance
    masks or None)."""
    model.eval()
    if task.kind != "detect":
        return model.predict(x)
    if hasattr(task, "predictions"):
        return task.predictions(model, x)
    return [(*task.head.detections(model.predict(x)[k:k + 1], score_threshold=score)[0], None)
            for k in range(len(x))]


def prediction_pictures(task, x, out, show, names: list[str], score: float):
    """Per image, (name, picture, what was found): the image with the predicted
    segmentation beside it, or with the boxes (and instance masks) drawn, or for a
    classifier the image enlarged and its top classes."""
    import numpy as np

    from runtime.train import pictures

    for k, name in enumerate(names):
        pixels = pictures.to_uint8(show(x[k]), (0.0, 1.0))
        big = pictures.enlarge(pixels)
        factor = big.shape[0] / pixels.shape[0]
        if task.kind == "classify":
            top = task.top_classes(out[k:k + 1])[0]
            yield name, big, ", ".join(f"{label} {p:.3f}" for label, p in top)
            continue
        if task.kind == "segment":
            colours = pictures.palette(len(task.classes))
            mask = out[k].argmax(axis=0)
            panel = pictures.overlay(pixels, mask, colours)
            picture = pictures.side_by_side(big, pictures.enlarge(panel))
            found = ", ".join(f"{task.classes[c]} {int((mask == c).sum())} px"
                              for c in np.unique(mask) if c > 0)
        else:
            boxes, scores, classes, masks = out[k]
            shown = scores >= score
            boxes, scores, classes = boxes[shown], scores[shown], classes[shown]
            colours = pictures.palette(len(task.classes), background=False)
            if masks is not None:  # instance masks: the best on top
                masks = masks[shown[:len(masks)]]
                labelled = np.zeros(pixels.shape[:2], np.int64)
                for mask, c in reversed(list(zip(masks, classes))):
                    labelled[mask] = c + 1
                big = pictures.enlarge(pictures.overlay(
                    pixels, labelled, pictures.palette(len(task.classes) + 1)))
            labels = [f"{task.classes[c]} {s:.2f}" for c, s in zip(classes, scores)]
            picture = pictures.draw_boxes(big, boxes, labels, colours[classes], factor)
            found = ", ".join(labels)
        yield name, picture, found


# the held-out images a report shows with their predictions; a confusion matrix of more
# classes than this is left out of the page (its per-class numbers stay)
REPORT_PICTURES, REPORT_CONFUSION = 8, 40


def run_evaluation(args, graph) -> dict:
    """``archc report --run``: the run's best weights on the held-out images of ``--data``
    (or the spec's training data), split with the run's seed: the task's metrics, the
    confusion matrix and per-class precision, recall and IoU (classification,
    segmentation), and the first images with what the network predicts, as PNG bytes."""
    from pathlib import Path

    import numpy as np

    from runtime.errors import RunFolderError
    from runtime.files import finite_number, read_json
    from runtime.train import data, metrics, pictures, tasks

    if args.seed is None:  # the split the run held out
        seed = read_json(Path(args.run) / "config.json", "run settings", RunFolderError).get("seed")
        args.seed = seed if isinstance(seed, int) and not isinstance(seed, bool) else None
    settings = settings_of(args, graph)
    model = compile_for_data(graph, args, 0)
    load_weights(model, args.run, args)
    split = data.load(settings.data, next(iter(model.program.inputs.values())),
                      seed=settings.config.seed)
    described = tasks.find_description(args.run)
    task = (tasks.restore(described, split, model.program) if described else
            tasks.make(None, split, model.program, {}))
    # the metrics archc eval prints, and the confusion matrix from the same pass
    result, confusion = (task.evaluated(model, split.test) if hasattr(task, "evaluated")
                         else (task.evaluate(model, split.test), None))
    out = {"data": settings.data, "images": len(split.test), "task": task.kind,
           "classes": [str(c) for c in task.classes],
           "metrics": {k: float(v) for k, v in result.items() if finite_number(v)}}
    if confusion is not None:
        table = metrics.per_class(confusion)
        out["per_class"] = {k: [float(v) if np.isfinite(v) else None for v in table[k]]
                            for k in ("precision", "recall", "iou")}
        out["support"] = confusion.sum(axis=1).tolist()
        if len(confusion) <= REPORT_CONFUSION:
            out["confusion"] = confusion.tolist()
    out["pictures"] = []
    if task.kind != "embed":
        x = split.test.x[:REPORT_PICTURES]
        names = [f"test-{k:04d}" for k in range(len(x))]
        shown = prediction_pictures(task, x, predictions(task, model, x, 0.3), split.pixels,
                                    names, 0.3)
        for k, (name, picture, found) in enumerate(shown):
            truth = (task.classes[int(split.test.y[k])] if task.kind == "classify" else None)
            out["pictures"].append({"name": name, "found": found or "nothing found",
                                    "truth": truth, "png": pictures.png_bytes(picture)})
    return out


def _setup_predict(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--weights", required=True, metavar="W.npz|RUN_DIR",
                   help="trained parameters, or a run directory (its best checkpoint; its "
                   "task.json says what the network predicts)")
    add_weights_options(p)
    p.add_argument("--image", nargs="+", metavar="FILE",
                   help="image files to predict (default: --count held-out images of --data "
                   "from --index on)")
    p.add_argument("--index", type=int, default=0,
                   help="the first held-out image of --data (default 0)")
    p.add_argument("--count", type=positive, default=8, help="held-out images (default 8)")
    p.add_argument("--score", type=float, default=0.3,
                   help="detection: the lowest score drawn (default 0.3)")
    p.add_argument("-o", "--out", default="out/predict", metavar="DIR",
                   help="folder for the pictures (default out/predict)")


VISUALS = ("saliency", "smoothgrad", "class-model", "features", "filters", "invert")


def _cmd_visualize(args: argparse.Namespace) -> int:
    import numpy as np

    from runtime.train import pictures, tasks, visualize

    graph = load_graph(args)
    model = compile_for_data(graph, args, args.seed or 0, every_node=True)
    if args.weights:
        load_weights(model, args.weights, args)
    described = tasks.find_description(args.weights) if args.weights else None
    classes = (described or {}).get("classes")
    shape = next(iter(model.program.inputs.values()))

    def class_name(k: int) -> str:
        return f"class {k}" + (f" ({classes[k]})" if classes and k < len(classes) else "")

    def image():
        x, show, names, _ = _images(args, graph, shape, described or {}, count=1)
        return x[0], show

    def shown(picture: np.ndarray) -> None:
        path = pictures.save(picture, args.out)
        print(f"wrote {path}")

    what = args.what
    if what in ("features", "invert") and not args.node:
        raise DataError(f"--what {what} needs --node NAME (a layer's name: archc summary "
                        f"lists them)")
    if what in ("saliency", "smoothgrad"):
        x, show = image()
        heat, k = visualize.saliency(model, x, args.target,
                                     samples=args.samples if what == "smoothgrad" else 0,
                                     seed=args.seed or 0)
        pixels = pictures.to_uint8(show(x), (0.0, 1.0))
        print(f"{what} of {class_name(k)}")
        shown(pictures.side_by_side(pictures.enlarge(pixels), pictures.enlarge(
            pictures.heat(heat))))
    elif what == "class-model":
        targets = [args.target] if args.target is not None else range(
            next(iter(model.program.output_shapes().values()))[0])
        tiles = []
        for k in targets:
            x, score = visualize.class_model(model, k, steps=args.steps, seed=args.seed or 0)
            print(f"{class_name(k)}: score {score:.3f}")
            tiles.append(pictures.enlarge(pictures.to_uint8(x), 96))
        shown(pictures.grid(tiles))
    elif what == "features":
        x, _ = image()
        maps = visualize.feature_maps(model, x, args.node)
        if maps.ndim != 3:
            raise DataError(f"node '{args.node}' holds {maps.shape}, not feature maps "
                            f"(channels x height x width)")
        maps = maps[:args.max]
        print(f"{args.node}: {maps.shape[0]} maps of {maps.shape[1]} x {maps.shape[2]}")
        side = max(96 // max(maps.shape[1:]), 1) * max(maps.shape[1:])
        shown(pictures.grid([pictures.enlarge(pictures.to_uint8(m), side) for m in maps]))
    elif what == "filters":
        w = visualize.first_filters(model)[:args.max]
        tiles = [pictures.enlarge(pictures.to_uint8(f if f.shape[0] == 3 else f[:1]), 48)
                 for f in w]
        print(f"{len(tiles)} filters of {w.shape[1]} x {w.shape[2]} x {w.shape[3]}")
        shown(pictures.grid(tiles))
    else:  # invert
        x, show = image()
        y, error = visualize.invert(model, x, args.node, steps=args.steps,
                                    seed=args.seed or 0)
        print(f"reconstructed from {args.node}: relative error of its activations "
              f"{error:.4f}")
        shown(pictures.side_by_side(pictures.enlarge(pictures.to_uint8(show(x), (0.0, 1.0))),
                                    pictures.enlarge(pictures.to_uint8(show(y)))))
    return EXIT_OK


def _add_image_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--image", nargs=1, metavar="FILE",
                   help="an image file (default: a held-out image of --data)")
    p.add_argument("--index", type=int, default=0,
                   help="which held-out image of --data (default 0)")


def _setup_visualize(p: argparse.ArgumentParser) -> None:
    add_data_arguments(p)
    p.add_argument("--what", choices=VISUALS, required=True,
                   help="saliency / smoothgrad: what the class score is sensitive to; "
                   "class-model: an input that maximises a class; features: a node's "
                   "activations; filters: the first convolution's weights; invert: an input "
                   "rebuilt from a node's activations")
    p.add_argument("--weights", metavar="W.npz|RUN_DIR",
                   help="trained parameters or a run directory (default: random weights)")
    add_weights_options(p)
    _add_image_arguments(p)
    p.add_argument("--node", help="the node for features and invert")
    p.add_argument("--class", dest="target", type=int, metavar="K",
                   help="the class (saliency: default the predicted one; class-model: "
                   "default every class)")
    p.add_argument("--samples", type=positive, default=25,
                   help="smoothgrad: noisy copies averaged (default 25)")
    p.add_argument("--steps", type=positive, default=200,
                   help="class-model, invert: optimisation steps (default 200)")
    p.add_argument("--max", type=positive, default=64,
                   help="features, filters: at most this many maps (default 64)")
    p.add_argument("-o", "--out", default="out/visualize.png", metavar="FILE.png")


def _cmd_stylize(args: argparse.Namespace) -> int:
    from runtime.train import pictures, visualize

    graph = load_graph(args)
    model = compile_for_data(graph, args, args.seed, every_node=True)
    if args.weights:
        load_weights(model, args.weights, args)
    shape = next(iter(model.program.inputs.values()))
    content = pictures.load_image(args.content, shape)
    style = pictures.load_image(args.style, shape)
    nodes = [n.strip() for n in args.style_nodes.split(",") if n.strip()]
    image, parts = visualize.stylize(model, content, style, content_node=args.content_node,
                                     style_nodes=nodes, steps=args.steps, lr=args.lr,
                                     style_weight=args.style_weight, tv=args.tv)
    print(f"{args.steps} steps: content loss {parts['content']:.4g}, style loss "
          f"{parts['style']:.4g}, total variation {parts['tv']:.4g}"
          + ("" if args.weights else " (random weights)"))
    path = pictures.save(pictures.side_by_side(
        *(pictures.enlarge(pictures.to_uint8(v, (0.0, 1.0))) for v in (content, style, image))),
        args.out)
    print(f"wrote {path} (content, style, result)")
    return EXIT_OK


def _setup_stylize(p: argparse.ArgumentParser) -> None:
    add_spec_arguments(p)
    p.add_argument("--content", required=True, metavar="FILE", help="the content image")
    p.add_argument("--style", required=True, metavar="FILE", help="the style image")
    p.add_argument("--content-node", required=True, metavar="NODE",
                   help="the node whose activations keep the content")
    p.add_argument("--style-nodes", required=True, metavar="A,B,...",
                   help="the nodes whose Gram matrices carry the style")
    p.add_argument("--weights", metavar="W.npz|RUN_DIR",
                   help="trained parameters (default: random weights, seeded; random "
                   "convolutions already carry textures)")
    add_weights_options(p)
    p.add_argument("--backend", choices=["cpu", "reference", "cuda"], default="cpu")
    p.add_argument("--steps", type=positive, default=200, help="Adam steps (default 200)")
    p.add_argument("--lr", type=float, default=0.03,
                   help="Adam's step on the pixels (default 0.03; pixels lie in 0..1)")
    p.add_argument("--style-weight", type=float, default=10.0,
                   help="the style loss's weight against the content's, both relative to "
                   "their targets' size (default 10)")
    p.add_argument("--tv", type=float, default=1e-4,
                   help="total-variation weight: smoothness (default 1e-4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-o", "--out", default="out/stylized.png", metavar="FILE.png")


COMMANDS["visualize"] = ("look inside a network: saliency maps, class models, feature maps, "
                         "filters, inversions (PNG)", _setup_visualize, _cmd_visualize)


COMMANDS["stylize"] = ("neural style transfer: an image with one image's content and "
                       "another's style (PNG)", _setup_stylize, _cmd_stylize)


COMMANDS["predict"] = ("draw what trained weights see: segmentation overlays and detection "
                       "boxes as PNG files, or the top classes", _setup_predict, _cmd_predict)
