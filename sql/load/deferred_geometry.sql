-- Geometries the Rust encoder left to PostGIS (3D, another SRID, curves, invalid input, or
-- gn2pg.fast_geometry off), converted row by row with gn2pg._parse_geometry's error trap:
-- two arrays by position, the 2D EWKB as hex (NULL on error) and the error (NULL when converted).
-- $1 text[]: the GeoJSON geometry of each row, or NULL. $2 text[]: its WKT, used without GeoJSON.
-- src/loader.rs replaces {pg} by the (quoted) schema of PostGIS.
SELECT coalesce(array_agg(pg_catalog.encode({pg}.ST_AsEWKB({pg}.ST_Force2D(g.geom)), 'hex') ORDER BY t.i), '{}'),
       coalesce(array_agg(g.error ORDER BY t.i), '{}')
  FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(geojson, wkt, i),
       LATERAL gn2pg._parse_geometry(t.geojson::jsonb, t.wkt) AS g
