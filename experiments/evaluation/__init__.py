"""Evaluation apart from training: the metric registry, likelihood scoring, ``bridgelab eval`` and lmms-eval.

The contract between a data source and the evaluators
=====================================================

A data source (``experiments.harness.data.DataSource``) says per task which metric scores it, and puts what that
metric needs in each evaluation sample's ``meta`` (plain JSON values: strings, numbers, lists of them).

Which metric: ``TaskData.info[task]["metric"]``, one name of :data:`METRICS` (default ``"exact_match"``). A sample
may carry ``meta["metric"]`` instead (every sample of a task must then agree); ``info`` wins when both are set.

==================  =====================================================================================
metric              what each evaluation sample carries (``sample["answer"]`` is always the main reference)
==================  =====================================================================================
``exact_match``     ``answer``. Lower case, punctuation and extra spaces ignored.
``vqa_accuracy``    ``meta["answers"]``: every human answer (VQAv2: 10, repeats kept); missing -> ``[answer]``.
                    Official VQA normalisation, ``min(#matching humans / 3, 1)`` averaged over the
                    leave-one-human-out subsets.
``multiple_choice`` ``meta["options"]``: the option texts in the order the prompt shows them, lettered A, B, C, ...;
                    ``answer``: the correct option's letter (``"B"``) or its text. The prompt (``text``) shows the
                    options however the source likes (:func:`format_options` writes the LLaVA/MMBench layout).
                    A generated prediction counts as a letter (``B``, ``(B)``, ``B.``, ``B) red``) or an option text.
``circular_mc``     as ``multiple_choice``; a question counts only if all its rotations are right. Either the
                    source writes every rotation as its own sample sharing ``meta["circular_id"]``, or it gives
                    ``meta["question"]`` (the prompt up to the options, ``<image>`` markers included) and the
                    evaluator writes the rotations itself (:func:`circular_rotations`).
``caption``         ``meta["answers"]``: the reference captions; missing -> ``[answer]``. CIDEr, BLEU-4 and
                    ROUGE-L (pycocoevalcap; METEOR too when ``java`` is on the PATH, SPICE never: it downloads
                    Stanford CoreNLP on first use). The headline is CIDEr.
==================  =====================================================================================

``meta`` keys the reports understand whatever the metric: ``question_type`` / ``qtype`` / ``category`` (per-type
scores), ``chance``, ``random_image``, ``text_ceiling`` (reference levels averaged into ``scores.json``).

Likelihood scoring (``eval.mode=loglikelihood``): each candidate answer is scored as the assistant's answer by the
summed log-probability of its tokens given the prompt (the end-of-turn marker excluded), and the most likely one is
the prediction. Candidates are ``meta["options"]`` (the prediction is then the winning option's letter) or, for
other metrics, ``meta["choices"]`` (the world's closed answer sets; the prediction is the winning text).

``scores.json`` of every task holds ``metric`` (its name), ``score`` (the headline number of that metric), the
metric's own keys, ``exact_match`` (always, so tables that read it keep working), ``n`` and the reference levels.
"""

from experiments.evaluation.metrics import METRICS, Metric, register_metric, score_records, task_metric
from experiments.evaluation.metrics.choice import circular_rotations, format_options

__all__ = [
    "METRICS",
    "Metric",
    "circular_rotations",
    "format_options",
    "register_metric",
    "score_records",
    "task_metric",
]
