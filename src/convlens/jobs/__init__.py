"""Batch jobs: explanations of many files written to disk, and the demo page."""
