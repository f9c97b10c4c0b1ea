-- uuids of a page already stored under another key, of this source or another: for each, its
-- position in $2 (from 1) and the owner's source and key, as three arrays.
-- $1 text: the source. $2 uuid[]: the uuids to probe. $3 bigint[]: the key of each, by position.
SELECT coalesce(array_agg(u.i), '{}'), coalesce(array_agg(w.source), '{}'), coalesce(array_agg(w.id_data), '{}')
  FROM unnest($2::uuid[], $3::bigint[]) WITH ORDINALITY AS u(uuid, id, i)
 CROSS JOIN LATERAL (SELECT o.source, o.id_data FROM gn2pg.observation o
                      WHERE o.uuid = u.uuid AND (o.source <> $1 OR o.id_data <> u.id) LIMIT 1) w
