"""Evaluation metrics: OGB's Evaluator where the data set has one, plain accuracy otherwise."""
from __future__ import annotations

import torch
from torch import Tensor


class Metric:
    """``metric(y_true, logits) -> float`` for a task; higher is better.

    Args:
        name: ``'rocauc'`` or ``'acc'``.
        task: ``'multilabel'`` (logits ``[n, T]``, targets 0/1 ``[n, T]``) or ``'multiclass'``
            (logits ``[n, C]``, targets ``[n]``).
        evaluator: an ogb Evaluator name (``'ogbn-proteins'``...) or ``None``.
    """

    def __init__(self, name: str, task: str, evaluator: str | None = None):
        self.name, self.task = name, task
        self._ogb = None
        if evaluator is not None:
            from graphscale.data.ogb import evaluator as make
            self._ogb = make(evaluator)

    def __call__(self, y_true: Tensor, logits: Tensor) -> float:
        if self.task == "multiclass":
            pred = logits.argmax(dim=-1)
            if self._ogb is None:
                return float((pred == y_true).float().mean()) if y_true.numel() else float("nan")
            out = self._ogb.eval({"y_true": y_true.view(-1, 1).cpu(), "y_pred": pred.view(-1, 1).cpu()})
        elif self._ogb is None:  # a user's multi-label graph (graphscale.data.user_data): ogb's rule, any T
            return rocauc(y_true, logits)
        else:
            out = self._ogb.eval({"y_true": y_true.cpu(), "y_pred": logits.cpu()})
        return float(out[self.name])


def rocauc(y_true: Tensor, scores: Tensor) -> float:
    """Mean ROC-AUC over the tasks (columns) that have both a positive and a negative node, as ogb's
    ``ogbn-proteins`` Evaluator computes it (for any number of tasks); NaN when no task has both."""
    from sklearn.metrics import roc_auc_score
    y, s = y_true.detach().cpu().numpy(), scores.detach().float().cpu().numpy()
    per_task = [roc_auc_score(y[:, t], s[:, t]) for t in range(y.shape[1])
                if (y[:, t] == 1).any() and (y[:, t] == 0).any()]
    return float(sum(per_task) / len(per_task)) if per_task else float("nan")


def loss_fn(task: str):
    """Training loss for a task: BCE-with-logits for multilabel, cross-entropy for multiclass."""
    if task == "multilabel":
        return torch.nn.functional.binary_cross_entropy_with_logits
    return torch.nn.functional.cross_entropy
