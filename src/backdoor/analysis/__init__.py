"""Analyses of trained and purified models: loss-surface smoothness (FIP's λ_max and Tr H)."""
