"""Evaluation: the exactly-scored synthetic world, public benchmark runners, FID / CLIP score."""

from lightbagel.evaluation.synthetic import CATEGORIES, SyntheticReport, evaluate_synthetic, synthetic_items

__all__ = ["CATEGORIES", "SyntheticReport", "evaluate_synthetic", "synthetic_items"]
