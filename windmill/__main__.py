"""`python -m windmill` runs the same click application as `windmill-cli`."""

from cli import main

main()
