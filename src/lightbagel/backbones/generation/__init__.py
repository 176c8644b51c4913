"""Generation adapters (DiT + VAE); registry.py names the built-in ones."""
