"""Models: every one implements the small `Recommender` interface of `base.py`."""
