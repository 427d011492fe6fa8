"""Windmill: every image through every Animal Farm service, harmonized boxes and consensus in PostgreSQL.

`from windmill import Windmill` is the Python API (windmill/api); it is imported on first use, so the pure
modules (harmony, voting) stay free of the database and broker libraries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from windmill.api import Windmill

__version__ = "0.1.0"
# The name on the package index (`windmill` there is an unrelated project); the import package stays `windmill`.
DISTRIBUTION = "windmill-pipeline"
__all__ = ["DISTRIBUTION", "Windmill", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "Windmill":
        from windmill.api import Windmill

        return Windmill
    raise AttributeError(f"module 'windmill' has no attribute {name!r}")
