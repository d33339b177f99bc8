"""Which MLP neurons are trait-selective, where, and how overlapping?"""
