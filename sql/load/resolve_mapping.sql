-- Where a page's distinct (CA, JDD) pairs land once mapped (gn2pg._resolve_mapping,
-- sql/metadata.sql): four arrays in the same order, the pair as sent then the pair to store.
-- $1 text: the source. $2 uuid[], $3 uuid[]: the CA and JDD of each pair as sent, by position.
SELECT coalesce(array_agg(r.source_ca), '{}'), coalesce(array_agg(r.source_jdd), '{}'),
       coalesce(array_agg(r.ca_uuid), '{}'), coalesce(array_agg(r.jdd_uuid), '{}')
  FROM gn2pg._resolve_mapping($1, $2, $3) r
