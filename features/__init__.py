"""Data layer: canonical schema, source adapters, cleaning, splits, profiles, synthetic data."""
