"""evaclip.eval: the paper's benchmark suite on datasets already on disk.

Modules (each one concept):
    metrics       top-k accuracy, mean per-class recall, retrieval recall@k, mean recall (pure functions)
    catalog       Table 11's datasets, shipped class names / templates (data/*.json), ImageNet-A/R subsets
    datasets      layout detection and loading (image folder, CSVs, ImageNet folders, CLIP_benchmark wds)
    features      batched image / text encoding
    zeroshot      prompt-ensemble classifier, logits = 100 * image @ classifier^T
    retrieval     image <-> text recall@k with several captions per image
    video         PyAV frame sampling, averaged frame embeddings
    linear_probe  cached features, weight-decay search, refit on train+val
    robustness    Table 6a's average and gap to ImageNet-1K
    runner        one (model, dataset, task) job over one or both image transforms
    results       CLIP_benchmark-style JSON, paper-layout CSV/markdown tables and a PNG plot
"""
from evaclip.eval.metrics import (classification_metrics, mean_per_class_recall, mean_recall, retrieval_recall,
                                  topk_accuracy)
from evaclip.eval.zeroshot import build_zeroshot_classifier, evaluate_zeroshot_classification, zeroshot_logits

__all__ = ["topk_accuracy", "mean_per_class_recall", "classification_metrics", "retrieval_recall", "mean_recall",
           "build_zeroshot_classifier", "zeroshot_logits", "evaluate_zeroshot_classification"]
