-- A consensus job is claimed when it falls due, not at the poll. Since sql/0113 a job due within 100 ms of its
-- queueing notifies its queue's channel, and a worker whose role delays its queue (the merger) claims that long
-- after the notification. A consensus job falls due consensus_delay() (500 ms) after it is queued (sql/0010: the
-- debounce), so it sent nothing and waited for the workers' poll: an image's vote came 0.5 to 1.5 s after the row
-- that queued it. Which matters most where a batch ends: the last votes are its last products, and in `bench
-- pipeline` the machine sat idle for up to a second waiting for that poll (the run's last claims, logged by a
-- trigger on jobs: 15 votes due between 8.76 and 9.08 s, claimed together at 9.67 s, after everything else was
-- done at 9.26 s).
--
-- Now a job due within a second of its queueing notifies (the trigger's WHEN below), and the consensus worker
-- delays its queue like the merger (windmill/roles/consensus.py, claim_delay_s = consensus_delay()): it claims
-- when the job is due, and the notifications within half the delay (250 ms) share one claim, made when the last
-- of them is due (windmill/worker/claim_state.py). About one vote is queued per image (sql/0105), so this is one
-- notification per image and at most four claims a second more, for a vote 0.5 to 0.75 s after its row instead of
-- up to 1.5 s.
--
-- What else is queued due within a second: merge jobs (50 ms, already notifying). Deadline jobs (30 s), the
-- scheduler's ticks and retries (an UPDATE, which this trigger does not see) still wait for the poll. sql/0098's
-- silence into a backed-up queue does not apply to a job due later: it never counts as evidence of a backlog.
CREATE OR REPLACE TRIGGER jobs_notify_queued AFTER INSERT ON jobs
    FOR EACH ROW WHEN (NEW.state = 'queued' AND NEW.run_after <= now() + interval '1 second')
    EXECUTE FUNCTION notify_job_queued();
