-- Deletes rows of a source by key (gone from a swept key range, listed by the deletion log, or
-- unseen by a complete offset walk) and returns how many (src/loader.rs).
-- $1 text: the source. $2 bigint[]: the keys.
WITH d AS (DELETE FROM gn2pg.observation o WHERE o.source = $1 AND o.id_data = ANY ($2) RETURNING 1)
SELECT count(*) FROM d
