"""Instance segmentation scores: objects matched at an IoU threshold, precision, recall, F1.

Every ground-truth object is matched to at most one predicted object and vice versa. With a
threshold >= 0.5 a pair above it is unique on both sides (two objects cannot both overlap a
third by more than half of their union), so matching every pair above the threshold is the
optimal one-to-one matching; below 0.5, pairs are taken greedily by decreasing IoU.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = ["MatchScore", "iou_pairs", "match_instances"]


@dataclass(frozen=True)
class MatchScore:
    """How well predicted objects match the true ones."""

    true_objects: int
    predicted_objects: int
    matched: int
    threshold: float

    @property
    def precision(self) -> float:
        return self.matched / self.predicted_objects if self.predicted_objects else 1.0

    @property
    def recall(self) -> float:
        return self.matched / self.true_objects if self.true_objects else 1.0

    @property
    def f1(self) -> float:
        total = self.true_objects + self.predicted_objects
        return 2 * self.matched / total if total else 1.0


def iou_pairs(truth: np.ndarray, predicted: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Every (true id, predicted id) pair of non-zero labels that overlap, with their IoU."""
    if truth.shape != predicted.shape:
        raise ValueError(f"label images differ in shape: {truth.shape} and {predicted.shape}")
    t, p = truth.ravel().astype(np.int64), predicted.ravel().astype(np.int64)
    t_ids, t_inverse, t_sizes = np.unique(t, return_inverse=True, return_counts=True)
    p_ids, p_inverse, p_sizes = np.unique(p, return_inverse=True, return_counts=True)
    both = (t != 0) & (p != 0)
    pair_keys, overlap = np.unique(t_inverse[both].astype(np.int64) * len(p_ids) + p_inverse[both], return_counts=True)
    ti, pi = np.divmod(pair_keys, len(p_ids))
    iou = overlap / (t_sizes[ti] + p_sizes[pi] - overlap)
    return t_ids[ti], p_ids[pi], iou


def match_instances(truth: np.ndarray, predicted: np.ndarray, *, threshold: float = 0.5) -> MatchScore:
    """Match each true object to at most one predicted object with IoU >= ``threshold``
    (0 is background in both) and count the matches."""
    true_ids, predicted_ids, iou = iou_pairs(truth, predicted)
    order = np.argsort(-iou, kind="stable")
    used_true: set[int] = set()
    used_predicted: set[int] = set()
    for i in order:
        if iou[i] < threshold:
            break
        a, b = int(true_ids[i]), int(predicted_ids[i])
        if a not in used_true and b not in used_predicted:
            used_true.add(a)
            used_predicted.add(b)
    n_true = int(np.count_nonzero(np.unique(truth)))
    n_predicted = int(np.count_nonzero(np.unique(predicted)))
    return MatchScore(n_true, n_predicted, len(used_true), threshold)
