"""sassflow: streaming features and SASS retraining for multi-scenario recall."""

__version__ = "0.1.0"
