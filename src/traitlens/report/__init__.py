"""Figures and the single-file HTML report (entry points only: nothing imports this)."""
