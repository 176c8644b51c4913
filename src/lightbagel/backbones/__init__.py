"""Backbone adapters: one file per model family, registered by name for the recipe cards."""
