"""One record per metric: what it is called, which way is better, whether it is a mean of
per-example scores or computed over the whole test set (so a paired comparison resamples
examples instead of averaging differences), and what it needs. Config validation, the
scorers, the judge, the statistics and the report all read this table; importing it is
free (no numpy, no torch)."""

from __future__ import annotations

from dataclasses import dataclass

QA, CLS, MC, REG = "qa", "classification", "multiple_choice", "regression"


@dataclass(frozen=True)
class Metric:
    name: str
    label: str                       # display name in the report
    tasks: tuple[str, ...]
    higher_is_better: bool = True
    level: str = "example"           # "example": a mean of per-example scores; "corpus": over the test set
    needs: tuple[str, ...] = ()      # "retrieval", "labels", "judge", "likelihood", "reference", "number"
    bounded: bool = True             # on a 0-1 scale (goes in the bar chart)
    default: bool = True             # in the task's default metric list
    ragas: str | None = None         # the ragas class of a judged metric


METRICS: dict[str, Metric] = {m.name: m for m in [
    Metric("exact_match", "Exact match", (QA,)),
    Metric("token_f1", "Token F1", (QA,)),
    Metric("rouge_l", "ROUGE-L", (QA,)),
    Metric("contains", "Contains answer", (QA,)),
    Metric("embedding_similarity", "Embedding sim.", (QA,)),
    Metric("context_recall", "Context recall", (QA,), needs=("retrieval",)),
    Metric("context_precision", "Context precision", (QA,), needs=("retrieval",)),
    Metric("hit_at_k", "Hit@k", (QA,), needs=("retrieval",)),
    Metric("mrr", "MRR", (QA,), needs=("retrieval",)),
    Metric("perplexity", "Perplexity (gold)", (QA,), higher_is_better=False, level="corpus", needs=("likelihood",),
           bounded=False),
    Metric("faithfulness", "Faithfulness (judge)", (QA,), needs=("judge", "retrieval"), default=False,
           ragas="Faithfulness"),
    Metric("answer_relevancy", "Answer relevancy (judge)", (QA,), needs=("judge",), default=False,
           ragas="ResponseRelevancy"),
    Metric("llm_context_precision", "Context precision (judge)", (QA,), needs=("judge", "retrieval", "reference"),
           default=False, ragas="LLMContextPrecisionWithReference"),
    Metric("llm_context_recall", "Context recall (judge)", (QA,), needs=("judge", "retrieval", "reference"),
           default=False, ragas="LLMContextRecall"),
    Metric("factual_correctness", "Factual correctness (judge)", (QA,), needs=("judge", "reference"), default=False,
           ragas="FactualCorrectness"),
    Metric("accuracy", "Accuracy", (CLS, MC), needs=("labels",)),
    Metric("macro_precision", "Macro precision", (CLS,), level="corpus", needs=("labels",)),
    Metric("macro_recall", "Macro recall", (CLS,), level="corpus", needs=("labels",)),
    Metric("macro_f1", "Macro F1", (CLS,), level="corpus", needs=("labels",)),
    Metric("unmapped_rate", "Unmapped outputs", (CLS, MC), higher_is_better=False, needs=("labels",)),
    # from label probabilities: arms that score every label (classification_mode: likelihood)
    Metric("roc_auc", "ROC AUC (macro)", (CLS, MC), level="corpus", needs=("labels", "probabilities")),
    Metric("average_precision", "Average precision", (CLS, MC), level="corpus", needs=("labels", "probabilities")),
    Metric("ece", "Calibration error (ECE)", (CLS, MC), higher_is_better=False, level="corpus",
           needs=("labels", "probabilities")),
    Metric("mae", "MAE", (REG,), higher_is_better=False, needs=("number",), bounded=False),
    Metric("mse", "MSE", (REG,), higher_is_better=False, needs=("number",), bounded=False),
    Metric("r2", "R²", (REG,), level="corpus", needs=("number",), bounded=False),
    Metric("parse_failure_rate", "No number in answer", (REG,), higher_is_better=False),
]}


def for_task(task: str) -> dict[str, Metric]:
    """The metrics a task can report (multiple_choice also accepts classification's)."""
    tasks = (task, CLS) if task == MC else (task,)
    return {n: m for n, m in METRICS.items() if any(t in m.tasks for t in tasks)}


def default_metrics(task: str) -> list[str]:
    return [n for n, m in METRICS.items() if task in m.tasks and m.default]


def judged() -> dict[str, Metric]:
    return {n: m for n, m in METRICS.items() if "judge" in m.needs}


def label(name: str) -> str:
    m = METRICS.get(name)
    return m.label if m else name
