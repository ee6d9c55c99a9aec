"""Accuracy of every class score a method produces (SD, SI, AG, ...), and of its other per-image measures
(MAXL's auxiliary agreement), overall and per class."""
from __future__ import annotations

import torch

from .distributed import DistributedContext, all_reduce_sum


@torch.no_grad()
def evaluate(model, method, loader, num_classes: int, context: DistributedContext, autocast_context) -> dict:
    """Returns {score: accuracy %, score + "_per_class": [accuracy % per class], "images": n}; sums over ranks."""
    was_training = model.training
    model.eval()
    correct: dict[str, torch.Tensor] = {}
    seen = torch.zeros(num_classes, dtype=torch.float64, device=context.device)
    for batch in loader:
        with autocast_context():
            outputs = model(batch.views)
            extra_hits = method.evaluation_hits(outputs, batch)
        # index_add_ keeps the counts on the device: bincount and boolean-mask indexing wait for it on CUDA
        seen.index_add_(0, batch.labels, torch.ones_like(batch.labels, dtype=seen.dtype))
        hits_by_score = {score: logits.argmax(dim=1) == batch.labels
                         for score, logits in method.class_scores(outputs).items()}
        for score, hits in {**hits_by_score, **extra_hits}.items():
            counts = correct.setdefault(score, torch.zeros_like(seen))
            counts.index_add_(0, batch.labels, hits.to(seen.dtype))
    model.train(was_training)
    all_reduce_sum(seen, context)
    results: dict = {"images": int(seen.sum().item())}
    for score, counts in correct.items():
        all_reduce_sum(counts, context)
        results[score] = round(100.0 * counts.sum().item() / max(seen.sum().item(), 1), 3)
        per_class = 100.0 * counts / seen.clamp(min=1)
        results[f"{score}_per_class"] = [round(v, 2) for v in per_class.tolist()]
    return results
