"""The world backbones this repository ships, so a fresh checkout runs the demo without pretraining first.

Pretraining the world's ViT, expert and LM takes about 9 minutes on two cores (measured 2026-12-01), more than half
of the demo's budget. ``experiments/world/weights/`` holds the backbones that the README's worlds hash to
(``world=default``, ``full``, ``transfer``, ``binding`` and ``deep``: one ViT, one expert, five LMs, about 11 MB),
each in its cache layout (``<component>-<hash>/``), with their SHA-256 sums in ``SHA256SUMS``. When a backbone is not
in the cache and its hash is shipped, :func:`install` copies it into the cache (verifying every file) instead of
training it; ``world.shipped=false`` trains it from scratch, as a changed config always does (a new hash is never
shipped).

They are the project's own weights, trained offline by ``build_world_backbones`` (nothing is downloaded), and the
ones behind ``results/demo/``, so ``make demo`` on a fresh clone runs the same models as the committed results.
After a change to the world's recipes (a new hash), rebuild the worlds and refresh the shipped copies::

    python -m experiments.world.shipped freeze --world default full transfer binding deep   # cache -> weights/
    python -m experiments.world.shipped check                                             # sums and hashes
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

WEIGHTS_DIR = Path(__file__).with_name("weights")
SUMS_FILE = "SHA256SUMS"
README_WORLDS = ("default", "full", "transfer", "binding", "deep")  # the worlds the README's commands use
ENCODER_SPEC = "encoder.json"


class ShippedWeightsError(RuntimeError):
    """A shipped file is missing or does not match its recorded checksum."""


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_sums(weights_dir: Path | None = None) -> dict[str, str]:
    """``{"<component>-<hash>/<file>": sha256}`` from ``SHA256SUMS`` (empty when nothing is shipped)."""
    path = (weights_dir or WEIGHTS_DIR) / SUMS_FILE
    if not path.is_file():
        return {}
    sums = {}
    for line in path.read_text().splitlines():
        if line.strip():
            digest, name = line.split(maxsplit=1)
            sums[name.strip()] = digest
    return sums


def shipped_names(weights_dir: Path | None = None) -> set[str]:
    """The backbone directories (``vit-<hash>``, ...) that are shipped."""
    return {name.split("/", 1)[0] for name in read_sums(weights_dir)}


def install(name: str, tmp: Path, final: Path, weights_dir: Path | None = None) -> None:
    """Copy the shipped backbone ``name`` into ``tmp`` (to be renamed to ``final``), checking every file's sum."""
    source = (weights_dir or WEIGHTS_DIR) / name
    sums = read_sums(weights_dir)
    files = {key.split("/", 1)[1]: digest for key, digest in sums.items() if key.startswith(f"{name}/")}
    if not files:
        raise ShippedWeightsError(f"{name} is not among the shipped world backbones ({source.parent / SUMS_FILE})")
    for file, digest in sorted(files.items()):
        path = source / file
        if not path.is_file() or _sha256(path) != digest:
            raise ShippedWeightsError(
                f"{path}: {'missing' if not path.is_file() else 'its SHA-256 differs from ' + SUMS_FILE}. The "
                f"checkout is damaged: restore it (git checkout -- {source.parent}) or train the backbone instead "
                f"with world.shipped=false."
            )
        shutil.copyfile(path, tmp / file)
    _repoint_weights(tmp, final)  # encoders record where their weights are: the cache copy


def _repoint_weights(backbone_dir: Path, final: Path | None) -> None:
    """Point an encoder backbone's ``encoder.json`` at its weights file in ``final`` (``None``: the bare file name)."""
    spec_path = backbone_dir / ENCODER_SPEC
    if spec_path.is_file():
        spec = json.loads(spec_path.read_text())
        name = Path(spec["pretrained"]).name
        spec["pretrained"] = name if final is None else str(final / name)
        spec_path.write_text(json.dumps(spec, indent=2, sort_keys=True) + "\n")


def world_names(worlds: Sequence[str]) -> list[str]:
    """The backbone directory names that ``world=<name>`` composes to, for each name in ``worlds``."""
    from experiments.harness.config import load_config
    from experiments.world.backbones import as_config, config_hash

    names: list[str] = []
    for world in worlds:
        cfg = as_config(load_config([f"world={world}"]).world)
        for component in cfg.components:
            name = f"{component}-{config_hash(component, cfg)}"
            if name not in names:
                names.append(name)
    return names


def freeze(worlds: Sequence[str], cache_dir: Path | None = None, weights_dir: Path | None = None) -> list[str]:
    """Replace the shipped backbones by the cached ones of ``worlds``; returns their names."""
    from experiments.world.backbones import QUALITY_FILE, cache_root

    root, dest = cache_root(cache_dir), weights_dir or WEIGHTS_DIR
    names = world_names(worlds)
    missing = [name for name in names if not (root / name / QUALITY_FILE).is_file()]
    if missing:
        raise ShippedWeightsError(
            f"Not in the cache {root}: {missing}. Build them first: any run with those worlds does, with "
            f"world.shipped=false where a shipped copy would stand in, e.g. bridgelab train world=full "
            f"world.shipped=false stages.align.max_steps=1."
        )
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    lines = []
    for name in names:
        shutil.copytree(root / name, dest / name)
        _repoint_weights(dest / name, None)  # no machine's absolute path in the repository
        lines += [f"{_sha256(path)}  {name}/{path.name}" for path in sorted((dest / name).iterdir())]
    (dest / SUMS_FILE).write_text("\n".join(lines) + "\n")
    return names


def check(worlds: Sequence[str] = README_WORLDS, weights_dir: Path | None = None) -> list[str]:
    """Problems with the shipped backbones: a file whose sum differs, or a world whose backbones are not shipped."""
    weights = weights_dir or WEIGHTS_DIR
    problems = [
        f"{name}: {'missing' if not (weights / name).is_file() else 'checksum differs'}"
        for name, digest in read_sums(weights).items()
        if not (weights / name).is_file() or _sha256(weights / name) != digest
    ]
    shipped = shipped_names(weights)
    problems += [
        f"world={world}: {name} is not shipped (refresh: python -m experiments.world.shipped freeze --world ...)"
        for world in worlds
        for name in world_names([world])
        if name not in shipped
    ]
    return problems


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m experiments.world.shipped", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    freeze_cmd = sub.add_parser("freeze", help="copy the cached backbones of some worlds into the shipped directory")
    check_cmd = sub.add_parser("check", help="verify the shipped sums and that the worlds' hashes are shipped")
    for cmd in (freeze_cmd, check_cmd):
        cmd.add_argument("--world", nargs="+", default=list(README_WORLDS), help="world config names")
        cmd.add_argument("--weights-dir", type=Path, default=None, help=f"default: {WEIGHTS_DIR}")
    freeze_cmd.add_argument("--cache-dir", type=Path, default=None, help="world cache (default: as the runs use)")
    args = parser.parse_args(argv)
    if args.command == "freeze":
        for name in freeze(args.world, args.cache_dir, args.weights_dir):
            print(f"shipped {name}")
        return 0
    problems = check(args.world, args.weights_dir)
    for problem in problems:
        print(problem, file=sys.stderr)
    if not problems:
        print(f"ok: {len(shipped_names(args.weights_dir))} backbones, worlds {', '.join(args.world)}")
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
