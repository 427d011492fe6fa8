"""windmill-cli from a checkout: `python cli.py …` runs the same click application as the installed `windmill-cli`.

The commands live in the package, one module per concern (windmill/commands/), so the installed entry point
(`windmill.commands:main`) needs no top-level module; this file only runs them.
"""

from windmill.commands import main

if __name__ == "__main__":
    main()
