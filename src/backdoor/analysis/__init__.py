"""Analyses of trained and purified models: loss-surface smoothness (λ_max, Tr H), penultimate features
(t-SNE), where triggers land."""
