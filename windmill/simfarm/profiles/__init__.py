"""Latency profiles of the stand-in farm as JSON data (`farm serve --latency-profile NAME`)."""
