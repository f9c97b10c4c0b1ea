-- Items of a page that were not stored, with the reason, into gn2pg.run_error. Arrays by position:
--   $1 text: the source. $2 bigint: the run.
--   $3 bigint[]: key (NULL when missing or not an integer). $4 text[]: uuid as sent.
--   $5 jsonb[]: the item (NULL when jsonb cannot hold it). $6 text[]: why it was rejected.
INSERT INTO gn2pg.run_error (run_id, source, id_data, uuid, item, error)
SELECT $2, $1, t.id, t.uuid, t.item, t.error
  FROM unnest($3::bigint[], $4::text[], $5::jsonb[], $6::text[]) AS t(id, uuid, item, error)
