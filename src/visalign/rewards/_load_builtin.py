"""Importing this module registers every built-in reward (one import line per reward module)."""

# Each reward module registers itself on import; add one line per new reward module.
