"""Scoring rendered video against the truth and choosing a checkpoint (evaluate_328.py)."""
