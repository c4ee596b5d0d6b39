"""Judges: score candidate responses (AI feedback). Built-ins sit in one dict in `registry.py`."""
