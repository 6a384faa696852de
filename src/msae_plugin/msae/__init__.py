"""Matryoshka SAE (Zaigrajew et al. 2025): nested TopK levels over one dictionary."""
