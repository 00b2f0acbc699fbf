"""Evaluation: feature extractors and Fréchet distances (see `features` for which is FID)."""
from gat.eval.features import FeatureExtractor, load_extractor
from gat.eval.frechet import dataset_stats, feature_stats, frechet_distance, load_ref_stats, save_stats

__all__ = [
    "FeatureExtractor", "dataset_stats", "feature_stats", "frechet_distance", "load_extractor",
    "load_ref_stats", "save_stats",
]
