"""The embedded default: a private PostgreSQL cluster under Windmill's home, shared by every local windmill process.

By concern: binaries.py finds the server's programs, cluster.py runs the cluster's life cycle (initdb, start,
stop, its layout and state), clients.py keeps the registry of processes using it, system.py knows accounts,
processes and ports.
"""

from windmill.db.embedded.binaries import MISSING_BINARIES, find_server_binaries
from windmill.db.embedded.cluster import DATABASE, USER, EmbeddedPostgres, EmbeddedStatus
from windmill.db.embedded.system import HOST

__all__ = ["DATABASE", "HOST", "MISSING_BINARIES", "USER", "EmbeddedPostgres", "EmbeddedStatus",
           "find_server_binaries"]
