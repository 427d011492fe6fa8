"""Benchmarks: scripts that print figures for the README."""
