"""Datasets, models, training and loss learning for the onlinelfl toolkit."""

__version__ = "0.1.0"
