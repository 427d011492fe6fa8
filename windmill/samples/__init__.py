"""Sample photographs with annotation sidecars (README.md), shipped as package data for tests and demos."""
