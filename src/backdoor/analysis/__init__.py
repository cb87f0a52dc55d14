"""Analyses of trained models: penultimate features (t-SNE); smoothness lives beside it."""
