"""Real data sources beside the embedded world, each registered in ``experiments.harness.DATA_SOURCES``.

* ``llava`` (:mod:`experiments.data.llava`): LLaVA / LLaVA-NeXT conversation JSON or JSONL, images, videos,
  multi-image records, LLaVA-NeXT mixture YAMLs;
* ``webdataset`` (:mod:`experiments.data.shards`): tar shards: image-text pairs, MMC4 / OBELICS documents;
* ``hf`` (:mod:`experiments.data.hf`): Hugging Face ``datasets`` from disk, parquet / arrow files or the hub;
* ``mixture`` (:mod:`experiments.data.mixture`): weighted sources, each keeping its tasks.

All are lazy (an index in memory, media decoded in DataLoader workers by :mod:`experiments.data.media`) and
deterministic given the seed. Select one with ``data=llava`` etc. (``experiments/configs/data/``).
"""

from experiments.data import hf, llava, mixture, shards  # noqa: F401  (register the sources)
