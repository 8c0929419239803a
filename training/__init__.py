"""SASS training: the model (model.py), the two stages (trainer.py), baselines, the evaluation
protocol, the model artifact (export.py), the model registry and the run reports.

DAG tasks call the plain functions of ``training.pipeline``; nothing heavy runs at import.
"""
