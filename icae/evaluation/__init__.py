"""Evaluation metrics and helpers for ICAE experiments."""
