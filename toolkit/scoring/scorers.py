"""One scorer per task type, registered beside the metric registry: it scores each
answer (per-example rows, what samples.jsonl keeps) and aggregates the rows into the
arm's metrics with their CIs, plus what that task adds to the record (a confusion matrix,
parse failures). The harness asks the registry for the suite's task and never branches
on it."""

from __future__ import annotations

from typing import Any, ClassVar

from toolkit.records import ConfusionMatrix, MetricValue
from toolkit.scoring import metrics as M
from toolkit.scoring.registry import CLS, MC, QA, REG, judged


class Scored:
    """What aggregation gives: the metrics and the task's additions to the arm's record."""

    def __init__(self, metrics: dict[str, MetricValue], **record: Any):
        self.metrics = metrics
        self.record = record  # ArmResult fields: confusion_matrix, parse_failures, perplexity_base


class TaskScorer:
    task: ClassVar[str]
    judged: ClassVar[frozenset[str]] = frozenset()  # metrics a judge model adds (QA only)
    likelihood_metric: ClassVar[str | None] = None  # the metric scored by gold-answer likelihood

    def __init__(self, *, metrics: list[str], seed: int, labels: list[str] | None = None,
                 doc_text: dict[str, str] | None = None, embedder: str | None = None):
        self.metrics, self.seed, self.labels = metrics, seed, labels
        self.doc_text, self.embedder = doc_text, embedder

    def score(self, examples, preds, *, retrieves: bool) -> list[dict[str, Any]]:
        raise NotImplementedError

    def aggregate(self, rows: list[dict[str, Any]], examples) -> Scored:
        """`rows[i]` scores `examples[i]` (test order)."""
        raise NotImplementedError


class QAScorer(TaskScorer):
    task = QA
    judged = frozenset(judged())
    likelihood_metric = "perplexity"

    def score(self, examples, preds, *, retrieves: bool) -> list[dict[str, Any]]:
        return M.score_qa(examples, preds, metrics=self.metrics, doc_text=self.doc_text, embedder=self.embedder,
                          retrieves=retrieves)

    def aggregate(self, rows, examples) -> Scored:
        extra = {}
        if rows and "base_answer_nll" in rows[0]:  # the same gold answers under the untrained base model
            extra["perplexity_base"] = M.perplexity([r["base_answer_nll"] for r in rows],
                                                    [r["answer_tokens"] for r in rows], seed=self.seed)
        return Scored(M.aggregate_qa(rows, metrics=self.metrics, seed=self.seed), **extra)


class LabelScorer(TaskScorer):
    task = CLS

    def score(self, examples, preds, *, retrieves: bool) -> list[dict[str, Any]]:
        return M.score_classification(examples, preds, labels=self.labels)

    def aggregate(self, rows, examples) -> Scored:
        agg, cm = M.aggregate_classification(rows, [e.label for e in examples], labels=self.labels,
                                             metrics=self.metrics, seed=self.seed)
        return Scored(agg, confusion_matrix=ConfusionMatrix(**cm))


class ChoiceScorer(LabelScorer):
    task = MC


class RegressionScorer(TaskScorer):
    task = REG

    def score(self, examples, preds, *, retrieves: bool) -> list[dict[str, Any]]:
        return M.score_regression(examples, preds)

    def aggregate(self, rows, examples) -> Scored:
        return Scored(M.aggregate_regression(rows, metrics=self.metrics, seed=self.seed),
                      parse_failures=int(sum(r["parse_failure_rate"] for r in rows)))


SCORERS: dict[str, type[TaskScorer]] = {s.task: s for s in (QAScorer, LabelScorer, ChoiceScorer, RegressionScorer)}


def scorer_for(task: str) -> type[TaskScorer]:
    return SCORERS[task]
