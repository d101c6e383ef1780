"""Anomaly scorers that run on every batch at the edge.

Nothing here imports the gateway: scorers see 2-D float arrays (steps x tags) and
their own state, and return scores of the same shape.
"""

from edge_models.base import Scorer, scorer_class

__all__ = ["Scorer", "scorer_class"]
