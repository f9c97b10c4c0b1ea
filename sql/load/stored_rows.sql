-- What is stored for a page: the (key, content hash, CA, JDD) of a source's rows, as four arrays
-- in the same order, which the page's rows are compared with (src/loader.rs, Loader::stored).
-- Prepared once per run in two forms; src/loader.rs fills in {where}:
--   o.id_data BETWEEN $2 AND $3   $2, $3 bigint: a key range the page proves complete (bounds included)
--   o.id_data = ANY ($2)          $2 bigint[]: keys of the page outside that range
-- $1 text: the source.
SELECT coalesce(array_agg(o.id_data), '{}'), coalesce(array_agg(o.content_hash), '{}'),
       coalesce(array_agg(o.ca_uuid), '{}'), coalesce(array_agg(o.jdd_uuid), '{}')
  FROM gn2pg.observation o
 WHERE o.source = $1 AND {where}
