-- A file whose content is replaced at the path it was registered under (an upload tool re-uploading a corrected
-- photo, a camera overwriting, exiftool rewriting in place) was never processed again: registration is by path, so
-- its answers, boxes and consensus went on describing a picture that is nowhere any more. `images watch` now
-- records the size and modification time (ns) of each file it registers, the two numbers its walk already reads,
-- and compares them when the file settles again or when a watch starts (windmill/watch_rewrites.py). Nullable: a
-- file registered by `images add` (which lists folders without a stat per file) or before this migration has none
-- until a watch's walk records what it finds. Added without a default: no table rewrite, instant at any size.
ALTER TABLE images ADD COLUMN image_size bigint, ADD COLUMN image_mtime_ns bigint;
COMMENT ON COLUMN images.image_size IS
    'The file''s size in bytes when `images watch` registered it (or last saw it unchanged in content); NULL: not '
    'recorded (`images add`, a URL).';
COMMENT ON COLUMN images.image_mtime_ns IS
    'The file''s modification time (ns since the epoch) when `images watch` registered it (or last saw it unchanged '
    'in content, a touch); NULL: not recorded.';
