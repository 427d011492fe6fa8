"""Worker roles, one module each; importing this package registers them with the runtime."""

from windmill.roles import caption_score, consensus, merger, noop, postprocess, scheduler, service  # noqa: F401
