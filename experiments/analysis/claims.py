"""The registry of paper claims that REPRODUCTIONS.md checks: one :class:`Claim` per ablation item.

Each claim names the paper, where the claim is made (table or figure, taken from the sweep config's header and
/work/shared/BRIDGES.md; "[recall]" where that file could not re-read the number in the paper), the sweep that tests
it (``experiments/configs/experiment/repro/<experiment>.yaml``), the task(s) it is judged on, the two variants
compared and the direction the paper expects. A variant is a set of column filters on the sweep's ``summary.csv``
(the swept config keys, with the override's value as text, e.g. ``{"bridge.projector": "mlp2x_gelu"}``).

Two items are not a comparison of two variants: the distractor-resistance curve (``kind="curve"``, read from
``curve.csv``) and Flamingo's gate figure (``kind="gates"``, read from ``gates.csv``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

Direction = Literal["better", "no_worse"]
Kind = Literal["compare", "curve", "gates"]


@dataclass(frozen=True)
class Variant:
    """One arm of a comparison.

    Attributes:
        label: how the report names it.
        where: column -> value filters on ``summary.csv`` (values compared as normalised text).
    """

    label: str
    where: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Claim:
    """One ablation item of REPRODUCTIONS.md.

    Attributes:
        key: unique id, ``<experiment>.<what>``.
        paper: authors and year.
        source: table / figure / section of the claim.
        claim: the claim in one sentence.
        experiment: the sweep (``bridgelab sweep experiment=repro/<experiment>``); results in
            results/repro/<experiment>.
        tasks: the tasks the verdict is computed on (others of the sweep are shown as controls).
        expected: the paper's choice; baseline: what it is compared against.
        direction: ``better``: the paper finds ``expected`` above ``baseline``; ``no_worse``: as good (e.g. at fewer
            tokens), so "within noise" is what the paper predicts too.
        kind: ``compare`` (two variants), ``curve`` (curve.csv), ``gates`` (gates.csv).
        note: caveats (e.g. a toolkit ablation without a published number).
    """

    key: str
    paper: str
    source: str
    claim: str
    experiment: str
    tasks: tuple[str, ...]
    expected: Variant = Variant("")
    baseline: Variant = Variant("")
    direction: Direction = "better"
    kind: Kind = "compare"
    note: str = ""

    @property
    def sweep_command(self) -> str:
        return f"bridgelab sweep experiment=repro/{self.experiment}"

    @property
    def collect_command(self) -> str:
        return f"python -m experiments.analysis.repro collect runs/repro/{self.experiment}"


FLAMINGO = "Flamingo (Alayrac et al., 2022)"
BLIP2 = "BLIP-2 (Li et al., 2023)"
INSTRUCTBLIP = "InstructBLIP (Dai et al., 2023)"
LLAVA = "LLaVA-1.5 (Liu et al., 2023)"
EAGLE = "Eagle (Shi et al., 2024)"
MMFUSER = "MMFuser (Cao et al., 2024)"
MPLUG = "mPLUG-Owl3 (Ye et al., 2024)"
PAPERS = (FLAMINGO, BLIP2, INSTRUCTBLIP, LLAVA, EAGLE, MMFUSER, MPLUG)

FINE = ("fine_detail",)
MULTI = ("distractor",)  # the Flamingo sweeps: repro/flamingo_base (multi-image, N=4)
# mPLUG-Owl3's distractor-resistance figure (source, claim), checked at two budgets
DISTRACTOR_CURVE = ("Sec. 4.4 'distractor resistance' figure (up to 400 images) [recall]",
                    "Hyper Attention keeps its accuracy as distractor images are added, and fits more images than "
                    "prefix bridges.")
FROZEN = '["bridge*","lm.new_tokens"]'
# repro/flamingo_layers_deep's placements on the 4-layer LM (the LM layers a block sits before)
EVERY_1 = Variant("every 1", {"bridge.xattn_layers": "[0,1,2,3]"})
EVERY_2 = Variant("every 2", {"bridge.xattn_layers": "[1,3]"})
EVERY_4 = Variant("every 4", {"bridge.xattn_layers": "[3]"})
MIDDLE = Variant("middle", {"bridge.xattn_layers": "[2]"})
DEEP_LM = "4-layer LM (world=deep)"
ONE_ON_TOP = f"{DEEP_LM}, where every 4th is a single block before the last layer"

CLAIMS: tuple[Claim, ...] = (
    Claim("flamingo_gate.tanh", FLAMINGO, "Table 3 (ii) 'tanh gating' (70.7 vs 66.5 without) [recall]",
          "tanh-gated xattn-dense residuals (alpha initialised at 0) beat ungated ones.", "flamingo_gate",
          MULTI, Variant("gate=scalar", {"bridge.gate": "scalar"}),
          Variant("gate=none", {"bridge.gate": "none"})),
    Claim("flamingo_gate.vector", FLAMINGO, "Table 3 (ii) 'tanh gating'; per-channel gate is a toolkit variant",
          "a per-channel gate does as well as the paper's scalar gate.", "flamingo_gate", MULTI,
          Variant("gate=scalar", {"bridge.gate": "scalar"}), Variant("gate=vector", {"bridge.gate": "vector"}),
          "no_worse", note="not a paper number: the paper has a scalar gate only"),
    Claim("flamingo_layers.every", FLAMINGO, "Table 3 (iii) 'cross-attention frequency' (every 70.7, every 2nd 68.2) "
          "[recall]", "cross-attention before every LM layer beats every second layer.", "flamingo_layers",
          MULTI, Variant("every 1", {"bridge.cross_attn_every_n_layers": "1"}),
          Variant("every 2", {"bridge.cross_attn_every_n_layers": "2"})),
    Claim("flamingo_layers_deep.every_vs_fourth", FLAMINGO, "Table 3 (iii) 'cross-attention frequency' (every 70.7, "
          "every 4th 68.8) [recall]", "cross-attention before every LM layer beats every fourth layer.",
          "flamingo_layers_deep", MULTI, EVERY_1, EVERY_4, note=ONE_ON_TOP),
    Claim("flamingo_layers_deep.fourth_vs_second", FLAMINGO, "Table 3 (iii) 'cross-attention frequency' (every 2nd "
          "68.2, every 4th 68.8, at 1.24 vs 1.02 s per step) [recall]",
          "a block every fourth layer does as well as every second, at fewer parameters and faster steps.",
          "flamingo_layers_deep", MULTI, EVERY_4, EVERY_2, "no_worse",
          note=f"{ONE_ON_TOP}; in the paper's 24-layer LM it is 6 blocks"),
    Claim("flamingo_layers_deep.every_vs_middle", FLAMINGO, "Table 3 (iii) 'cross-attention frequency' (every 70.7, "
          "single in the middle 59.8) [recall]", "cross-attention before every LM layer beats a single block in the "
          "middle of the LM.", "flamingo_layers_deep", MULTI, EVERY_1, MIDDLE, note=DEEP_LM),
    Claim("flamingo_layers_deep.gates", FLAMINGO, "appendix figure 'tanh gating values per layer over training' "
          "[recall]", "|tanh alpha| starts at 0 and grows during training, more in deeper layers.",
          "flamingo_layers_deep", MULTI, kind="gates", note="the every-layer runs on the 4-layer LM"),
    Claim("flamingo_resampler.perceiver_vs_mlp", FLAMINGO, "Table 3 (v) 'resampler' (Perceiver 70.7, MLP 66.6) "
          "[recall]", "the Perceiver resampler beats a per-token MLP.", "flamingo_resampler", MULTI,
          Variant("perceiver", {"bridge.resampler": "perceiver"}), Variant("mlp", {"bridge.resampler": "mlp"})),
    Claim("flamingo_resampler.perceiver_vs_transformer", FLAMINGO, "Table 3 (v) 'resampler' (Perceiver 70.7, "
          "Transformer 66.7) [recall]", "the Perceiver resampler beats a plain Transformer over the visual tokens.",
          "flamingo_resampler", MULTI, Variant("perceiver", {"bridge.resampler": "perceiver"}),
          Variant("transformer", {"bridge.resampler": "transformer"})),
    Claim("flamingo_media.immediate", FLAMINGO, "Sec. 2.3 / Table 3 'per-image attention' [recall]",
          "each token attending to the image just before it beats attending to all previous images.",
          "flamingo_media", MULTI, Variant("immediate", {"bridge.media_attention": "immediate"}),
          Variant("all_previous", {"bridge.media_attention": "all_previous"})),
    Claim("flamingo_frozen.frozen_lm", FLAMINGO, "Table 3 (vi) 'freezing the LM' (70.7 vs 62.7 unfrozen) [recall]",
          "keeping the pretrained LM frozen beats training it with the bridge.", "flamingo_frozen",
          MULTI, Variant("frozen LM", {"stages.align.trainable": FROZEN}),
          Variant("unfrozen LM", {"stages.align.trainable": '["bridge*","lm.new_tokens","lm"]'})),
    Claim("flamingo_video.frame_embeddings", FLAMINGO, "Sec. 2.1 / App. A: learned temporal embeddings of video "
          "frames", "learned per-frame embeddings let the (otherwise order-blind) resampler tell the frames' order.",
          "flamingo_video", ("video_motion",), Variant("4 frame embeddings", {"bridge.max_num_frames": "4"}),
          Variant("none", {"bridge.max_num_frames": "null"}),
          note="the paper states the design; it reports no ablation number for it"),
    Claim("flamingo_gate.figure", FLAMINGO, "appendix figure 'tanh gating values per layer over training' [recall]",
          "|tanh alpha| starts at 0 and grows during training, more in deeper layers.", "flamingo_gate",
          MULTI, kind="gates"),
    Claim("blip2_queries.32_vs_8", BLIP2, "Sec. 3 (32 queries, the bottleneck); the sweep is a toolkit ablation",
          "32 learned queries carry more of the image than 8.", "blip2_queries", FINE,
          Variant("32 queries", {"bridge.num_query_tokens": "32"}),
          Variant("8 queries", {"bridge.num_query_tokens": "8"}),
          note="BRIDGES.md 2.9 lists the query count as a toolkit ablation; the paper reports no such sweep"),
    Claim("blip2_stage1.representation", BLIP2, "Sec. 4 figure 'effect of vision-language representation learning' "
          "[recall]", "stage-1 representation learning (ITC/ITM/ITG) before stage 2 improves the downstream result.",
          "blip2_stage1", FINE, Variant("stage 1 on", {"stages": "qformer_stage1"}),
          Variant("stage 1 off", {"stages": "align"}),
          note="assumes the sweep swaps the stages group (stages=align,qformer_stage1, "
               "experiments/configs/stages/qformer_stage1.yaml); match the filter once repro/blip2_stage1 exists"),
    Claim("instructblip.instruction_aware", INSTRUCTBLIP, "Table 4 'instruction-aware visual feature extraction'",
          "feeding the instruction to the Q-Former's queries helps.", "instructblip", ("attribute", "fine_detail"),
          Variant("instruction-aware", {"bridge.instruction_aware": "true"}),
          Variant("not instruction-aware", {"bridge.instruction_aware": "false"})),
    Claim("llava15.mlp_connector", LLAVA, "ablation table '+MLP VL connector' (MME 1323.8 -> 1355.2) [recall]",
          "a two-layer MLP connector beats the linear projection.", "llava15", ("attribute", "fine_detail"),
          Variant("mlp2x_gelu", {"bridge.projector": "mlp2x_gelu", "bridge.select_layer": "-2"}),
          Variant("linear", {"bridge.projector": "linear", "bridge.select_layer": "-2"})),
    Claim("llava15.penultimate", LLAVA, "LLaVA (v1) ScienceQA ablation: penultimate 90.92 vs last 89.96 [recall]",
          "features of the penultimate ViT layer (-2) beat the last layer (-1).", "llava15",
          ("attribute", "fine_detail"),
          Variant("layer -2", {"bridge.projector": "mlp2x_gelu", "bridge.select_layer": "-2"}),
          Variant("layer -1", {"bridge.projector": "mlp2x_gelu", "bridge.select_layer": "-1"})),
    Claim("eagle_fusion.channel_concat", EAGLE, "fusion-strategy table (channel concat vs sequence append) [recall]",
          "channel concatenation of the experts' tokens is as good as appending them along the sequence, at half "
          "the visual tokens.", "eagle_fusion", FINE,
          Variant("channel concat", {"bridge.variant": "released"}),
          Variant("sequence append", {"bridge.variant": "sequence_append"}), "no_worse"),
    Claim("eagle_experts.two_experts", EAGLE, "'more vision experts' table (X2 -> X5 gains) [recall]",
          "a second vision expert helps on fine detail.", "eagle_experts", FINE,
          Variant("two experts (eagle)", {"bridge": "eagle"}), Variant("one expert (mlp)", {"bridge": "mlp"})),
    Claim("eagle_unfrozen.unfreeze", EAGLE, "'unfreezing the vision experts' finding [recall]",
          "training the vision experts with the bridge helps.", "eagle_unfrozen", FINE,
          Variant("experts trained", {"stages.align.trainable": '["bridge*","lm.new_tokens","encoder"]'}),
          Variant("experts frozen", {"stages.align.trainable": FROZEN})),
    Claim("eagle_unfrozen_slow.unfreeze", EAGLE, "'unfreezing the vision experts' finding [recall]",
          "training the vision experts with the bridge helps, at a backbone's rate.", "eagle_unfrozen_slow", FINE,
          Variant("experts trained at 5e-5", {"stages.align.trainable": '["bridge*","lm.new_tokens","encoder"]'}),
          Variant("experts frozen", {"stages.align.trainable": FROZEN}),
          note="eagle_unfrozen trains them at the bridge's 2e-3; here the encoder group has its own rate"),
    Claim("eagle_prealign.pre_alignment", EAGLE, "the Pre-Alignment stage (training-strategy figure) [recall]",
          "aligning a non-text-aligned expert alone with the frozen LM, before the joint projector, helps.",
          "eagle_prealign", FINE,
          Variant("pre-aligned, 100 + 200 steps", {"stages": "eagle_prealign", "stages.align.max_steps": "200"}),
          Variant("joint only, 200 steps", {"stages": "align", "stages.align.max_steps": "200"}),
          note="the pre-aligned arm trains 100 more steps (on the expert); eagle_prealign.matched_steps checks that. "
               "'trainable params' counts every parameter of a trained group: the per-expert projectors (66,048, "
               "unused outside pre_align) in both arms and, for pre_align's `encoder` group, the ViT too, which "
               "gets no gradient there (its tokens are not used)"),
    Claim("eagle_prealign.matched_steps", EAGLE, "the Pre-Alignment stage (training-strategy figure) [recall]",
          "pre-alignment beats giving the same steps to the joint projector.", "eagle_prealign", FINE,
          Variant("pre-aligned, 100 + 200 steps", {"stages": "eagle_prealign", "stages.align.max_steps": "200"}),
          Variant("joint only, 300 steps", {"stages": "align", "stages.align.max_steps": "300"}),
          note="a toolkit control for the extra steps; the paper compares with and without the stage"),
    Claim("mmfuser_layers.multi_layer", MMFUSER, "arXiv:2410.11829 layer-set ablation [recall; table not verified]",
          "fusing shallow layers into the deep one beats the deep layers alone, mostly on fine detail.",
          "mmfuser_layers", FINE, Variant("shallow [0,1,3]", {"bridge.layers": "[0,1,3]"}),
          Variant("deep only [2,3]", {"bridge.layers": "[2,3]"})),
    Claim("mmfuser_attention.deformable", MMFUSER, "arXiv:2410.11829 attention ablation [recall]",
          "deformable cross-attention does as well as dense attention over all keys.", "mmfuser_attention", FINE,
          Variant("deformable", {"bridge.attention": "deformable", "bridge.self_step": "true"}),
          Variant("dense", {"bridge.attention": "dense", "bridge.self_step": "true"}), "no_worse"),
    Claim("mmfuser_attention.self_step", MMFUSER, "arXiv:2410.11829 'cross + self' ablation [recall]",
          "the self (single-level deformable) step after the cross-attention helps.", "mmfuser_attention", FINE,
          Variant("with self step", {"bridge.attention": "deformable", "bridge.self_step": "true"}),
          Variant("without", {"bridge.attention": "deformable", "bridge.self_step": "false"})),
    Claim("mplug_distractor.curve", MPLUG, *DISTRACTOR_CURVE, "mplug_distractor", ("distractor",), kind="curve"),
    Claim("mplug_distractor_long.curve", MPLUG, *DISTRACTOR_CURVE, "mplug_distractor_long", ("distractor",),
          kind="curve",
          note="repro/mplug_distractor at five times its steps (1000), to tell a budget result from a design one"),
    Claim("mplug_mirope.mi_rope", MPLUG, "Sec. 4.4 ablation of MI-RoPE [recall]",
          "giving the visual keys the rotary position of their <image> token helps.", "mplug_mirope",
          ("distractor",), Variant("MI-RoPE", {"bridge.mi_rope": "image_token"}),
          Variant("off", {"bridge.mi_rope": "off"})),
    Claim("mplug_fusion.adaptive_gate", MPLUG, "Sec. 4.4 ablation of the adaptive gate [recall]",
          "a text-conditioned (adaptive) gate beats a fixed mix of self- and cross-attention.", "mplug_fusion",
          ("distractor",), Variant("adaptive", {"bridge.fusion": "adaptive"}),
          Variant("static", {"bridge.fusion": "static"})),
    Claim("mplug_layers.hatb_both", MPLUG, "Sec. 4.4 number and placement of HATB layers [recall]",
          "Hyper Attention in more layers (both of the world LM's two) beats one layer.", "mplug_layers",
          ("distractor",), Variant("layers [0,1]", {"bridge.hyper_layers": "[0,1]"}),
          Variant("layer [0]", {"bridge.hyper_layers": "[0]"})),
)


def claims_by_paper() -> dict[str, list[Claim]]:
    """The claims grouped by paper, in the order of :data:`PAPERS`."""
    out: dict[str, list[Claim]] = {paper: [] for paper in PAPERS}
    for claim in CLAIMS:
        out[claim.paper].append(claim)
    return out


def experiments() -> list[str]:
    """Every sweep a claim needs, in registry order."""
    return list(dict.fromkeys(claim.experiment for claim in CLAIMS))
