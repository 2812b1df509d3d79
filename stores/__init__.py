"""Trajectory stores (the append-only store arrives in its own issue)."""
