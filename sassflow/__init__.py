"""sassflow's ground layer: the settings, the contracts between the parts (events, features, the
offline history, model and bundle files), the dataset loader, and file/process helpers.  It
imports nothing else of the project; everything else imports it."""

__version__ = "0.1.0"
