"""`python -m windmill` runs the same click application as `windmill-cli`."""

from windmill.commands import main

main()
