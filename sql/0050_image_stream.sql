-- Streams (issue 13 item 8): `submit --follow` waits on this channel for images to be registered instead of
-- polling the table. One notification per registering statement (its highest new image id as the payload), not
-- per image: `images add` and `images watch` register a batch per statement, and every notifying commit takes a
-- database-wide lock. A statement that added nothing (every file already known) sends nothing. The follower still
-- polls now and then: a notification sent while it was disconnected is lost.
CREATE FUNCTION notify_images_registered() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    newest bigint;
BEGIN
    SELECT max(image_id) INTO newest FROM registered;
    IF newest IS NOT NULL THEN
        PERFORM pg_notify('windmill_images', newest::text);
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER images_registered_notify
    AFTER INSERT ON images REFERENCING NEW TABLE AS registered
    FOR EACH STATEMENT EXECUTE FUNCTION notify_images_registered();

-- Where each `submit --follow` stands, so that a restart (a service manager's, after a crash) resumes there
-- instead of walking the whole collection again: every image up to after_image_id was submitted. One row per
-- stream, the follow's selection (services, group, broker).
CREATE TABLE follow_positions (
    stream text PRIMARY KEY,
    after_image_id bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);
