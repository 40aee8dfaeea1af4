"""recsys_ebm: energy-based models for recommender systems."""

__version__ = "0.1.0"
