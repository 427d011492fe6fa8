"""Windmill: every image through every Animal Farm service, harmonized boxes and consensus in PostgreSQL."""

__version__ = "0.1.0"
