"""Understanding adapters (VLMs); registry.py names the built-in ones."""
