"""Worker roles, one module each; importing this package registers them with the runtime."""

from windmill.roles import noop, service  # noqa: F401
