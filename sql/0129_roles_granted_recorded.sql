-- deploy/roles.sql grants each role what it needs on the objects that exist when it runs; what a later `init-db`
-- creates has no grant until it runs again (deploy/README.md: after every upgrade). Forgotten, the workers started
-- and failed each job that touched a new object until it was dead (`permission denied for table
-- postprocessing_count_deltas`, every postprocessing and caption score job after sql/0121). roles.sql now records
-- here the newest migration it granted on, and a login that depends on its grants (neither a superuser nor a
-- member of the schema's owner) refuses a schema migrated since, with one sentence (windmill/db/schema.py). A
-- deployment that never runs roles.sql (the embedded database, an owner's login) has no row and is not asked.
CREATE TABLE roles_granted (
    one_row boolean PRIMARY KEY DEFAULT true CHECK (one_row),
    through_migration integer NOT NULL,
    granted_at timestamptz NOT NULL DEFAULT now()
);
