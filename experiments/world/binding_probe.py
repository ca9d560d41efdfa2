"""Does the world ViT's output say which object is where? A linear probe for the two-object ``spatial`` task.

Two-object ``spatial`` ("where is the circle ?") did not transfer through any bridge (README, "tasks that
transfer"): the bridges reached 0.5, the level of a model that knows both objects' places but not which is which.
This asks whether the information is in the frozen encoder's tokens at all. For every shape, a logistic regression
on the flattened patch tokens of one layer (``(h*w) * width`` features) predicts that shape's quadrant on the images
that contain it (two distinct shapes in distinct quadrants, as the task draws them), trained on one set of images
and scored on another. A control probe predicts the quadrant of the object drawn first, which the image cannot tell
(both orders look the same): a probe that finds both places but has nothing else to go on gets 0.5 there, so the
control shows what "places without binding" scores::

    python -m experiments.world.binding_probe --world binding --layer -1

High per-shape accuracy means the encoder carries the binding and the bridge or the LM loses it; about 0.5 means
the tokens hold the two places without telling the shapes apart. Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from tqdm.auto import tqdm

from experiments.world.tasks import TaskOptions, make_task_dataset
from experiments.world.vocab import SHAPES


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> float:
    """Held-out accuracy of a standardised, L2-regularised logistic regression (the same for every probe)."""
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, max_iter=2000))
    model.fit(train_x, train_y)
    return float((model.predict(test_x) == test_y).mean())


def encode(world: Any, layer: int, n: int, seed: int, batch: int = 200) -> tuple[np.ndarray, list[tuple]]:
    """ViT tokens ``(n, h*w*width)`` of ``n`` two-shape images and each image's ``((shape, quadrant), ...)``."""
    from encoders.builder import build_encoder

    encoder = build_encoder(world.encoder_spec("vit")).eval()
    transform = encoder.transform()
    options = TaskOptions(spatial_objects=2, spatial_ask_by="shape")
    data = make_task_dataset("spatial", "train", n, seed, image_sizes=encoder.image_size[0], options=options)
    features, objects = [], []
    for start in tqdm(range(0, n, batch), desc=f"encoding {n} images", leave=False):
        rows = range(start, min(n, start + batch))
        pixels = torch.stack([data[i]["images"][0] for i in rows])
        with torch.no_grad():
            tokens = encoder(transform(pixels), layers=[layer]).patches()
        features.append(tokens.flatten(1).numpy())
        objects += [tuple((o.shape, o.quadrant) for o in data.samples[i].media[0].frames[0].objects) for i in rows]
    return np.concatenate(features), objects


def _images_with(shape: int, objects: Sequence[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """The rows of the images that hold ``shape``, and its quadrant in each."""
    hits = [(i, q) for i, objs in enumerate(objects) for s, q in objs if s == shape]
    return np.array([i for i, _ in hits], dtype=int), np.array([q for _, q in hits])


def _first_drawn(objects: Sequence[tuple]) -> np.ndarray:
    """The quadrant of each image's first-drawn object (the control label: the image cannot tell which it is)."""
    return np.array([objs[0][1] for objs in objects])


def binding_probe(world: Any, layer: int = -1, train: int = 3000, test: int = 1000, seed: int = 0) -> dict[str, Any]:
    """Per-shape quadrant probes and the control probe (see the module docstring); accuracies on ``test`` held-out
    images, drawn from another seed than the ``train`` ones."""
    train_x, train_objects = encode(world, layer, train, seed)
    test_x, test_objects = encode(world, layer, test, seed + 1)
    per_shape = {}
    for shape, name in enumerate(SHAPES):
        (tr, tr_y), (te, te_y) = _images_with(shape, train_objects), _images_with(shape, test_objects)
        per_shape[name] = {"accuracy": probe_accuracy(train_x[tr], tr_y, test_x[te], te_y), "test_images": len(te)}
    control = probe_accuracy(train_x, _first_drawn(train_objects), test_x, _first_drawn(test_objects))
    mean = float(np.mean([v["accuracy"] for v in per_shape.values()]))
    return {"layer": layer, "train_images": train, "test_images": test, "seed": seed, "chance": 0.25,
            "places_without_binding": 0.5, "where_is_shape": per_shape, "where_is_shape_mean": mean,
            "control_where_is_the_first_drawn": control}


def main(argv: Sequence[str] | None = None) -> None:
    from experiments.harness.build import build_world
    from experiments.harness.config import compose, validate_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--world", default="binding", help="a world config (experiments/configs/world/<name>.yaml)")
    parser.add_argument("--layer", type=int, default=-1, help="ViT block whose tokens are probed (-1 = last)")
    parser.add_argument("--train", type=int, default=3000)
    parser.add_argument("--test", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    world = build_world(validate_config(compose([f"world={args.world}"])))
    result = binding_probe(world, args.layer, args.train, args.test, args.seed)
    print(json.dumps({"world": args.world, **result}))


if __name__ == "__main__":
    main()
