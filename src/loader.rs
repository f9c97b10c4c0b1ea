//! Writing harvested data: every statement that changes gn2pg.observation, gn2pg.metadata and
//! gn2pg.run_error during a run, in one place.
//!
//! A page arrives already split, checked, encoded and hashed (`encode::rows`, on the HTTP helper
//! thread). Loading it is a diff, set-based at every step, in the page's transaction:
//! 1. read the stored (key, hash, CA, JDD) of the page's keys, or of its whole key range when the
//!    page proves that range complete (keyset full runs);
//! 2. delete the stored keys of that range the page no longer has (mark-and-sweep in one pass);
//! 3. resolve the CA/JDD mappings of the page's few distinct (CA, JDD) pairs;
//! 4. convert the geometries Rust left to PostGIS, report the invalid ones;
//! 5. report uuids another row already owns (never silently skipped): the unique constraint on
//!    uuid finds them while writing, and only a page where it fires is loaded again with a lookup
//!    of each uuid, which names the owner;
//! 6. INSERT the new rows, upsert the changed ones; rows whose hash and mapping are unchanged are
//!    not written at all (no WAL, no bloat, no trigger downstream);
//! 7. upsert the page's CA/JDD into gn2pg.metadata, write the rejections to gn2pg.run_error;
//! 8. for a source with a GeoNature destination, write the page's rows and the swept ones to the
//!    synthese (sql/destination.sql, `gn2pg._destination_page`); every other deletion path
//!    (`delete_keys`) deletes them from the synthese too, in the same transaction.
//!
//! A page of a metadata export (one CA per item, its datasets nested) goes to gn2pg.metadata in
//! one statement of its own (`LOAD_METADATA_PAGE_SQL`).
//!
//! Statements are prepared once per run and kept. Array parameters are built as bytes
//! (`encode::array`): the INSERT's, in aligned memory handed to SPI as is; the others, copied
//! into palloc'd memory. Every object is schema-qualified: workers
//! run with the default search_path, and PostGIS may live in any schema. The statements themselves
//! are in sql/load/, one file each.

use std::collections::{HashMap, HashSet};

use pgrx::datum::DatumWithOid;
use pgrx::pg_sys::{self, PgOid};
use pgrx::prelude::*;
use pgrx::spi::{self, quote_identifier, OwnedPreparedStatement, SpiClient};

use crate::encode::array::{Aligned, ArrayBuilder};
use crate::encode::rows::{uuid_text, Columns, Encoding, Geom, PageRows, Rejected, Row};
use crate::source::paging::KeyRange;

type SpiResult<T> = Result<T, spi::Error>;
type Uuid16 = [u8; 16];

/// One page to load, for one source.
pub struct PageSpec<'a> {
    pub source: &'a str,
    pub run_id: i64,
    pub key_column: &'a str,
    /// Keyset full runs: local rows in this key range that are absent from the page are gone
    /// from the export and are deleted.
    pub sweep: Option<KeyRange>,
}

/// Counters of one loaded page.
#[derive(Debug, Default, Clone)]
pub struct PageLoad {
    pub received: i64,
    pub inserted: i64,
    pub updated: i64,
    pub unchanged: i64,
    pub failed: i64,
    pub deleted: i64,
    pub max_source_action: Option<String>,
}

/// What the table holds for a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stored {
    pub hash: Option<i64>,
    pub ca: Option<Uuid16>,
    pub jdd: Option<Uuid16>,
}

/// Where a (source CA, source JDD) pair lands.
pub type Targets = HashMap<(Option<Uuid16>, Option<Uuid16>), (Option<Uuid16>, Option<Uuid16>)>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Insert,
    Update,
    Keep,
}

/// The write decided for each accepted row, with its destination CA and JDD. Rows unchanged
/// since they were stored, mapping included, are kept as they are. Stored rows without a hash
/// (written by gn2pg 0.1) are rewritten once.
pub fn diff(
    rows: &[Row],
    stored: &HashMap<i64, Stored>,
    targets: &Targets,
) -> Vec<(Action, Option<Uuid16>, Option<Uuid16>)> {
    rows.iter()
        .map(|r| {
            let (ca, jdd) = targets.get(&(r.ca, r.jdd)).copied().unwrap_or((r.ca, r.jdd));
            let action = match stored.get(&r.id) {
                None => Action::Insert,
                Some(s) if s.hash == Some(r.hash) && s.ca == ca && s.jdd == jdd => Action::Keep,
                Some(_) => Action::Update,
            };
            (action, ca, jdd)
        })
        .collect()
}

/// Stored keys of a complete key range that the page does not hold.
pub fn gone(stored: &HashMap<i64, Stored>, page_keys: &[i64]) -> Vec<i64> {
    let received: HashSet<i64> = page_keys.iter().copied().collect();
    let mut g: Vec<i64> = stored.keys().copied().filter(|k| !received.contains(k)).collect();
    g.sort_unstable();
    g
}

/// Deletes rows of a source by key (the deletion log, or keys a complete pass did not see), and
/// counts them in the run log.
pub fn delete_keys(source: &str, run_id: i64, ids: &[i64]) -> SpiResult<i64> {
    let n = Spi::get_one_with_args::<i64>(DELETE_KEYS_SQL, &[source.into(), ids.to_vec().into()])?.unwrap_or(0);
    Spi::run_with_args(
        "SELECT gn2pg._destination_delete($1, $2, $3)",
        &[source.into(), run_id.into(), ids.to_vec().into()],
    )?;
    Spi::run_with_args(
        "UPDATE gn2pg.run_log SET rows_deleted = rows_deleted + $2 WHERE id = $1",
        &[run_id.into(), n.into()],
    )?;
    Ok(n)
}

/// The end of a successful run for the GeoNature destination: CA/JDD refreshed, rows pending
/// since earlier runs tried again (sql/destination.sql). Nothing for other sources.
pub fn finish_destination(source: &str, run_id: i64) -> SpiResult<()> {
    Spi::run_with_args("SELECT gn2pg._destination_finish($1, $2)", &[source.into(), run_id.into()])
}

/// Up to `limit` stored keys of a source greater than `after`, in key order.
pub fn stored_keys_after(source: &str, after: i64, limit: i64) -> SpiResult<Vec<i64>> {
    Ok(Spi::get_one_with_args::<Vec<i64>>(STORED_KEYS_AFTER_SQL, &[source.into(), after.into(), limit.into()])?
        .unwrap_or_default())
}

/// A by-reference datum built in Rust, handed to SPI as is.
struct Prebuilt(pg_sys::Datum);

impl IntoDatum for Prebuilt {
    fn into_datum(self) -> Option<pg_sys::Datum> {
        Some(self.0)
    }
    fn type_oid() -> pg_sys::Oid {
        pg_sys::InvalidOid
    }
}

/// Copies an array built by [`ArrayBuilder`] into palloc'd memory of the current (SPI) context,
/// freed when the statement's SPI connection ends.
fn array_arg<'a>(a: &ArrayBuilder, array_type: pg_sys::Oid) -> DatumWithOid<'a> {
    let len = a.size();
    // SAFETY: palloc raises on failure and returns MAXALIGNed memory of the requested size, which
    // `write_to` fills with a complete array varlena of `array_type` (encode::array).
    unsafe {
        let p = pg_sys::palloc(len) as *mut u8;
        a.write_to(std::slice::from_raw_parts_mut(p, len));
        DatumWithOid::new(Prebuilt(pg_sys::Datum::from(p)), array_type)
    }
}

/// An array built in aligned memory (`encode::rows::Columns`), handed to SPI without a copy.
fn prebuilt_arg<'a>(a: &'a Aligned, array_type: pg_sys::Oid) -> DatumWithOid<'a> {
    // SAFETY: `a` is a complete, MAXALIGNed array varlena of `array_type`; it belongs to the page
    // being loaded and outlives the statement; PostgreSQL only reads parameter values.
    unsafe { DatumWithOid::new(Prebuilt(pg_sys::Datum::from(a.as_ptr() as *mut u8)), array_type) }
}

fn ints(values: impl Iterator<Item = Option<i64>>) -> ArrayBuilder {
    ArrayBuilder::of_i64(pg_sys::INT8OID.into(), values)
}

fn texts<'t>(values: impl Iterator<Item = Option<&'t str>>) -> ArrayBuilder {
    ArrayBuilder::of_bytes(pg_sys::TEXTOID.into(), values.map(|v| v.map(str::as_bytes)))
}

fn jsonbs<'v>(values: impl Iterator<Item = Option<&'v [u8]>>) -> ArrayBuilder {
    ArrayBuilder::of_varlenas(pg_sys::JSONBOID.into(), 0, values)
}

const INT8_ARRAY: pg_sys::Oid = pg_sys::INT8ARRAYOID;
const UUID_ARRAY: pg_sys::Oid = pg_sys::UUIDARRAYOID;
const TEXT_ARRAY: pg_sys::Oid = pg_sys::TEXTARRAYOID;
const JSONB_ARRAY: pg_sys::Oid = pg_sys::JSONBARRAYOID;
const BYTEA_ARRAY: pg_sys::Oid = pg_sys::BYTEAARRAYOID;
const TIMESTAMP_ARRAY: pg_sys::Oid = pg_sys::TIMESTAMPARRAYOID;

// The statements, in sql/load/: each file says at its top what its parameters ($1…) hold and
// which `{placeholder}` this file fills in.

/// Whether gn2pg.observation.uuid is unique and gn2pg.observation.item compresses with lz4.
const OBSERVATION_SETUP_SQL: &str = include_str!("../sql/load/observation_setup.sql");

/// Batches of stored keys, for sweeps that go through a whole source.
const STORED_KEYS_AFTER_SQL: &str = include_str!("../sql/load/stored_keys_after.sql");

/// (key, hash, CA, JDD) of stored rows, as four arrays; `{where}` chooses the rows.
const STORED_SQL: &str = include_str!("../sql/load/stored_rows.sql");

const DELETE_KEYS_SQL: &str = include_str!("../sql/load/delete_keys.sql");

const RESOLVE_SQL: &str = include_str!("../sql/load/resolve_mapping.sql");

/// Geometries Rust did not convert: PostGIS converts them, with the per-row error trap of
/// gn2pg._parse_geometry (a subtransaction per row, hence only for these). The column is 2D, as
/// GeoNature's synthese: Z and M ordinates are dropped (an array item keeps its WKT as sent).
const DEFERRED_GEOMETRY_SQL: &str = include_str!("../sql/load/deferred_geometry.sql");

/// One owner per probed uuid; LATERAL … LIMIT 1 keeps this an index lookup per uuid whatever the
/// planner thinks of the table's size (its generic plan is made at the first page of a run,
/// when the table may still be empty).
const UUID_OWNERS_SQL: &str = include_str!("../sql/load/uuid_owners.sql");

/// The rows of an INSERT. `unnest` in the select list runs value per call (ProjectSet); in FROM
/// it would first copy every column of the page into a tuplestore.
const ROWS: &str = include_str!("../sql/load/page_rows.sql");

const INSERT_SQL: &str = include_str!("../sql/load/insert_rows.sql");

/// Changed rows: INSERT_SQL as an upsert rather than UPDATE … FROM unnest: its conflict check is
/// a primary key lookup per row, so no join has to be planned, and downstream triggers see what
/// 0.1 did.
const UPSERT_CLAUSE: &str = include_str!("../sql/load/upsert_clause.sql");

/// Upsert of gn2pg.metadata rows. One row per (source, level, uuid) holds the latest content;
/// it is rewritten only when the content changed, and flat columns (a name, no object) never
/// erase an object received earlier.
const METADATA_UPSERT: &str = include_str!("../sql/load/metadata_upsert_clause.sql");

const METADATA_SQL: &str = include_str!("../sql/load/page_metadata.sql");

const REJECT_SQL: &str = include_str!("../sql/load/rejections.sql");

fn oids(list: &[pg_sys::Oid]) -> Vec<PgOid> {
    list.iter().map(|o| PgOid::from(*o)).collect()
}

/// Whether this run builds geometries in Rust, said in the server log when it does not.
fn fast_geometry(pg: &str) -> SpiResult<bool> {
    let (server, postgis) = Spi::get_two::<i32, String>(&format!(
        "SELECT pg_catalog.current_setting('server_version_num')::pg_catalog.int4, {pg}.postgis_lib_version()"
    ))?;
    let (server, postgis) = (server.unwrap_or(0), postgis.unwrap_or_default());
    let verified = crate::encode::geometry::verified_on(server, &postgis);
    if !crate::guc::fast_geometry() {
        pgrx::log!("gn2pg: geometries are converted by PostGIS (gn2pg.fast_geometry is off)");
    } else if !verified {
        pgrx::log!(
            "gn2pg: geometries are converted by PostGIS: gn2pg builds EWKB itself only on {}, not on PostgreSQL {server} with PostGIS {postgis}",
            crate::encode::geometry::VERIFIED_ON
        );
    }
    Ok(verified && crate::guc::fast_geometry())
}

/// The page loader's statements, prepared once per run.
pub struct Loader {
    /// gn2pg.observation.uuid is unique (deferred): a page is first written without looking its
    /// uuids up, and only if that fails is it written again with the lookups (`careful`).
    pub uuid_unique: bool,
    /// How the run's pages are encoded: items compressed on the helper thread when
    /// gn2pg.observation.item compresses with lz4 (as created; otherwise PostgreSQL does it), and
    /// geometries built in Rust only on the PostgreSQL and PostGIS versions the encoder was
    /// verified with (`encode::geometry::verified_on`).
    pub encoding: Encoding,
    stored_in_range: OwnedPreparedStatement,
    stored_keys: OwnedPreparedStatement,
    delete_keys: OwnedPreparedStatement,
    resolve: OwnedPreparedStatement,
    deferred_geometry: OwnedPreparedStatement,
    uuid_owners: OwnedPreparedStatement,
    insert: OwnedPreparedStatement,
    update: OwnedPreparedStatement,
    metadata: OwnedPreparedStatement,
    reject: OwnedPreparedStatement,
    destination: OwnedPreparedStatement,
}

impl Loader {
    /// Prepares the statements for a PostGIS schema; call inside a transaction.
    pub fn prepare(postgis_schema: &str) -> SpiResult<Loader> {
        use pg_sys::{INT8OID, TEXTOID};
        let pg = quote_identifier(postgis_schema);
        let sql = |s: &str| s.replace("{rows}", ROWS).replace("{pg}", &pg).replace("{meta_upsert}", METADATA_UPSERT);
        let rows_args = [
            TEXTOID,
            INT8OID,
            INT8_ARRAY,
            UUID_ARRAY,
            JSONB_ARRAY,
            BYTEA_ARRAY,
            UUID_ARRAY,
            UUID_ARRAY,
            UUID_ARRAY,
            UUID_ARRAY,
            TIMESTAMP_ARRAY,
            INT8_ARRAY,
        ];
        let (uuid_unique, compress_items) = Spi::get_two::<bool, bool>(OBSERVATION_SETUP_SQL)?;
        let (uuid_unique, compress_items) = (uuid_unique.unwrap_or(false), compress_items.unwrap_or(false));
        let encoding = Encoding { compress: compress_items, fast_geometry: fast_geometry(&pg)? };
        Spi::connect(|c| {
            let keep = |c: &SpiClient,
                        s: &str,
                        args: &[pg_sys::Oid],
                        writes: bool|
             -> SpiResult<OwnedPreparedStatement> {
                let s = sql(s);
                Ok(if writes { c.prepare_mut(s.as_str(), &oids(args))? } else { c.prepare(s.as_str(), &oids(args))? }
                    .keep())
            };
            Ok(Loader {
                uuid_unique,
                encoding,
                stored_in_range: keep(
                    c,
                    &STORED_SQL.replace("{where}", "o.id_data BETWEEN $2 AND $3"),
                    &[TEXTOID, INT8OID, INT8OID],
                    false,
                )?,
                stored_keys: keep(
                    c,
                    &STORED_SQL.replace("{where}", "o.id_data = ANY ($2)"),
                    &[TEXTOID, INT8_ARRAY],
                    false,
                )?,
                delete_keys: keep(c, DELETE_KEYS_SQL, &[TEXTOID, INT8_ARRAY], true)?,
                resolve: keep(c, RESOLVE_SQL, &[TEXTOID, UUID_ARRAY, UUID_ARRAY], false)?,
                deferred_geometry: keep(c, DEFERRED_GEOMETRY_SQL, &[TEXT_ARRAY, TEXT_ARRAY], false)?,
                uuid_owners: keep(c, UUID_OWNERS_SQL, &[TEXTOID, UUID_ARRAY, INT8_ARRAY], false)?,
                insert: keep(c, &INSERT_SQL.replace("{upsert}", ""), &rows_args, true)?,
                update: keep(c, &INSERT_SQL.replace("{upsert}", UPSERT_CLAUSE), &rows_args, true)?,
                metadata: keep(
                    c,
                    METADATA_SQL,
                    &[TEXTOID, INT8OID, TEXT_ARRAY, UUID_ARRAY, TEXT_ARRAY, UUID_ARRAY, JSONB_ARRAY],
                    true,
                )?,
                reject: keep(
                    c,
                    REJECT_SQL,
                    &[TEXTOID, INT8OID, INT8_ARRAY, TEXT_ARRAY, JSONB_ARRAY, TEXT_ARRAY],
                    true,
                )?,
                destination: keep(
                    c,
                    "SELECT gn2pg._destination_page($1, $2, $3, $4)",
                    &[TEXTOID, INT8OID, INT8_ARRAY, INT8_ARRAY],
                    true,
                )?,
            })
        })
    }

    /// Loads a page (see the module documentation); the caller owns the transaction. Unless
    /// `careful`, uuids are left to the unique constraint, checked before returning: a uuid
    /// stored under another key makes the whole page fail, and the caller loads it again
    /// carefully, which reports that row and loads the others.
    pub fn load(&self, spec: &PageSpec, page: &PageRows, careful: bool) -> SpiResult<PageLoad> {
        Spi::connect_mut(|c| {
            let mut rejected: Vec<Rejected> = Vec::new();
            let stored = self.stored(c, spec, page)?;
            let mut deleted = 0;
            let swept = if spec.sweep.is_some() { gone(&stored, &page.keys) } else { vec![] };
            if !swept.is_empty() {
                let t = c.update(
                    &self.delete_keys,
                    None,
                    &[spec.source.into(), array_arg(&ints(swept.iter().map(|k| Some(*k))), INT8_ARRAY)],
                )?;
                deleted = t.first().get::<i64>(1)?.unwrap_or(0);
            }
            let targets = self.targets(c, spec, &page.rows)?;
            let plan = diff(&page.rows, &stored, &targets);
            let mut write: Vec<Write> = page
                .rows
                .iter()
                .zip(plan)
                .filter(|(_, (a, _, _))| *a != Action::Keep)
                .map(|(row, (action, ca, jdd))| Write { row, action, ca, jdd, ewkb: None, ok: true })
                .collect();
            let unchanged = page.rows.len() as i64 - write.len() as i64;
            self.convert_deferred(c, &mut write, &mut rejected)?;
            if careful || !self.uuid_unique {
                self.check_uuid_owners(c, spec, &mut write, &mut rejected)?;
            }
            write.retain(|w| w.ok);
            let (inserted, updated) = self.write_rows(c, spec, page, &write)?;
            if self.uuid_unique {
                // Raises here, inside the page's transaction, rather than at its commit.
                c.update("SET CONSTRAINTS gn2pg.observation_uuid_key IMMEDIATE", None, &[])?;
            }
            self.write_metadata(c, spec, page)?;
            let failed = (page.rejected.len() + rejected.len()) as i64;
            self.write_rejections(c, spec, page.rejected.iter().chain(rejected.iter()))?;
            c.update(
                &self.destination,
                None,
                &[
                    spec.source.into(),
                    spec.run_id.into(),
                    array_arg(&ints(page.keys.iter().map(|k| Some(*k))), INT8_ARRAY),
                    array_arg(&ints(swept.iter().map(|k| Some(*k))), INT8_ARRAY),
                ],
            )?;
            Ok(PageLoad {
                received: page.received as i64,
                inserted,
                updated,
                unchanged,
                failed,
                deleted,
                max_source_action: page.max_updated.map(crate::encode::rows::timestamp_text),
            })
        })
    }

    /// What is stored for the page's keys: its whole key range when the page proves that range
    /// complete (the sweep needs it), plus any key outside it (a source ignoring a bound).
    fn stored(&self, c: &SpiClient, spec: &PageSpec, page: &PageRows) -> SpiResult<HashMap<i64, Stored>> {
        let (lo, hi) = match spec.sweep {
            Some(r) => (r.lo, r.hi.unwrap_or(i64::MAX)),
            None => (1, 0),
        };
        let outside: Vec<i64> = page.rows.iter().map(|r| r.id).filter(|k| !(lo..=hi).contains(k)).collect();
        let mut out = HashMap::with_capacity(page.rows.len());
        if spec.sweep.is_some() {
            let t = c.select(&self.stored_in_range, None, &[spec.source.into(), lo.into(), hi.into()])?;
            Self::collect_stored(t, &mut out)?;
        }
        if !outside.is_empty() {
            let keys = ints(outside.into_iter().map(Some));
            let t = c.select(&self.stored_keys, None, &[spec.source.into(), array_arg(&keys, INT8_ARRAY)])?;
            Self::collect_stored(t, &mut out)?;
        }
        Ok(out)
    }

    fn collect_stored(t: pgrx::spi::SpiTupleTable, out: &mut HashMap<i64, Stored>) -> SpiResult<()> {
        let r = t.first();
        let ids = r.get::<Vec<Option<i64>>>(1)?.unwrap_or_default();
        let hashes = r.get::<Vec<Option<i64>>>(2)?.unwrap_or_default();
        let cas = r.get::<Vec<Option<pgrx::Uuid>>>(3)?.unwrap_or_default();
        let jdds = r.get::<Vec<Option<pgrx::Uuid>>>(4)?.unwrap_or_default();
        for (i, id) in ids.into_iter().enumerate() {
            if let Some(id) = id {
                let u = |v: &Vec<Option<pgrx::Uuid>>| v.get(i).copied().flatten().map(|u| *u);
                out.insert(id, Stored { hash: hashes.get(i).copied().flatten(), ca: u(&cas), jdd: u(&jdds) });
            }
        }
        Ok(())
    }

    /// Destinations of the page's distinct (CA, JDD) pairs (gn2pg._resolve_mapping).
    fn targets(&self, c: &SpiClient, spec: &PageSpec, rows: &[Row]) -> SpiResult<Targets> {
        let mut pairs: Vec<(Option<Uuid16>, Option<Uuid16>)> = rows.iter().map(|r| (r.ca, r.jdd)).collect();
        pairs.sort_unstable();
        pairs.dedup();
        if pairs.is_empty() {
            return Ok(Targets::new());
        }
        let t = c.select(
            &self.resolve,
            None,
            &[
                spec.source.into(),
                array_arg(&ArrayBuilder::of_uuid(pairs.iter().map(|p| p.0.as_ref())), UUID_ARRAY),
                array_arg(&ArrayBuilder::of_uuid(pairs.iter().map(|p| p.1.as_ref())), UUID_ARRAY),
            ],
        )?;
        let r = t.first();
        let col = |i: usize| -> SpiResult<Vec<Option<Uuid16>>> {
            Ok(r.get::<Vec<Option<pgrx::Uuid>>>(i)?.unwrap_or_default().into_iter().map(|u| u.map(|u| *u)).collect())
        };
        let (sca, sjdd, ca, jdd) = (col(1)?, col(2)?, col(3)?, col(4)?);
        Ok((0..sca.len()).map(|i| ((sca[i], sjdd[i]), (ca[i], jdd[i]))).collect())
    }

    fn convert_deferred(&self, c: &SpiClient, write: &mut [Write], rejected: &mut Vec<Rejected>) -> SpiResult<()> {
        let deferred: Vec<usize> =
            (0..write.len()).filter(|&i| matches!(write[i].row.geom, Geom::Defer { .. })).collect();
        if deferred.is_empty() {
            return Ok(());
        }
        let text = |i: &usize, geojson: bool| match &write[*i].row.geom {
            Geom::Defer { geojson: g, wkt } => {
                if geojson {
                    g.as_deref()
                } else {
                    wkt.as_deref()
                }
            }
            _ => None,
        };
        let t = c.select(
            &self.deferred_geometry,
            None,
            &[
                array_arg(&texts(deferred.iter().map(|i| text(i, true))), TEXT_ARRAY),
                array_arg(&texts(deferred.iter().map(|i| text(i, false))), TEXT_ARRAY),
            ],
        )?;
        let r = t.first();
        let ewkb = r.get::<Vec<Option<String>>>(1)?.unwrap_or_default();
        let errors = r.get::<Vec<Option<String>>>(2)?.unwrap_or_default();
        for (k, i) in deferred.into_iter().enumerate() {
            let w = &mut write[i];
            match errors.get(k).cloned().flatten() {
                Some(e) => {
                    w.ok = false;
                    rejected.push(rejection(w.row, e));
                }
                None => w.ewkb = ewkb.get(k).cloned().flatten().and_then(|h| unhex(&h)),
            }
        }
        Ok(())
    }

    /// A uuid stored under another key (of any source) rejects the row, with the owner named;
    /// an owner rewritten by this very page with another uuid is no conflict.
    fn check_uuid_owners(
        &self,
        c: &SpiClient,
        spec: &PageSpec,
        write: &mut [Write],
        rejected: &mut Vec<Rejected>,
    ) -> SpiResult<()> {
        let probe: Vec<usize> = (0..write.len()).filter(|&i| write[i].ok && write[i].row.uuid.is_some()).collect();
        if probe.is_empty() {
            return Ok(());
        }
        let t = c.select(
            &self.uuid_owners,
            None,
            &[
                spec.source.into(),
                array_arg(&ArrayBuilder::of_uuid(probe.iter().map(|&i| write[i].row.uuid.as_ref())), UUID_ARRAY),
                array_arg(&ints(probe.iter().map(|&i| Some(write[i].row.id))), INT8_ARRAY),
            ],
        )?;
        let r = t.first();
        let at = r.get::<Vec<Option<i64>>>(1)?.unwrap_or_default();
        if at.is_empty() {
            return Ok(());
        }
        let owner_source = r.get::<Vec<Option<String>>>(2)?.unwrap_or_default();
        let owner_id = r.get::<Vec<Option<i64>>>(3)?.unwrap_or_default();
        let rewritten: HashSet<i64> = write.iter().filter(|w| w.ok).map(|w| w.row.id).collect();
        for (k, pos) in at.iter().enumerate() {
            let (Some(pos), Some(src), Some(oid)) =
                (pos, owner_source.get(k).cloned().flatten(), owner_id.get(k).copied().flatten())
            else {
                continue;
            };
            if src == spec.source && rewritten.contains(&oid) {
                continue;
            }
            let w = &mut write[probe[(*pos - 1) as usize]];
            if w.ok {
                w.ok = false;
                let u = w.row.uuid.map(|u| uuid_text(&u)).unwrap_or_default();
                rejected.push(rejection(
                    w.row,
                    format!("uuid {u} already belongs to source {src}, {} {oid}", spec.key_column),
                ));
            }
        }
        Ok(())
    }

    fn write_rows(
        &self,
        c: &mut SpiClient,
        spec: &PageSpec,
        page: &PageRows,
        write: &[Write],
    ) -> SpiResult<(i64, i64)> {
        let mut counts = (0, 0);
        for action in [Action::Insert, Action::Update] {
            let rows: Vec<&Write> = write.iter().filter(|w| w.action == action).collect();
            if rows.is_empty() {
                continue;
            }
            // A page of new rows only (every page of a first full run) is inserted from the
            // arrays the helper thread built; otherwise the rows to write are gathered here.
            let gathered;
            let cols = match page.columns.as_ref().filter(|_| action == Action::Insert && rows.len() == page.rows.len())
            {
                Some(prebuilt) => prebuilt,
                None => {
                    // Fewer rows than the page whose columns were built: cannot fail but by a bug.
                    gathered = Columns::of(rows.iter().map(|w| w.row)).unwrap_or_else(|e| pgrx::error!("gn2pg: {e}"));
                    &gathered
                }
            };
            // Geometries PostGIS converted are not in the arrays.
            let deferred = rows.iter().any(|w| matches!(w.row.geom, Geom::Defer { .. }));
            let geom = if deferred {
                array_arg(
                    &ArrayBuilder::of_bytes(pg_sys::BYTEAOID.into(), rows.iter().map(|w| w.geometry())),
                    BYTEA_ARRAY,
                )
            } else {
                prebuilt_arg(&cols.geom, BYTEA_ARRAY)
            };
            let args = [
                spec.source.into(),
                spec.run_id.into(),
                prebuilt_arg(&cols.id, INT8_ARRAY),
                prebuilt_arg(&cols.uuid, UUID_ARRAY),
                prebuilt_arg(&cols.item, JSONB_ARRAY),
                geom,
                // Where the rows land depends on the mappings, resolved here.
                array_arg(&ArrayBuilder::of_uuid(rows.iter().map(|w| w.ca.as_ref())), UUID_ARRAY),
                array_arg(&ArrayBuilder::of_uuid(rows.iter().map(|w| w.jdd.as_ref())), UUID_ARRAY),
                prebuilt_arg(&cols.source_ca, UUID_ARRAY),
                prebuilt_arg(&cols.source_jdd, UUID_ARRAY),
                prebuilt_arg(&cols.updated, TIMESTAMP_ARRAY),
                prebuilt_arg(&cols.hash, INT8_ARRAY),
            ];
            let stmt = if action == Action::Insert { &self.insert } else { &self.update };
            let n = c.update(stmt, None, &args)?.first().get::<i64>(1)?.unwrap_or(0);
            if action == Action::Insert {
                counts.0 = n;
            } else {
                counts.1 = n;
            }
        }
        Ok(counts)
    }

    fn write_metadata(&self, c: &mut SpiClient, spec: &PageSpec, page: &PageRows) -> SpiResult<()> {
        if page.meta.is_empty() {
            return Ok(());
        }
        let m = &page.meta;
        c.update(
            &self.metadata,
            None,
            &[
                spec.source.into(),
                spec.run_id.into(),
                array_arg(&texts(m.iter().map(|e| Some(e.level.label()))), TEXT_ARRAY),
                array_arg(&ArrayBuilder::of_uuid(m.iter().map(|e| Some(&e.uuid))), UUID_ARRAY),
                array_arg(&texts(m.iter().map(|e| e.name.as_deref())), TEXT_ARRAY),
                array_arg(&ArrayBuilder::of_uuid(m.iter().map(|e| e.parent.as_ref())), UUID_ARRAY),
                array_arg(&jsonbs(m.iter().map(|e| e.item.as_deref())), JSONB_ARRAY),
            ],
        )?;
        Ok(())
    }

    fn write_rejections<'r>(
        &self,
        c: &mut SpiClient,
        spec: &PageSpec,
        rejected: impl Iterator<Item = &'r Rejected> + Clone,
    ) -> SpiResult<()> {
        if rejected.clone().next().is_none() {
            return Ok(());
        }
        c.update(
            &self.reject,
            None,
            &[
                spec.source.into(),
                spec.run_id.into(),
                array_arg(&ints(rejected.clone().map(|r| r.id)), INT8_ARRAY),
                array_arg(&texts(rejected.clone().map(|r| r.uuid.as_deref())), TEXT_ARRAY),
                array_arg(&jsonbs(rejected.clone().map(|r| r.item.as_deref())), JSONB_ARRAY),
                array_arg(&texts(rejected.map(|r| Some(r.reason.as_str()))), TEXT_ARRAY),
            ],
        )?;
        Ok(())
    }
}

fn unhex(h: &str) -> Option<Vec<u8>> {
    let b = h.as_bytes();
    if !b.len().is_multiple_of(2) {
        return None;
    }
    b.chunks(2).map(|p| u8::from_str_radix(std::str::from_utf8(p).ok()?, 16).ok()).collect()
}

fn rejection(row: &Row, reason: String) -> Rejected {
    Rejected { id: Some(row.id), uuid: row.uuid.map(|u| uuid_text(&u)), item: Some(row.item.clone()), reason }
}

/// A row to write, with its destination CA/JDD and, for deferred geometries, PostGIS's EWKB.
struct Write<'p> {
    row: &'p Row,
    action: Action,
    ca: Option<Uuid16>,
    jdd: Option<Uuid16>,
    ewkb: Option<Vec<u8>>,
    ok: bool,
}

impl Write<'_> {
    fn geometry(&self) -> Option<&[u8]> {
        match &self.row.geom {
            Geom::Ewkb(b) => Some(b),
            Geom::Defer { .. } => self.ewkb.as_deref(),
            Geom::None => None,
        }
    }
}

const UUID_RE: &str = "'^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$'";

/// $1 body, $2 source, $3 run id, $4 key column, $5 FeatureCollection?
///
/// One page of a metadata export (GN2PG's `metadata_only` view): one item per CA (`ca_uuid`,
/// `ca_nom`, `ca_data`) with its datasets nested in `datasets` (`jdd_uuid`, `jdd_nom`,
/// `jdd_data`). Everything goes to gn2pg.metadata; bad entries go to gn2pg.run_error.
const LOAD_METADATA_PAGE_SQL: &str = include_str!("../sql/load/metadata_export_page.sql");

pub fn load_metadata_page_sql() -> String {
    LOAD_METADATA_PAGE_SQL.replace("{uuid_re}", UUID_RE).replace("{meta_upsert}", METADATA_UPSERT)
}

/// Where the items of a metadata export are.
pub struct MetadataPageSpec<'a> {
    pub source: &'a str,
    pub run_id: i64,
    pub key_column: &'a str,
    pub feature_collection: bool,
}

/// Counters of one metadata page.
#[derive(Debug, Default, Clone)]
pub struct MetadataLoad {
    /// CA items in the page.
    pub received: i64,
    /// CA and JDD rows inserted or changed.
    pub written: i64,
    /// CA items and dataset entries rejected.
    pub failed: i64,
}

pub fn load_metadata_page(sql: &str, spec: &MetadataPageSpec, body: &str) -> SpiResult<MetadataLoad> {
    Spi::connect_mut(|c| {
        let t = c.update(
            sql,
            None,
            &[
                body.into(),
                spec.source.into(),
                spec.run_id.into(),
                spec.key_column.into(),
                spec.feature_collection.into(),
            ],
        )?;
        let r = t.first();
        let n = |i| -> SpiResult<i64> { Ok(r.get::<i64>(i)?.unwrap_or(0)) };
        Ok(MetadataLoad { received: n(1)?, written: n(2)?, failed: n(3)? })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(id: i64, hash: i64, ca: Option<Uuid16>) -> Row {
        Row { id, uuid: None, item: vec![], geom: Geom::None, updated: None, ca, jdd: None, hash }
    }

    #[test]
    fn diff_keeps_unchanged_rows_and_follows_mappings() {
        let a = Some([1u8; 16]);
        let b = Some([2u8; 16]);
        let rows = vec![row(1, 10, a), row(2, 20, a), row(3, 30, a), row(4, 40, None)];
        let stored: HashMap<i64, Stored> = [
            (1, Stored { hash: Some(10), ca: a, jdd: None }),
            (2, Stored { hash: Some(21), ca: a, jdd: None }),
            (4, Stored { hash: None, ca: None, jdd: None }),
        ]
        .into_iter()
        .collect();
        let plan = diff(&rows, &stored, &Targets::new());
        let actions: Vec<Action> = plan.iter().map(|p| p.0).collect();
        assert_eq!(
            actions,
            vec![Action::Keep, Action::Update, Action::Insert, Action::Update],
            "no hash yet: rewritten once"
        );
        // Mapping CA a to b changes where row 1 lands: it is rewritten.
        let targets: Targets = [((a, None), (b, None))].into_iter().collect();
        let plan = diff(&rows, &stored, &targets);
        assert_eq!(plan[0], (Action::Update, b, None));
    }

    #[test]
    fn gone_lists_stored_keys_missing_from_the_page() {
        let s = Stored { hash: None, ca: None, jdd: None };
        let stored: HashMap<i64, Stored> = [(1, s), (2, s), (5, s)].into_iter().collect();
        assert_eq!(gone(&stored, &[2, 3]), vec![1, 5]);
        assert!(gone(&stored, &[1, 2, 5]).is_empty());
    }
}
