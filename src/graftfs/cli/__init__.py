"""The Garden/GrootFS-compatible command line."""
