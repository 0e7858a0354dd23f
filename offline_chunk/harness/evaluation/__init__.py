"""Evaluation in the task's simulator: the entry point (evaluate.py), the rollout engine (rollouts.py),
the settings a checkpoint implies (settings.py), statistics (stats.py) and outputs (report.py)."""

from offline_chunk.harness.evaluation.evaluate import evaluate, evaluation_seed, periodic_evaluator
from offline_chunk.harness.evaluation.report import format_summary

__all__ = ["evaluate", "evaluation_seed", "format_summary", "periodic_evaluator"]
