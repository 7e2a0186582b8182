"""Evaluation: stability (wobble), lip sync, image and motion metrics, reports."""
