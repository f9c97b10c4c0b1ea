-- Fragment, not a statement: the rows of insert_rows.sql, one per position of its arrays
-- $3 to $12 (see there), as the subquery t.
(SELECT unnest($3::bigint[]) AS id, unnest($4::uuid[]) AS uuid, unnest($5::jsonb[]) AS item,
        unnest($6::bytea[]) AS geom, unnest($7::uuid[]) AS ca, unnest($8::uuid[]) AS jdd,
        unnest($9::uuid[]) AS source_ca, unnest($10::uuid[]) AS source_jdd,
        unnest($11::timestamp[]) AS updated, unnest($12::bigint[]) AS hash) AS t
