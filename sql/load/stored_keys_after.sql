-- Up to $3 stored keys of source $1 greater than $2 (bigint), in key order, as one array: the
-- batches in which an offset walk's sweep and a reconciliation's clear go through a source.
SELECT coalesce(array_agg(k.id_data ORDER BY k.id_data), '{}')
  FROM (SELECT o.id_data FROM gn2pg.observation o
         WHERE o.source = $1 AND o.id_data > $2 ORDER BY o.id_data LIMIT $3) k
