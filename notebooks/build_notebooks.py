"""Regenerate the example notebooks from the cell sources below (saved without outputs).

    .venv/bin/python notebooks/build_notebooks.py

Edit the cells here, not in Jupyter, so the notebooks stay reviewable and free of outputs. Each notebook starts
with a cell tagged ``parameters`` (papermill convention); ``tests/test_notebooks.py`` replaces it with tiny settings
and executes the notebook headless.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str) -> nbformat.NotebookNode:
    return new_markdown_cell(textwrap.dedent(text).strip())


def code(text: str, tags: tuple[str, ...] = ()) -> nbformat.NotebookNode:
    cell = new_code_cell(textwrap.dedent(text).strip())
    if tags:
        cell.metadata["tags"] = list(tags)
    return cell


def params(text: str) -> nbformat.NotebookNode:
    return code(text, tags=("parameters",))


QUICKSTART = [
    md(
        r"""
        # bridgelab quickstart: one model, seven bridges

        A vision encoder, a **bridge** and a causal LM composed into one `MultimodalLM`, all built from config and
        offline (random weights, tiny sizes; under a minute on a laptop CPU). We will

        1. build a model from three names (encoder preset, bridge registry name, LM preset),
        2. collate two samples with `<image>` markers (one of them with two images) and run them through,
        3. look at the shapes on the way: encoder features per layer, visual tokens per media item, logits,
        4. swap the bridge by changing one name, and compare all seven bridges side by side,
        5. look at attention: the Perceiver's latents over image patches, Flamingo's media mask,
        6. generate a few tokens.

        The weights are random, so the attention maps are near uniform and the generated text is noise: the point is
        the plumbing. Trained models come from `experiments.load_run(run_dir)` (see `02_analyse_sweep.ipynb`).
        """
    ),
    params(
        r"""
        BRIDGE = "perceiver"  # any name of bridges.list_bridges()
        BRIDGE_SIZE = "tiny"  # a preset of bridges/presets.py, or None for the config defaults (paper sizes)
        ENCODER = "tiny_clip"  # an encoder preset (experiments/configs/encoder/): HF CLIP, 2 layers, 32x32
        SECOND_EXPERT = "tiny_convnet"  # Eagle mixes experts: its second one (a timm ConvNeXt)
        LLM = "tiny_llama"  # an LM preset (experiments/configs/llm/)
        MAX_NEW_TOKENS = 5
        OUT_DIR = "quickstart_out"  # tables and figures are written here
        SEED = 0
        """
    ),
    code(
        r"""
        import os
        import time
        from pathlib import Path

        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded: every component is built from config

        import matplotlib.pyplot as plt
        import pandas as pd
        import torch
        import transformers
        from einops import rearrange

        from bridges import list_bridges
        from bridges.presets import get_preset
        from llm_adapters import MultimodalCollator, build_multimodal_lm

        transformers.logging.set_verbosity_error()  # quiet the note on how new token rows are initialised
        torch.manual_seed(SEED)
        out_dir = Path(OUT_DIR)
        out_dir.mkdir(parents=True, exist_ok=True)
        print("bridges:", list_bridges())
        """
    ),
    md(
        r"""
        ## 1. Build a model from config

        `build_multimodal_lm(encoder, bridge, llm)` takes a spec for each part: a registry/preset name or a mapping
        with `name` and the fields to change. The bridge spec below is the registry name plus the fields of its `tiny`
        preset; a bridge that mixes several encoders (Eagle) gets a mapping `{expert name: encoder spec}`.
        """
    ),
    code(
        r'''
        def bridge_spec(name: str) -> dict:
            """The bridge's config: its registry name and the fields of the BRIDGE_SIZE preset."""
            fields = dict(get_preset(name, BRIDGE_SIZE).overrides) if BRIDGE_SIZE else {}
            fields.pop("pixel_unshuffle", None)  # keyed by the preset's own expert names, not ours
            return {"name": name, **fields}


        def encoder_spec(name: str):
            """One encoder, or CLIP + ConvNeXt for a bridge whose preset assumes several experts (Eagle)."""
            if len(get_preset(name, "tiny").io.encoders) > 1:
                return {"clip": ENCODER, "convnext": SECOND_EXPERT}
            return ENCODER


        def build(name: str):
            torch.manual_seed(SEED)
            return build_multimodal_lm(encoder_spec(name), bridge_spec(name), LLM).eval()


        model = build(BRIDGE)
        print(bridge_spec(BRIDGE))
        print(model.bridge.__class__.__name__, "| kind:", model.bridge.kind, "| encoders:", list(model.encoders.names))
        '''
    ),
    md(
        r"""
        ## 2. A batch: text with `<image>` markers, images in order of appearance

        A sample is a dict with `text` (one `<image>` per image, where the image sits in the text), `images` and, for
        training, `answer`. The collator applies the chat template, tokenises, masks the labels of the prompt and of
        the image placeholders, and stacks **all** media of the batch as `(N_media, F, C, H, W)` with
        `media_to_sample` saying which row each belongs to (no padding to the largest image count).
        """
    ),
    code(
        r'''
        def picture(colour: tuple[float, float, float], shape: str, size: int = 48) -> torch.Tensor:
            """A (3, size, size) image in [0, 1]: a coloured square or disc on grey."""
            yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
            c = size / 2
            inside = (
                ((yy - c) ** 2 + (xx - c) ** 2 < (size / 4) ** 2)
                if shape == "disc"
                else ((yy - c).abs().lt(size / 4) & (xx - c).abs().lt(size / 4))
            )
            img = torch.full((3, size, size), 0.5)
            return torch.where(inside, torch.tensor(colour)[:, None, None], img)


        red_square, blue_disc, green_disc = (
            picture((1, 0, 0), "square"),
            picture((0, 0, 1), "disc"),
            picture((0, 0.8, 0), "disc"),
        )
        samples = [
            {"text": "What colour is the shape in <image> ?", "images": [red_square], "answer": "red"},
            {"text": "<image> and <image> : same colour ?", "images": [blue_disc, green_disc], "answer": "no"},
        ]
        fig, axes = plt.subplots(1, 3, figsize=(6, 2))
        titles = ["sample 0", "sample 1, 1st", "sample 1, 2nd"]
        for ax, img, title in zip(axes, [red_square, blue_disc, green_disc], titles):
            ax.imshow(img.permute(1, 2, 0))
            ax.set_title(title, fontsize=9)
            ax.axis("off")
        plt.show()

        collate = MultimodalCollator.for_model(model, train=True)
        batch = collate(samples)
        tok = model.lm.tokenizer
        print("input_ids      ", tuple(batch.input_ids.shape))
        print(
            "pixel_values   ",
            {k: tuple(v.shape) for k, v in batch.pixel_values.items()}
            if isinstance(batch.pixel_values, dict)
            else tuple(batch.pixel_values.shape),
        )
        print("media_to_sample", batch.media_to_sample.tolist())
        print("sample 1 text  ", repr(tok.decode(batch.input_ids[1][batch.attention_mask[1] == 1])))
        print("sample 1 labels", repr(tok.decode(batch.labels[1][batch.labels[1] != -100])))
        '''
    ),
    md(
        r"""
        ## 3. Shapes on the way through

        The encoder returns only the layers the bridge asked for (`bridge.needs.layers`), as `(N_media·F, P, D)`
        patch tokens. A *prefix* bridge turns them into `(N_media, T, D_lm)` tokens spliced in place of each
        `<image>`; an *inject* bridge (Flamingo, Hyper Attention) encodes a visual memory that layers inserted in
        the LM read, so the text length does not grow.
        """
    ),
    code(
        r"""
        def shapes(model, batch) -> dict:
            with torch.no_grad():
                feats = model.encode_media(batch)
                if model.bridge.kind == "prefix":
                    visual = model.visual_tokens(batch)
                else:
                    visual = model.bridge.encode(feats, num_frames=batch.num_frames)
                out = model(batch)
            for name, f in feats.items():
                for layer, h in zip(f.layers, f.hidden):
                    print(f"encoder '{name}' layer {layer}: {tuple(h.shape)}  (grid {f.grid}, +{f.num_prefix} CLS)")
            prefix = model.bridge.kind == "prefix"
            what = "visual tokens (N_media, T, D_lm)" if prefix else "visual memory (N_media, T, D)"
            print(f"{what}: {tuple(visual.shape)}")
            print(f"text tokens {tuple(batch.input_ids.shape)} -> logits {tuple(out.logits.shape)}, "
                  f"loss {out.loss.item():.3f}")
            return {"visual": tuple(visual.shape), "logits": tuple(out.logits.shape)}


        print(f"logits shape: {shapes(model, batch)['logits']}")
        """
    ),
    md(
        r"""
        ## 4. Swap the bridge: change one name

        Same encoder, same LM, same batch; only the bridge name changes. The table is the budget a fair comparison
        has to report: parameters the bridge adds, visual tokens per media item, and the LM tokens each image costs
        (inject bridges add none to the sequence).
        """
    ),
    code(
        r"""
        models, rows = {}, []
        for name in list_bridges():
            m = build(name)
            b = MultimodalCollator.for_model(m, train=True)(samples)
            start = time.perf_counter()
            with torch.no_grad():
                out = m(b)
            summary = m.summary()
            rows.append(
                {
                    "bridge": name,
                    "kind": m.bridge.kind,
                    "encoders": "+".join(m.encoders.names),
                    "bridge_params": sum(p.numel() for p in m.bridge.parameters()),
                    "visual_tokens_per_media": summary["visual_tokens_per_media"],
                    "lm_tokens_per_media": summary["lm_tokens_per_media"],
                    "logits": tuple(out.logits.shape),
                    "forward_ms": round(1000 * (time.perf_counter() - start), 1),
                }
            )
            models[name] = m
        table = pd.DataFrame(rows).set_index("bridge")
        table.to_csv(out_dir / "bridges.csv")
        table
        """
    ),
    md(
        r"""
        ## 5. Attention

        **Perceiver resampler**: each latent query reads the image patches (and the latents) through cross-attention.
        The module computes it with `scaled_dot_product_attention`, which does not return weights, so a forward hook
        captures the inputs of the first attention layer and the weights are recomputed from the module's own
        projections as `softmax(q kᵀ / √d)`; the check below confirms they reproduce the module's output.
        """
    ),
    code(
        r'''
        def perceiver_attention(attn, x, latents) -> torch.Tensor:
            """Weights (N, heads, R, S + R) of one PerceiverAttention layer, from its projections."""
            assert attn.q_norm is None, "recomputation below assumes qk_norm=False"
            x, latents = attn.norm_media(x), attn.norm_latents(latents)
            kv_in = torch.cat([x, latents], dim=1)
            k, v = attn.to_kv(kv_in).chunk(2, -1) if attn.fused_kv else (attn.to_k(kv_in), attn.to_v(kv_in))
            q, k, v = (rearrange(t, "n l (h d) -> n h l d", h=attn.heads) for t in (attn.to_q(latents), k, v))
            weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)
            return weights, attn.to_out(rearrange(weights @ v, "n h l d -> n l (h d)"))


        perceiver = models["perceiver"]
        first = perceiver.bridge.resampler.layers[0][0]
        captured = {}
        hook = first.register_forward_hook(lambda mod, args, output: captured.update(args=args, output=output))
        pb = MultimodalCollator.for_model(perceiver, train=True)(samples)
        with torch.no_grad():
            perceiver(pb)
            weights, recomputed = perceiver_attention(first, *captured["args"])
        hook.remove()
        torch.testing.assert_close(recomputed, captured["output"], atol=1e-5, rtol=1e-4)

        grid = perceiver.encoders[perceiver.encoders.names[0]].patch_grid
        patches = grid[0] * grid[1]
        maps = rearrange(weights.mean(1)[..., :patches], "n r (h w) -> n r h w", h=grid[0])  # (N_media, R, h, w)
        print(
            f"attention weights {tuple(weights.shape)} = (N_media, heads, latents, patches + latents); "
            f"share on patches: {weights[..., :patches].sum(-1).mean():.2f}"
        )

        n_show = min(8, maps.shape[1])
        size = (1.4 * (n_show + 1), 1.5 * maps.shape[0])
        fig, axes = plt.subplots(maps.shape[0], n_show + 1, figsize=size, squeeze=False)
        images = [red_square, blue_disc, green_disc]
        for i in range(maps.shape[0]):
            axes[i, 0].imshow(images[i].permute(1, 2, 0))
            axes[i, 0].set_title(f"media {i}", fontsize=8)
            for r in range(n_show):
                axes[i, r + 1].imshow(maps[i, r], cmap="viridis")
                axes[i, r + 1].set_title(f"latent {r}", fontsize=8)
        for ax in axes.flat:
            ax.axis("off")
        fig.suptitle("Perceiver layer 0: attention of each latent over the patch grid (heads averaged)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "perceiver_attention.png", dpi=100)
        plt.show()
        '''
    ),
    md(
        r"""
        **Flamingo** inserts gated cross-attention before LM layers. Which media a text token may attend to is a mask
        built from the `<image>` positions: by default only the most recent image at or before the token
        (`immediate`); mPLUG-Owl3's Hyper Attention lets a token see every image strictly before it. Both come from
        the `InjectionContext` the model builds for a forward pass.
        """
    ),
    code(
        r"""
        flamingo = models["flamingo"]
        fb = MultimodalCollator.for_model(flamingo, train=True)(samples)
        with torch.no_grad():
            ctx = flamingo.injection_context(fb)
        row = 1  # the sample with two images
        keep = fb.attention_mask[row] == 1
        tokens = [repr(flamingo.lm.tokenizer.decode(t))[1:-1] for t in fb.input_ids[row][keep]]
        own = (fb.media_to_sample == row).nonzero().flatten()
        fig, axes = plt.subplots(1, 2, figsize=(7, 0.22 * len(tokens) + 1), sharey=True)
        for ax, mode in zip(axes, ["immediate", "strictly_after"]):
            mask = ctx.media_mask(mode)[row][keep][:, own]  # (tokens, this sample's media)
            ax.imshow(mask.float(), cmap="Greys", aspect="auto", vmin=0, vmax=1)
            ax.set_xticks(range(len(own)), [f"image {i}" for i in range(len(own))])
            ax.set_title(mode, fontsize=9)
        axes[0].set_yticks(range(len(tokens)), tokens, fontsize=7)
        fig.suptitle("which image each text token may attend to (black = yes)", fontsize=9)
        fig.tight_layout()
        fig.savefig(out_dir / "flamingo_media_mask.png", dpi=100)
        plt.show()
        print("Flamingo gates at init (tanh(0) = 0, so the LM starts unchanged):", flamingo.bridge.gate_values())
        """
    ),
    md(
        r"""
        ## 6. Generate

        The generation collator leaves the answers out and pads on the left; `generate` uses the LM's KV cache. With
        random weights the continuation is noise; after training (see the sweep notebook) it is the answer.
        """
    ),
    code(
        r"""
        prompts = MultimodalCollator.for_model(model, train=False)(samples)
        new_tokens = model.generate(prompts, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        print(f"generated ids {tuple(new_tokens.shape)}")
        for sample, ids in zip(samples, new_tokens):
            print(f"{sample['text']!r} -> {model.lm.tokenizer.decode(ids, skip_special_tokens=True)!r}")
        """
    ),
]


ANALYSE_SWEEP = [
    md(
        r"""
        # Analyse a sweep: table, trade-off plots, learning curves, a trained model back

        A sweep is a folder of run directories (`run.json`, `metrics.jsonl`, `eval/<task>/scores.json`,
        `efficiency.json`). `experiments.load_runs` reads them into one DataFrame; `summarize` gives mean ± std over
        seeds with the budget (visual tokens, trainable parameters, FLOPs, throughput, memory) next to the score.

        Set `SWEEP_DIR` to analyse a sweep you already ran (e.g. `runs/quick_ablation` after `make demo`). Left at
        `None`, the notebook first runs a small sweep itself through the real harness (`experiments.run`, the same
        code path as `bridgelab train`, configs composed from `experiments/configs/` by Hydra), two bridges x two
        seeds, on one of two data sets (`DATA`):

        * `"colours"` (default, about a minute on a laptop CPU from a fresh checkout): a small data source defined in
          this notebook, with a tiny random encoder and LM;
        * `"world"`: the embedded world of `make demo`, with its frozen pretrained ViT (+ ConvNeXt expert for Eagle)
          and LM. `WORLD = "default"` reuses the backbones `make demo` cached (building them the first time takes
          minutes); `"tiny"` builds throwaway ones in seconds (for tests: they have barely learned anything).
        """
    ),
    params(
        r"""
        SWEEP_DIR = None  # an existing sweep to analyse; None = run the small sweep below first
        DATA = "colours"  # "colours" (defined below) | "world" (the embedded world of `make demo`)
        WORLD = "default"  # with DATA="world": a world/ config ("default" as `make demo`, "tiny" for tests)
        WORLD_CACHE = None  # where world backbones are cached; None = the default ($BRIDGELAB_CACHE or ~/.cache)
        RUN_DIR = "analyse_sweep_runs"  # where the sweep writes its runs
        PLOTS_DIR = "analyse_sweep_plots"
        BRIDGE_NAMES = ["mlp", "perceiver"]
        SEEDS = [0, 1]
        STEPS = 150  # optimiser steps per run (about 10 s each on one CPU core)
        BATCH_SIZE = 16
        N_TRAIN, N_EVAL = 256, 32  # samples per task
        """
    ),
    code(
        r"""
        import os
        from pathlib import Path

        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        import torch
        import transformers
        from IPython.display import Image, Markdown, display

        import experiments
        from experiments.analysis import load_runs, plot_learning_curves, plot_tradeoffs, summarize, to_markdown

        transformers.logging.set_verbosity_error()
        """
    ),
    md(
        r"""
        ## 1. A small sweep through the harness (skipped when `SWEEP_DIR` is set)

        The `colours` data: 16x16 pictures of a coloured square, two tasks: `colour` (one image, which colour?) and
        `same_colour` (two images, the same colour? yes/no). It is registered as a data source named `nb_colours`,
        exactly as a user's own data source would be (a module listed in the config's `plugins` registers it on
        import; here the notebook's kernel is that module).

        With `colours` the encoder and LM are tiny and random, so stage `align` trains the bridge **and** the LM; a
        frozen random LM learns nothing (DESIGN.md). At the default 150 steps both bridges learn `colour` (exact
        match near 1.0, chance 0.25) while `same_colour`, which needs the two images compared, stays near chance:
        the kind of gap the table is for. With `world` the stage is the config's own `align` (bridge and new token
        rows only, encoder and LM frozen and pretrained), on the world's `attribute` and `compare` tasks.

        Everything else is the harness's default path: stages with asserted freezing, checkpoints, evaluation by
        generation, `efficiency.json`. Rerunning the cell skips finished runs.
        """
    ),
    code(
        r'''
        from dataclasses import dataclass

        from experiments.harness.data import DATA_SOURCES, DataSource, TaskData

        COLOURS = {"red": (0.9, 0.1, 0.1), "green": (0.1, 0.8, 0.1), "blue": (0.1, 0.2, 0.9), "yellow": (0.9, 0.9, 0.1)}


        @dataclass
        class ColourConfig:
            """Samples per task and image side."""

            n_train: int = 256
            n_eval: int = 32
            size: int = 16


        def colour_samples(n: int, size: int, seed: int, pairs: bool) -> list[dict]:
            gen = torch.Generator().manual_seed(seed)
            names = list(COLOURS)

            def image(colour: str) -> torch.Tensor:
                img = 0.3 + 0.1 * torch.rand(3, size, size, generator=gen)
                y, x = torch.randint(0, size // 2, (2,), generator=gen).tolist()
                img[:, y : y + size // 2, x : x + size // 2] = torch.tensor(COLOURS[colour])[:, None, None]
                return img

            out = []
            for _ in range(n):
                a, b = (names[i] for i in torch.randint(len(names), (2,), generator=gen).tolist())
                if pairs:
                    b = a if torch.rand((), generator=gen) < 0.5 else b  # about half "yes"
                    out.append(
                        {
                            "text": "<image> <image> same colour ?",
                            "images": [image(a), image(b)],
                            "answer": "yes" if a == b else "no",
                            "meta": {"question_type": "same_colour", "choices": ["yes", "no"]},
                        }
                    )
                else:
                    out.append(
                        {
                            "text": "<image> colour ?",
                            "images": [image(a)],
                            "answer": a,
                            "meta": {"question_type": "colour", "choices": names, "image_answers": [a]},
                        }
                    )
            return out


        if "nb_colours" not in DATA_SOURCES:

            @DATA_SOURCES.register("nb_colours", ColourConfig)
            class NotebookColours(DataSource):
                def build(self, seed: int) -> TaskData:
                    c = self.config
                    train = {
                        "colour": colour_samples(c.n_train, c.size, 100 + seed, False),
                        "same_colour": colour_samples(c.n_train, c.size, 200 + seed, True),
                    }
                    evals = {
                        "colour": colour_samples(c.n_eval, c.size, 1, False),
                        "same_colour": colour_samples(c.n_eval, c.size, 2, True),
                    }
                    return TaskData(train, evals)
        '''
    ),
    code(
        r'''
        import logging
        import time

        from omegaconf import OmegaConf

        from bridges.presets import get_preset


        def bridge_spec(name: str) -> dict:
            """The bridge at its ``tiny`` preset size (bridges/presets.py) rather than the config's paper sizes."""
            fields = dict(get_preset(name, "tiny").overrides)
            fields.pop("pixel_unshuffle", None)  # keyed by the preset's expert names
            return {"name": name, **fields}


        def run_config(bridge: str, seed: int) -> dict:
            """The run's config, composed by Hydra from experiments/configs/ as ``bridgelab train`` would, then
            edited."""
            overrides = [
                f"bridge={bridge}",
                f"seed={seed}",
                f"name={bridge}-seed{seed}",
                f"stages.align.max_steps={STEPS}",
                f"train.effective_batch_size={BATCH_SIZE}",
                "train.log_every_n_steps=2",
                "train.checkpoint_every_n_steps=0",
                "trainer.loggers=[]",
                "trainer.progress_bar=false",
                "eval.max_new_tokens=3",
                "efficiency.skip_steps=2",
            ]
            if DATA == "world":
                overrides += [f"world={WORLD}", "data=world", f"data.train_size={N_TRAIN}", f"data.eval_size={N_EVAL}"]
            cfg = OmegaConf.to_container(experiments.compose(overrides), resolve=True)
            cfg["bridge"].update(bridge_spec(bridge))
            multi_expert = len(get_preset(bridge, "tiny").io.encoders) > 1
            if DATA == "world":  # the world's pretrained backbones, frozen by the config's align stage
                two = {"vit": {"world": "vit"}, "expert": {"world": "expert"}}
                cfg["encoder"] = two if multi_expert else {"world": "vit"}
                cfg["llm"] = {"world": "lm"}
                if WORLD_CACHE is not None:
                    cfg["world"]["cache_dir"] = str(WORLD_CACHE)
                return cfg
            cfg["encoder"] = {"clip": "tiny_clip", "convnext": "tiny_convnet"} if multi_expert else "tiny_clip"
            cfg["llm"] = "tiny_llama"
            cfg["world"] = None
            cfg["data"] = {"name": "nb_colours", "n_train": N_TRAIN, "n_eval": N_EVAL}
            cfg["stages"]["align"].update(trainable=["bridge*", "lm", "lm.new_tokens"], lr=3e-3, warmup_ratio=0.1)
            return cfg


        logging.getLogger("lightning").setLevel(logging.ERROR)
        if SWEEP_DIR is None:
            start = time.perf_counter()
            for bridge in BRIDGE_NAMES:
                for seed in SEEDS:
                    result = experiments.run(run_config(bridge, seed), run_dir=Path(RUN_DIR) / f"{bridge}-seed{seed}")
                    print(
                        f"{bridge:>10} seed {seed}: {result.status}"
                        f"{' (skipped, finished earlier)' if result.skipped else ''}"
                        f"  mean exact match {result.metrics.get('eval/mean_exact_match', float('nan')):.3f}"
                    )
            print(f"sweep took {time.perf_counter() - start:.0f} s")
            SWEEP_DIR = RUN_DIR
        '''
    ),
    md(
        r"""
        ## 2. Load the runs

        One row per (run, task). Failed or unfinished runs are kept with their `status` and `error`, so nothing
        disappears silently from a table.
        """
    ),
    code(
        r"""
        df = load_runs(SWEEP_DIR)
        print(
            f"{df['run'].nunique()} runs, {len(df)} rows, "
            f"status: {df.drop_duplicates('run')['status'].value_counts().to_dict()}"
        )
        df[
            [
                "run",
                "bridge",
                "seed",
                "task",
                "exact_match",
                "visual_tokens_per_media",
                "trainable_params",
                "train_samples_per_s",
            ]
        ]
        """
    ),
    md(
        r"""
        ## 3. Mean ± std over seeds, with the budget beside the score
        """
    ),
    code(
        r"""
        table = summarize(df)
        markdown = to_markdown(table)
        plots = Path(PLOTS_DIR)
        plots.mkdir(parents=True, exist_ok=True)
        (plots / "summary.md").write_text(markdown + "\n")
        display(Markdown(markdown))
        """
    ),
    md(
        r"""
        ## 4. Plots: accuracy against visual tokens and throughput, learning curves

        One point per bridge (error bars: std over seeds), a panel per task; chance is dotted when the data records
        it.
        """
    ),
    code(
        r"""
        written = plot_tradeoffs(df, plots)
        written.append(plot_learning_curves(df, plots / "learning_curves.png"))
        for path in written:
            print(path)
            display(Image(filename=str(path)))
        """
    ),
    md(
        r"""
        ## 5. A trained model back from its run directory

        `experiments.load_run(run_dir)` reads the resolved config from `run.json`, rebuilds the model as the run did
        and loads the trained weights of its last checkpoint; `answer` collates samples and decodes greedily.
        """
    ),
    code(
        r"""
        from experiments.harness.rundir import RunDir

        finished = df[df["status"] == "finished"]
        best_run = finished.groupby("run")["exact_match"].mean().idxmax()
        run_dir = finished.loc[finished["run"] == best_run, "run_dir"].iloc[0]
        loaded = experiments.load_run(run_dir)
        print(f"{best_run}: bridge {loaded.model.summary()['bridge']}, weights from {loaded.checkpoint}")

        # what the run itself predicted during evaluation (eval/<task>/predictions.jsonl)
        for task in sorted(finished["task"].dropna().unique()):
            for record in RunDir(run_dir).read_predictions(task)[:3]:
                print(f"{task:>12}: {record['prompt']!r:38} answer {record['answer']!r:8} "
                      f"predicted {record['prediction']!r}")

        if SWEEP_DIR == RUN_DIR and DATA == "colours":  # ask the rebuilt model about pictures it has never seen
            fresh = colour_samples(6, 16, seed=12345, pairs=False)
            answers = loaded.answer(fresh)
            print("fresh pictures:", [(s["answer"], a) for s, a in zip(fresh, answers)])
        """
    ),
]


YOUR_DATA = [
    md(
        r"""
        # Your data: a LLaVA JSON in, two bridges trained, `bridgelab eval`, one table

        Real instruction data comes as LLaVA conversation JSON plus an image folder (LLaVA-558K / 665K, ShareGPT4V,
        LLaVA-Video-178K; `README.md` lists what each source reads). This notebook walks the whole path on a small
        LLaVA JSON it writes itself, so it runs offline:

        1. write the JSON: `bridgelab export-world DIR --format llava` turns the embedded world's tasks into PNG files
           and LLaVA records (the same samples `data=world` trains on, bit for bit);
        2. train two bridges on it with `bridgelab train data=llava data.path=... data.image_folder=...`;
        3. score both with `bridgelab eval RUN_DIR` twice: by generation and by likelihood of the closed answer set
           (`eval.mode=loglikelihood`), each into its own directory (`--out`);
        4. read the scores with `load_runs` and compare them in one table.

        Point `data.path` / `data.image_folder` at your own files and the rest stays the same.
        """
    ),
    params(
        r"""
        EXPORT_DIR = "your_data"  # where the LLaVA JSON and its images are written
        TASKS = ["attribute", "compare"]  # world tasks to export (one image; two images)
        N_TRAIN, N_EVAL = 256, 32  # records per task
        BRIDGES = ["mlp", "perceiver"]
        STEPS = 150  # optimiser steps per bridge (experiment=smoke sizes; about a minute each on one CPU core)
        WORLD = "default"  # the frozen pretrained backbones: "default" as `make demo` (cached), "tiny" for tests
        WORLD_CACHE = None  # where world backbones are cached; None = the default ($BRIDGELAB_CACHE or ~/.cache)
        RUN_DIR = "your_data_runs"
        EVAL_DIR = "your_data_evals"
        """
    ),
    code(
        r"""
        import json
        import logging
        import os
        from pathlib import Path

        os.environ.setdefault("HF_HUB_OFFLINE", "1")

        import transformers
        from IPython.display import display

        from experiments.analysis import load_runs
        from experiments.cli import main as bridgelab

        transformers.logging.set_verbosity_error()
        logging.getLogger("lightning").setLevel(logging.ERROR)
        """
    ),
    md(
        r"""
        ## 1. A LLaVA JSON

        `export-world` prints the `data=...` overrides that read its output back. Each record is a LLaVA record:
        `id`, `image` (a path under the image folder, or a list for several images), `conversations` with one
        `<image>` marker per image; `meta` carries the world's reference levels (chance, the answer set).
        """
    ),
    code(
        r"""
        bridgelab(["export-world", EXPORT_DIR, "--format", "llava", "--tasks", *TASKS,
                   "--train-size", str(N_TRAIN), "--eval-size", str(N_EVAL)])
        records = json.loads(Path(EXPORT_DIR, "train.json").read_text())
        two_images = next(r for r in records if isinstance(r.get("image"), list))
        print(json.dumps({k: two_images[k] for k in ("id", "image", "conversations")}, indent=1))
        print(f"{len(records)} training records, e.g. {sorted({r['meta']['task'] for r in records})}")
        """
    ),
    md(
        r"""
        ## 2. Train two bridges on it

        The same overrides a shell user would type. `data.task_field=meta.task` keeps the two tasks apart (one
        task per micro-batch, each scored on its own); without it the whole file is one task named `llava`.
        The run's own evaluation is switched off here: step 3 scores the runs apart from training.
        """
    ),
    code(
        r"""
        DATA = ["data=llava", f"data.path={EXPORT_DIR}/train.json", f"data.eval_path={EXPORT_DIR}/test.json",
                f"data.image_folder={EXPORT_DIR}", "data.task_field=meta.task"]


        def train(bridge: str) -> None:
            overrides = ["experiment=smoke", f"world={WORLD}", f"bridge={bridge}", *DATA,
                         f"stages.align.max_steps={STEPS}", f"run_dir={RUN_DIR}/{bridge}", "trainer.progress_bar=false",
                         "train.log_every_n_steps=1", "eval.enabled=false"]
            if WORLD_CACHE is not None:
                overrides.append(f"+world.cache_dir={WORLD_CACHE}")
            assert bridgelab(["train", *overrides]) == 0
            record = json.loads(Path(RUN_DIR, bridge, "run.json").read_text())
            print(f"{bridge}: {record['status']}, final train loss {record['metrics']['train/loss']:.3f}")


        train(BRIDGES[0])
        """
    ),
    code(
        r"""
        for bridge in BRIDGES[1:]:
            train(bridge)
        """
    ),
    md(
        r"""
        ## 3. `bridgelab eval`, by generation and by likelihood

        `bridgelab eval RUN_DIR` rebuilds the model from the run directory alone and scores it on the run's data (or
        on `data=...` overrides: any source, e.g. another LLaVA JSON); `--out` keeps each evaluation in its own
        directory, which `load_runs` reads like a run.
        """
    ),
    code(
        r"""
        for bridge in BRIDGES:
            for mode in ("generate", "loglikelihood"):
                assert bridgelab(["eval", f"{RUN_DIR}/{bridge}", f"eval.mode={mode}", "--out",
                                  f"{EVAL_DIR}/{bridge}-{mode}"]) == 0
        """
    ),
    md(
        r"""
        ## 4. One table

        Exact match per bridge, task and scoring mode, beside chance. Likelihood scoring picks the most probable
        answer of the task's closed set, so it reads small, briefly trained models better than free generation.
        """
    ),
    code(
        r"""
        df = load_runs(EVAL_DIR)
        df["mode"] = df["run"].str.rsplit("-", n=1).str[1]
        scores = df.pivot_table(index=["bridge", "task"], columns="mode", values="exact_match")
        scores["chance"] = df.groupby(["bridge", "task"])["chance"].first()
        table = scores.reset_index().rename_axis(columns=None)
        table.to_csv(Path(EVAL_DIR) / "comparison.csv", index=False)
        display(table.round(3))
        """
    ),
]


def save(cells: list[nbformat.NotebookNode], path: Path) -> None:
    for index, cell in enumerate(cells):
        cell.id = f"cell-{index:02d}"  # stable ids: regenerating an unchanged notebook gives the same file
    nb = new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"display_name": "Python 3 (ipykernel)", "language": "python", "name": "python3"}
    nb.metadata["language_info"] = {"name": "python"}
    nbformat.validate(nb)
    nbformat.write(nb, path)


def main() -> None:
    save(QUICKSTART, HERE / "01_quickstart.ipynb")
    save(ANALYSE_SWEEP, HERE / "02_analyse_sweep.ipynb")
    save(YOUR_DATA, HERE / "03_your_data.ipynb")
    import nb_reproductions  # its own file (this one is long); run as a script, notebooks/ is on sys.path

    save(nb_reproductions.cells(md, code, params), HERE / "04_reproductions.ipynb")


if __name__ == "__main__":
    main()
