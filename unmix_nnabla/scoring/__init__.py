"""Scoring: museval scores and the published tables (scores), and eval.py's work (evaluate)."""
