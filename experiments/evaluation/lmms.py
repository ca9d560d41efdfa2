"""The ``bridgelab`` model of lmms-eval: any bridgelab run (or a model in memory) scored by lmms-eval's tasks.

Needs the optional extra (``pip install -e '.[eval]'`` then ``pip install --no-deps lmms-eval``, see the README).
Registered through the ``lmms_eval.models`` entry point (:func:`manifests`), so lmms-eval's own command line finds
it::

    python -m lmms_eval --model bridgelab --model_args run_dir=RUN_DIR --tasks TASK --include_path DIR

and in-process, without loading a second copy of a model being trained::

    lmms_eval.evaluator.simple_evaluate(model=BridgelabLMM(model=multimodal_lm), tasks=[...])

Requests follow lmms-eval's "simple" protocol: ``doc_to_visual(doc)`` gives PIL images (or ``(C, H, W)`` tensors),
``context`` holds one ``<image>`` per image (missing markers are put in front, as lmms-eval's LLaVA does) and is
rendered as the user turn of the run's chat template. ``loglikelihood`` returns the summed log-probability of the
continuation as the assistant's answer and whether greedy decoding gives it (:mod:`.likelihood`); decoding is greedy
(sampling settings are ignored, ``until`` stops are applied to the text). lmms-eval 0.7.3's built-in
``multiple_choice`` output type takes the *argmin* of the returned values (it assumes models return a loss,
lmms-eval#370), and its evaluator hands every loglikelihood result to ``process_results`` as the *string*
``str((logprob, is_greedy))`` (``api/instance.py`` ``unwrap_generation_output``). With this correct log-probability,
give such tasks a ``process_results`` that parses the strings (``ast.literal_eval``) and takes the argmax
(``tests/test_lmms_eval.py`` has one).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

import torch
from lmms_eval.api.model import lmms

from experiments.evaluation.likelihood import continuation_logprobs
from experiments.harness.module import generate_answers
from llm_adapters.adapter import IMAGE_TOKEN

log = logging.getLogger(__name__)

MODEL_NAME = "bridgelab"


def _skip_filelock_patch_on_filelock_4() -> None:
    """lmms-eval 0.7.3's ``simple_evaluate`` patches ``filelock._api``, a module filelock 4 no longer has (import
    error on every call); with filelock >= 4 that patch is marked done so the evaluator runs."""
    import importlib.util

    if importlib.util.find_spec("filelock._api") is None:
        from lmms_eval import evaluator

        if hasattr(evaluator, "_enable_reentrant_filelocks"):
            evaluator._enable_reentrant_filelocks._patched = True



def manifests() -> list[Any]:
    """The entry-point payload registering :class:`BridgelabLMM` as lmms-eval model ``bridgelab``."""
    from lmms_eval.models.registry_v2 import ModelManifest

    return [ModelManifest(model_id=MODEL_NAME, simple_class_path=f"{__name__}.BridgelabLMM")]


def to_tensor(visual: Any) -> torch.Tensor:
    """A PIL image or ``(C, H, W)`` tensor as float ``(3, H, W)`` in ``[0, 1]``."""
    if isinstance(visual, torch.Tensor):
        return visual.float()
    if hasattr(visual, "convert"):
        from torchvision.transforms.functional import pil_to_tensor

        return pil_to_tensor(visual.convert("RGB")).float() / 255.0
    raise TypeError(
        f"bridgelab takes images (PIL or tensors) from doc_to_visual; got {type(visual).__name__}. Video paths are "
        "not decoded here: give the frames as images."
    )


class BridgelabLMM(lmms):
    """lmms-eval model over a bridgelab ``MultimodalLM``.

    Args:
        run_dir: a run directory to rebuild the model from (its latest checkpoint), as ``--model_args run_dir=...``.
        model: instead, a ``MultimodalLM`` in memory or a :class:`~experiments.harness.loading.LoadedRun`.
        collate: the model's generation collator (default: built from the model).
        device: where to run (``cpu``, ``cuda``, ``cuda:1``); a model given in memory stays where it is.
        batch_size: prompts per generation call.
        max_new_tokens: default generation length when a task sets none.
    """

    def __init__(
        self,
        run_dir: str | None = None,
        model: Any = None,
        collate: Any = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_new_tokens: int = 32,
        **kwargs: Any,
    ) -> None:
        super().__init__()
        _skip_filelock_patch_on_filelock_4()  # before simple_evaluate reaches its patch (it builds the model first)
        kwargs.pop("max_batch_size", None)
        if kwargs:
            raise ValueError(f"bridgelab model: unknown model_args {sorted(kwargs)}; known: run_dir, device, "
                             "batch_size, max_new_tokens.")
        if (run_dir is None) == (model is None):
            raise ValueError("bridgelab model: give exactly one of run_dir=PATH (--model_args) or model=<in memory>.")
        if run_dir is not None:
            from experiments.harness.loading import load_run

            model = load_run(run_dir, device=device or "cpu")
        if hasattr(model, "collate") and hasattr(model, "model"):  # a LoadedRun
            collate = collate or model.collate
            model = model.model
        if collate is None:
            from experiments.harness.build import collators

            collate = collators(model)[1]
        self.model = model.eval()
        self.collate = collate
        self.batch_size = int(batch_size)
        self.max_new_tokens = int(max_new_tokens)

    # ------------------------------------------------------------------------------------------------ helpers
    def _doc(self, task: str, split: str, doc_id: int) -> Any:
        return self.task_dict[task][split][doc_id]

    def _sample(self, context: str, doc_to_visual: Any, task: str, split: str, doc_id: int) -> dict[str, Any]:
        visuals = doc_to_visual(self._doc(task, split, doc_id)) if doc_to_visual is not None else []
        images = [to_tensor(v) for v in _flatten(visuals or [])]
        markers = context.count(IMAGE_TOKEN)
        if markers == 0 and images:
            context = " ".join([IMAGE_TOKEN] * len(images)) + "\n" + context
        elif markers != len(images):
            raise ValueError(
                f"lmms-eval task '{task}' doc {doc_id}: the context has {markers} {IMAGE_TOKEN} marker(s) but "
                f"doc_to_visual gave {len(images)} image(s); write one marker per image or none at all."
            )
        return {"text": context, "images": images, "answer": ""}  # an answer (even empty) makes it a user turn

    # ---------------------------------------------------------------------------------------------- protocol
    def loglikelihood(self, requests: Sequence[Any]) -> list[tuple[float, bool]]:
        out = []
        for context, target, doc_to_visual, doc_id, task, split in [r.args for r in requests]:
            continuation = target if isinstance(target, str) else target(self._doc(task, split, doc_id))
            sample = self._sample(context, doc_to_visual, task, split, doc_id)
            out.append(continuation_logprobs(self.model, self.collate, sample, [str(continuation)])[0])
        return out

    def generate_until(self, requests: Sequence[Any]) -> list[str]:
        args = [r.args for r in requests]
        out: list[str] = []
        device = next(self.model.parameters()).device
        for start in range(0, len(args), self.batch_size):
            chunk = args[start : start + self.batch_size]
            kwargs = [dict(a[1] or {}) for a in chunk]
            samples = [self._sample(a[0], a[2], a[4], a[5], a[3]) for a in chunk]
            budget = max(int(k.get("max_new_tokens") or self.max_new_tokens) for k in kwargs)
            texts = generate_answers(self.model, self.collate(samples).to(device), budget)
            for text, k in zip(texts, kwargs):
                until = k.get("until") or []
                for stop in [until] if isinstance(until, str) else until:
                    if stop:
                        text = text.split(stop)[0]
                out.append(text.strip())
        return out

    def generate_until_multi_round(self, requests: Sequence[Any]) -> list[str]:
        raise NotImplementedError(
            "bridgelab model: multi-round generation is not supported; score multi-turn tasks turn by turn "
            "(generate_until) or with bridgelab eval on a data source with 'messages'."
        )


def _flatten(visuals: Any) -> list[Any]:
    if isinstance(visuals, (list, tuple)):
        return [v for item in visuals for v in _flatten(item)]
    return [visuals]
