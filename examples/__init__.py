"""Runnable examples that sit next to Vigil (not part of the installed package)."""
