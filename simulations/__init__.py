"""Synthetic multi-centre data, the simulated annotator, experiment runners and reports."""
