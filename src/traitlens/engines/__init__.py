"""Bridges to engines outside traitlens: llama.cpp and lm-evaluation-harness."""
