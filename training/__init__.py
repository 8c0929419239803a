"""SASS training: the model (model.py), the two stages (trainer.py), baselines, the
evaluation protocol, export for serving, the model registry, reports and benchmarks.

DAG tasks call the plain functions of ``training.pipeline``; nothing heavy runs at import.
"""
