"""Sweeps over models × traits × methods × bands × strengths, and calibration."""
