"""The worker runtime shared by every role (roles plug in through windmill.roles.registry)."""
