"""Database access: connection settings, the migrations in sql/, and the embedded PostgreSQL cluster."""

# PostgreSQL's bigint, the type of image and job ids: a larger number is refused where it is read, not sent to the
# server (which answers with an error that reads as a fault of Windmill's).
BIGINT_MAX = 2**63 - 1
