"""Evaluation: suites, resumable eval runs, metrics, and the Markdown/JSON/HTML reports."""
