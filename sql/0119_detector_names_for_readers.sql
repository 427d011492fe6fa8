-- The names of the detector services (the spatial ones), for the readers that pick the detectors' answers:
-- `export --detectors` and `eval`, which the windmill_monitor login may run (README: Security). That login does not
-- read `services` itself (deploy/roles.sql: only the workers sync and read the catalog there), so both failed for it
-- with "permission denied for table services"; the view shows it the names and nothing else.
CREATE VIEW detector_services AS
SELECT name FROM services WHERE is_detector;
