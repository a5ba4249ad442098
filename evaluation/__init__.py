"""Embedding-quality metrics and plots, demo data, the like-rate simulator and replay of real like logs."""
