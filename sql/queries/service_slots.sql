-- name: take_service_slot
-- One of the service's fleet-wide places for this session, skipping those it holds; NULL when all are taken.
SELECT take_service_slot(%(service)s, %(slots)s, %(held)s::integer[])

-- name: give_back_service_slot
-- Give a place back (false when this session did not hold it, e.g. after a reconnect).
SELECT give_back_service_slot(%(service)s, %(slot)s)

-- name: service_slots_held
-- Places of a service held right now across the fleet (monitoring, tests).
SELECT count(*) FROM pg_locks
 WHERE locktype = 'advisory' AND granted AND classid::integer = hashtext('windmill.service_slot:' || %(service)s)
   AND objsubid = 2
