"""Database access: connection settings, the migrations in sql/, and the embedded PostgreSQL cluster."""
