"""The worker runtime shared by every role, and the registry roles plug into."""
