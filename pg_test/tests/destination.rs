//! The GeoNature destination (issue 11): harvested rows kept in a GeoNature-shaped synthese and
//! gn_meta (pg_test/sql/geonature.sql), nothing dropped silently. Each defect of GN2PG's
//! to_gnsynthese.sql (docs/geonature-destination.md §4) has a test here that gn2pg gets right:
//! CA/JDD updated (not write-once), uuid conflicts reported (not skipped and counted as
//! written), unknown nomenclatures reported (not silently defaulted), labels matched exactly,
//! the time of day kept, habitats written from code_habitat, an unknown cd_nom keeping its
//! harvested row, deletions applied from every path.

use gn2pg_pg_test::checks::{add_source, harvest, n};
use gn2pg_pg_test::db::{error_text, Client, TestDb};
use gn2pg_pg_test::fixture::{FixtureConfig, FixtureServer, Mutation};
use gn2pg_pg_test::geonature::{self, assert_consistent, assert_synthese_matches_source};

fn fixture(rows: u64) -> FixtureServer {
    FixtureServer::start(FixtureConfig { rows, ..Default::default() }).expect("fixture server starts")
}

/// A test database with GeoNature's schemas (local SRID `srid`).
fn geonature_db(prefix: &str, srid: i32) -> TestDb {
    let mut db = TestDb::new(prefix);
    geonature::load(&mut db.client, srid);
    db
}

fn count(db: &mut Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).unwrap_or_else(|e| panic!("{sql}: {}", error_text(&e))).get(0)
}

/// Calls of a GeoNature trigger so far (gn_fixture counts them).
fn calls(db: &mut Client, trigger: &str) -> i64 {
    db.query_one("SELECT calls FROM gn_fixture.trigger_calls WHERE trigger_name = $1", &[&trigger]).unwrap().get(0)
}

/// The (field, value, problem, outcome, rows) lines of gn2pg.destination_report for a run.
fn report(db: &mut Client, run_id: i64) -> Vec<(String, Option<String>, String, String, i64)> {
    db.query(
        "SELECT field, value, problem, outcome, rows FROM gn2pg.destination_report WHERE run_id = $1 ORDER BY 1, 2, 3",
        &[&run_id],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3), r.get(4)))
    .collect()
}

/// Pending rows of a source by reason.
fn pending(db: &mut Client, source: &str) -> Vec<(String, i64)> {
    db.query(
        "SELECT reason, count(*) FROM gn2pg.destination_pending WHERE source = $1 GROUP BY 1 ORDER BY 1",
        &[&source],
    )
    .unwrap()
    .iter()
    .map(|r| (r.get(0), r.get(1)))
    .collect()
}

/// Full, then incremental runs with updates, inserts and deletions at the source (login source:
/// deletions come from the deletion log), then a reconciling full run: the synthese equals the
/// source at each step, updates rewrite only the columns that changed, unchanged rows are not
/// written at all. Rows the view sends as attached to an area (type_info_geo 2) without the
/// area cannot be written: pending, reported, never silently changed to another value.
#[test]
fn full_then_incremental_runs_keep_the_synthese_equal_to_the_source() {
    let fx = fixture(1500);
    let mut db = geonature_db("dest_runs", geonature::LAMBERT_93);
    add_source(&mut db.client, "pne", &fx, 1, "login", r#"{"destination": "geonature"}"#);
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_synthese.t_sources WHERE name_source = 'gn2pg:pne'
                                 AND entity_source_pk_field = 'id_synthese' AND url_source LIKE 'http://127.0.0.1:%/geonature'
                                 AND desc_source LIKE '%gn2pg%'"),
        1,
        "one t_sources row that says it is a gn2pg flow"
    );
    let full = harvest(&mut db.client, "pne", "full").unwrap();
    let (written, pending_rows) = assert_synthese_matches_source(&mut db.client, "pne", &fx, 1, false);
    assert_eq!(written + pending_rows, 1500);
    assert_eq!(n(&full, "synthese_inserted"), written, "{full}");
    // View (b) carries no area_attachment: its rows attached to an area wait (policy reject).
    assert_eq!(pending(&mut db.client, "pne"), vec![("nomenclature".to_string(), pending_rows)]);
    assert!(pending_rows > 0, "the fixture has rows attached to an area");
    assert_eq!(n(&full, "synthese_pending_nomenclature"), pending_rows);
    let details: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn2pg.destination_pending WHERE detail LIKE '%type_info_geo=2 (attachment without a known area_attachment)%'",
    );
    assert_eq!(details, pending_rows, "each says why");
    let lines = report(&mut db.client, n(&full, "id"));
    assert_eq!(
        lines,
        vec![(
            "type_info_geo".into(),
            Some("2".into()),
            "attachment (2) without a known area_attachment".into(),
            "pending".into(),
            pending_rows
        )],
        "reported per run: field, value, count"
    );
    // The time of day of date_debut/date_fin is kept (GN2PG casts them to date).
    assert!(
        count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese WHERE date_min::time <> '00:00'")
            > written / 2,
        "most fixture rows have a time of day"
    );
    // Habitats come from code_habitat (GN2PG read a key the views do not send).
    assert!(count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese WHERE cd_hab IS NOT NULL") > 0);
    assert_consistent(&mut db.client, "pne");

    // Nothing changed: an incremental run writes nothing to the synthese.
    let meta_calls = calls(&mut db.client, "tri_meta_dates_change_synthese");
    let quiet = harvest(&mut db.client, "pne", "incremental").unwrap();
    assert_eq!((n(&quiet, "synthese_inserted"), n(&quiet, "synthese_updated")), (0, 0), "{quiet}");
    assert_eq!(calls(&mut db.client, "tri_meta_dates_change_synthese"), meta_calls, "no row written");

    // Changes at the source: the incremental run applies them.
    let m = fx.mutate(Mutation { update: 120, delete: 40, insert: 60, ..Default::default() });
    let deleted_written: i64 = db
        .client
        .query_one(
            "SELECT count(*) FROM gn2pg.destination_row WHERE source = 'pne' AND state = 'written' AND id_data = ANY ($1)",
            &[&m.deleted],
        )
        .unwrap()
        .get(0);
    let geometry_calls = calls(&mut db.client, "tri_update_cor_area_synthese");
    let sensitivity_calls = calls(&mut db.client, "tri_update_calculate_sensitivity");
    let meta_calls = calls(&mut db.client, "tri_meta_dates_change_synthese");
    let inc = harvest(&mut db.client, "pne", "incremental").unwrap();
    assert_eq!(inc["mode"], "incremental");
    assert_eq!(n(&inc, "synthese_deleted"), deleted_written, "deletion log: {inc}");
    assert!(deleted_written > 30);
    let updated = n(&inc, "synthese_updated");
    assert!(updated > 0 && updated <= m.updated.len() as i64, "{inc}");
    assert!(n(&inc, "synthese_inserted") > 0, "{inc}");
    let (written2, pending2) = assert_synthese_matches_source(&mut db.client, "pne", &fx, 1, false);
    assert_eq!(written2 + pending2, 1500 + 60 - 40);
    // The fixture's updates change counts, observers, validator and comments: GeoNature's
    // row-level UPDATE OF triggers on geometries, dates, taxon and statuses must not fire.
    assert_eq!(calls(&mut db.client, "tri_update_cor_area_synthese"), geometry_calls, "geometry unchanged");
    assert_eq!(calls(&mut db.client, "tri_update_calculate_sensitivity"), sensitivity_calls, "dates, taxon unchanged");
    // Each written row once: the inserts, the updates, and the sensitivity GeoNature sets on new rows.
    let rewrites = calls(&mut db.client, "tri_meta_dates_change_synthese") - meta_calls;
    assert!(rewrites <= updated + 2 * n(&inc, "synthese_inserted"), "{rewrites} row writes for {inc}");
    // GeoNature logs the deletions (what its own /synthese/log serves).
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_synthese.t_log_synthese WHERE last_action = 'D'"),
        deleted_written
    );

    // A reconciling full run changes nothing more.
    let again = harvest(&mut db.client, "pne", "full").unwrap();
    assert_eq!(
        (n(&again, "synthese_inserted"), n(&again, "synthese_updated"), n(&again, "synthese_deleted")),
        (0, 0, 0),
        "{again}"
    );
    assert_synthese_matches_source(&mut db.client, "pne", &fx, 1, false);
    assert_consistent(&mut db.client, "pne");
}

/// The module's default view sends French labels: they resolve by (type, label), the local SRID
/// comes from find_srid, an unknown label and an ambiguous one (two codes share it) are
/// reported and follow the source's policy: 'reject' keeps the rows pending until
/// gn2pg_map_nomenclature() and gn2pg_sync_destination() write them, without any request to
/// the source; 'default' writes them with the type's default and says so.
#[test]
fn labels_resolve_and_unresolved_values_follow_the_policy() {
    let fx = fixture(1200);
    // Export 6: public, FeatureCollection, v_synthese_sinp (labels).
    let mut db = geonature_db("dest_labels", 32631);
    // 'Passage' (TYP_GRP PASS) is unknown to this GeoNature; 'Indéterminé' is two STADE_VIE codes.
    db.client
        .batch_execute(
            "DELETE FROM ref_nomenclatures.t_nomenclatures n USING ref_nomenclatures.bib_nomenclatures_types t
              WHERE t.id_type = n.id_type AND t.mnemonique = 'TYP_GRP' AND n.cd_nomenclature = 'PASS'",
        )
        .unwrap();
    add_source(&mut db.client, "sinp", &fx, 6, "public", r#"{"destination": "geonature"}"#);
    let run = harvest(&mut db.client, "sinp", "full").unwrap();
    let (_, pending_rows) = assert_synthese_matches_source(&mut db.client, "sinp", &fx, 6, true);
    let srid = count(&mut db.client, "SELECT DISTINCT ST_SRID(the_geom_local)::bigint FROM gn_synthese.synthese");
    assert_eq!(srid, 32631, "the_geom_local in the destination's SRID");
    let lines = report(&mut db.client, n(&run, "id"));
    let line = |field: &str, problem: &str| {
        lines.iter().find(|l| l.0 == field && l.2 == problem).unwrap_or_else(|| panic!("{field}: {lines:?}")).clone()
    };
    let passage = line("type_regroupement", "unknown");
    assert_eq!((passage.1.as_deref(), passage.3.as_str()), (Some("Passage"), "pending"));
    let stade = line("stade_vie", "ambiguous label");
    assert_eq!((stade.1.as_deref(), stade.3.as_str()), (Some("Indéterminé"), "pending"));
    assert!(passage.4 > 0 && stade.4 > 0);
    assert_eq!(n(&run, "synthese_pending_nomenclature"), pending_rows);
    assert!(count(&mut db.client, "SELECT count(*) FROM gn2pg.destination_pending WHERE detail LIKE '%stade_vie=Indéterminé (ambiguous label)%'") > 0);

    // The admin maps the partner's values; the sync writes the pending rows, asking nothing.
    db.client.execute("SELECT gn2pg_map_nomenclature('sinp', 'STADE_VIE', 'Indéterminé', '0')", &[]).unwrap();
    db.client.execute("SELECT gn2pg_map_nomenclature('sinp', 'TYP_GRP', 'Passage', 'NSP')", &[]).unwrap();
    db.client.execute("SELECT gn2pg_map_nomenclature('sinp', 'TYP_INF_GEO', 'Rattachement', '1')", &[]).unwrap();
    let err = db.client.execute("SELECT gn2pg_map_nomenclature('sinp', 'SEXE', 'x', 'nope')", &[]).unwrap_err();
    assert!(
        error_text(&err).contains("type SEXE has no code \"nope\"") && error_text(&err).contains("Mâle"),
        "{}",
        error_text(&err)
    );
    fx.reset_stats();
    let changed: i64 = db.client.query_one("SELECT gn2pg_sync_destination('sinp')", &[]).unwrap().get(0);
    assert_eq!(fx.stats().requests, 0, "no HTTP request");
    assert_eq!(changed, pending_rows, "the pending rows, and nothing else");
    assert!(pending(&mut db.client, "sinp").is_empty());
    let (written, _) = assert_synthese_matches_source(&mut db.client, "sinp", &fx, 6, true);
    assert_eq!(written, 1200);
    let stage_0: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn_synthese.synthese s JOIN ref_nomenclatures.t_nomenclatures n
             ON n.id_nomenclature = s.id_nomenclature_life_stage WHERE n.cd_nomenclature = '1'",
    );
    assert_eq!(stage_0, 0, "'Indéterminé' went to code 0 as mapped");
    // Idempotent: a second sync rewrites nothing.
    let meta_calls = calls(&mut db.client, "tri_meta_dates_change_synthese");
    let again: i64 = db.client.query_one("SELECT gn2pg_sync_destination('sinp')", &[]).unwrap().get(0);
    assert_eq!((again, calls(&mut db.client, "tri_meta_dates_change_synthese")), (0, meta_calls));

    // Policy 'default' (another database, same source data): written with the defaults, reported.
    let mut db2 = geonature_db("dest_default", geonature::LAMBERT_93);
    db2.client
        .batch_execute(
            "DELETE FROM ref_nomenclatures.t_nomenclatures n USING ref_nomenclatures.bib_nomenclatures_types t
              WHERE t.id_type = n.id_type AND t.mnemonique = 'TYP_GRP' AND n.cd_nomenclature = 'PASS'",
        )
        .unwrap();
    add_source(
        &mut db2.client,
        "sinp",
        &fx,
        6,
        "public",
        r#"{"destination": "geonature", "nomenclature_unknown": "default"}"#,
    );
    let run2 = harvest(&mut db2.client, "sinp", "full").unwrap();
    assert_eq!(
        n(&run2, "synthese_inserted"),
        1200 - count(&mut db2.client, "SELECT count(*) FROM gn2pg.destination_pending")
    );
    assert!(pending(&mut db2.client, "sinp").is_empty(), "nothing waits under 'default'");
    assert_eq!(n(&run2, "synthese_defaulted"), pending_rows, "the same rows, written with defaults: {run2}");
    let defaulted: Vec<String> = report(&mut db2.client, n(&run2, "id")).iter().map(|l| l.3.clone()).collect();
    assert!(!defaulted.is_empty() && defaulted.iter().all(|o| o == "defaulted"), "{defaulted:?}");
    let wrong_default: i64 = count(
        &mut db2.client,
        "SELECT count(*) FROM gn2pg.destination_row r JOIN gn_synthese.synthese s ON s.id_synthese = r.id_synthese
          WHERE r.detail LIKE '%type_regroupement=Passage (unknown)%'
            AND s.id_nomenclature_grp_typ <> gn_synthese.get_default_nomenclature_value('TYP_GRP')",
    );
    assert_eq!(wrong_default, 0, "an unknown value becomes the type's default, recorded on the row");
}

/// A cd_nom missing from the destination's TAXREF (or a cd_hab from habref) does not lose the
/// row: it stays harvested, is reported with the value and count, and reaches the synthese once
/// TAXREF knows it, through gn2pg_sync_destination() (no HTTP) or the next run.
#[test]
fn unknown_taxa_and_habitats_wait_and_are_written_once_known() {
    let fx = fixture(1000);
    let mut db = geonature_db("dest_taxref", geonature::LAMBERT_93);
    db.client
        .batch_execute(
            "CREATE TABLE public.kept_taxon AS SELECT * FROM taxonomie.taxref WHERE cd_nom = 4001;
             DELETE FROM taxonomie.taxref WHERE cd_nom = 4001;
             CREATE TABLE public.kept_habitat AS SELECT * FROM ref_habitats.habref WHERE cd_hab = 8301;
             DELETE FROM ref_habitats.habref WHERE cd_hab = 8301;",
        )
        .unwrap();
    add_source(&mut db.client, "lpo", &fx, 3, "public", r#"{"destination": "geonature"}"#);
    let run = harvest(&mut db.client, "lpo", "full").unwrap();
    let taxa: i64 = count(&mut db.client, "SELECT count(*) FROM gn2pg.observation WHERE item ->> 'cd_nom' = '4001'");
    let habitats: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn2pg.observation WHERE item ->> 'code_habitat' = '8301' AND item ->> 'cd_nom' <> '4001'",
    );
    let both: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn2pg.observation WHERE item ->> 'code_habitat' = '8301' AND item ->> 'cd_nom' = '4001'",
    );
    assert!(taxa > both && habitats > 0);
    assert_eq!(n(&run, "rows_upserted"), 1000, "every row is kept in gn2pg.observation: {run}");
    assert_eq!((n(&run, "synthese_pending_taxon"), n(&run, "synthese_pending_habitat")), (taxa, habitats), "{run}");
    let lines = report(&mut db.client, n(&run, "id"));
    assert!(
        lines.contains(&(
            "cd_nom".into(),
            Some("4001".into()),
            "not in taxonomie.taxref".into(),
            "pending".into(),
            taxa
        )),
        "{lines:?}"
    );
    assert!(lines.contains(&(
        "code_habitat".into(),
        Some("8301".into()),
        "not in ref_habitats.habref".into(),
        "pending".into(),
        habitats
    )));
    assert_eq!(
        count(
            &mut db.client,
            "SELECT count(*) FROM gn2pg.destination_pending WHERE reason = 'taxon' AND detail = 'cd_nom 4001 is not in taxonomie.taxref'"
        ),
        taxa
    );
    assert_eq!(count(&mut db.client, "SELECT pending_taxon FROM gn2pg.destination_status WHERE source = 'lpo'"), taxa);
    // TAXREF gains the taxon: the sync writes its rows without asking the source anything
    // (those with the unknown habitat now wait for that).
    db.client.batch_execute("INSERT INTO taxonomie.taxref SELECT * FROM public.kept_taxon").unwrap();
    fx.reset_stats();
    let synced: i64 = db.client.query_one("SELECT gn2pg_sync_destination('lpo')", &[]).unwrap().get(0);
    assert_eq!((synced, fx.stats().requests), (taxa - both, 0));
    assert_eq!(pending(&mut db.client, "lpo"), vec![("habitat".to_string(), habitats + both)]);
    // habref gains the habitat: the next run writes the rows left pending by earlier runs.
    db.client.batch_execute("INSERT INTO ref_habitats.habref SELECT * FROM public.kept_habitat").unwrap();
    let next = harvest(&mut db.client, "lpo", "incremental").unwrap();
    assert_eq!(n(&next, "synthese_inserted"), habitats + both, "{next}");
    assert!(pending(&mut db.client, "lpo").is_empty());
    let (written, _) = assert_synthese_matches_source(&mut db.client, "lpo", &fx, 3, false);
    assert_eq!(written, 1000);
    // View (a) sends the attached area: those rows are written with it.
    assert!(
        count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese WHERE id_area_attachment IS NOT NULL") > 0
    );
    assert_consistent(&mut db.client, "lpo");
}

/// A SINP id already in the synthese under another source (here a local import) is reported as
/// a conflict naming the owner's id_source, never skipped silently nor counted as written.
#[test]
fn a_uuid_owned_by_another_synthese_row_is_a_reported_conflict() {
    let fx = fixture(600);
    let mut db = geonature_db("dest_uuid", geonature::LAMBERT_93);
    let taken = fx.expected_rows(3)[10].clone();
    db.client
        .execute(
            "WITH s AS (INSERT INTO gn_synthese.t_sources (name_source) VALUES ('Import GeoNature') RETURNING id_source),
                  a AS (INSERT INTO gn_meta.t_acquisition_frameworks (acquisition_framework_name, acquisition_framework_desc,
                                                                      acquisition_framework_start_date)
                        VALUES ('Local', 'Local', '2020-01-01') RETURNING id_acquisition_framework),
                  ds AS (INSERT INTO gn_meta.t_datasets (id_acquisition_framework, dataset_name, dataset_shortname, dataset_desc,
                                                        marine_domain, terrestrial_domain)
                         SELECT id_acquisition_framework, 'Local', 'Local', 'Local', false, true FROM a RETURNING id_dataset)
             INSERT INTO gn_synthese.synthese (unique_id_sinp, id_source, id_dataset, nom_cite, date_min, date_max)
             SELECT $1::text::uuid, s.id_source, ds.id_dataset, 'Vulpes vulpes', '2020-05-01', '2020-05-01' FROM s, ds",
            &[&taken.uuid],
        )
        .unwrap();
    let owner: i32 = db
        .client
        .query_one("SELECT id_source FROM gn_synthese.t_sources WHERE name_source = 'Import GeoNature'", &[])
        .unwrap()
        .get(0);
    add_source(&mut db.client, "pnx", &fx, 3, "public", r#"{"destination": "geonature"}"#);
    let run = harvest(&mut db.client, "pnx", "full").unwrap();
    assert_eq!((n(&run, "synthese_inserted"), n(&run, "synthese_pending_uuid_conflict")), (599, 1), "{run}");
    let detail: String = db
        .client
        .query_one(
            "SELECT detail FROM gn2pg.destination_pending WHERE reason = 'uuid_conflict' AND id_data = $1",
            &[&taken.id_synthese],
        )
        .unwrap()
        .get(0);
    assert!(
        detail.contains(&taken.uuid) && detail.contains(&format!("id_source {owner} (Import GeoNature)")),
        "{detail}"
    );
    let lines = report(&mut db.client, n(&run, "id"));
    assert!(
        lines.contains(&(
            "id_perm_sinp".into(),
            Some(format!("id_source {owner} (Import GeoNature)")),
            "owned by another synthese row".into(),
            "pending".into(),
            1
        )),
        "{lines:?}"
    );
    assert_eq!(
        count(
            &mut db.client,
            "SELECT count(*) FROM gn_synthese.synthese WHERE nom_cite = 'Vulpes vulpes' AND date_min = '2020-05-01'"
        ),
        1,
        "the owner's row is untouched"
    );
    assert_consistent(&mut db.client, "pnx");
    // The comparison sees a value edited in the synthese, and the sync puts the source's back.
    db.client
        .execute(
            "UPDATE gn_synthese.synthese SET observers = 'Quelqu''un d''autre' WHERE entity_source_pk_value = '5'",
            &[],
        )
        .unwrap();
    let edited = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        assert_synthese_matches_source(&mut db.client, "pnx", &fx, 3, false)
    }));
    assert!(edited.is_err(), "an edited synthese value is seen");
    let repaired: i64 = db.client.query_one("SELECT gn2pg_sync_destination('pnx')", &[]).unwrap().get(0);
    assert_eq!(repaired, 1);
    assert_synthese_matches_source(&mut db.client, "pnx", &fx, 3, false);
}

/// The CA and JDD of the rows exist in gn_meta before the rows, with at least one actor each
/// (GeoNature's SINP export hides datasets without actors), are updated when the source renames
/// them, and follow mappings: to an existing local CA (left as it is) and to a JDD of the
/// platform described in gn2pg.target_metadata; gn2pg_remap moves the synthese rows too.
#[test]
fn metadata_is_created_updated_and_mapped() {
    let fx = fixture(900);
    let mut db = geonature_db("dest_meta", geonature::LAMBERT_93);
    add_source(&mut db.client, "faune", &fx, 3, "public", r#"{"destination": "geonature", "organism": "Faune AuRA"}"#);
    harvest(&mut db.client, "faune", "full").unwrap();
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn_meta.t_acquisition_frameworks"), 3);
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn_meta.t_datasets"), 10);
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_meta.t_datasets d WHERE NOT EXISTS (SELECT 1 FROM gn_meta.cor_dataset_actor a WHERE a.id_dataset = d.id_dataset)"),
        0,
        "every dataset has an actor"
    );
    // Names, descriptions and dates as the source describes them.
    let same: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn2pg.metadata m JOIN gn_meta.t_acquisition_frameworks a ON a.unique_acquisition_framework_id = m.uuid
          WHERE m.level = 'ca' AND a.acquisition_framework_name = m.name AND a.acquisition_framework_desc = m.item ->> 'desc'
            AND a.acquisition_framework_start_date = (m.item ->> 'start_date')::date",
    );
    assert_eq!(same, 3);
    let jdd_names: i64 = count(
        &mut db.client,
        "SELECT count(*) FROM gn2pg.metadata m JOIN gn_meta.t_datasets d ON d.unique_dataset_id = m.uuid
          WHERE m.level = 'jdd' AND d.dataset_name = m.name AND d.dataset_shortname = m.item ->> 'shortname'",
    );
    assert_eq!(jdd_names, 10);
    // Renamed at the source: gn_meta follows.
    fx.rename_ca(0, "Données opportunistes faune (2024)");
    harvest(&mut db.client, "faune", "incremental").unwrap();
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_meta.t_acquisition_frameworks WHERE acquisition_framework_name = 'Données opportunistes faune (2024)'"),
        1
    );
    // Every CA of the source mapped to a CA of the platform that exists in gn_meta.
    let local = "6f1a3c2e-0000-4000-8000-00000000ca01";
    db.client
        .execute(
            "INSERT INTO gn_meta.t_acquisition_frameworks (unique_acquisition_framework_id, acquisition_framework_name,
                                                          acquisition_framework_desc, acquisition_framework_start_date)
             VALUES ($1::text::uuid, 'CA régional des partenaires', 'Local', '2018-01-01')",
            &[&local],
        )
        .unwrap();
    db.client.execute("SELECT gn2pg_map_ca('faune', NULL, $1)", &[&local]).unwrap();
    let before: i64 = count(&mut db.client, "SELECT sum(id_dataset) FROM gn_synthese.synthese");
    fx.reset_stats();
    db.client.execute("SELECT gn2pg_remap('faune')", &[]).unwrap();
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_meta.t_datasets d JOIN gn_meta.t_acquisition_frameworks a USING (id_acquisition_framework)
                                WHERE a.unique_acquisition_framework_id = '6f1a3c2e-0000-4000-8000-00000000ca01'"),
        10,
        "the datasets moved under the platform's CA"
    );
    assert_eq!(
        count(&mut db.client, "SELECT count(*) FROM gn_meta.t_acquisition_frameworks WHERE acquisition_framework_name = 'CA régional des partenaires' AND acquisition_framework_desc = 'Local'"),
        1,
        "an existing CA is used, not rewritten"
    );
    assert_eq!(
        count(&mut db.client, "SELECT sum(id_dataset) FROM gn_synthese.synthese"),
        before,
        "rows keep their datasets"
    );
    // One source JDD mapped to a JDD of the platform, described locally: created, rows moved.
    let source_jdd: String =
        db.client.query_one("SELECT jdd_uuid::text FROM gn2pg.observation WHERE id_data = 1", &[]).unwrap().get(0);
    let target = "6f1a3c2e-0000-4000-8000-0000000aaa01";
    db.client
        .execute(
            "SELECT gn2pg_map_jdd('faune', $1, $2, target_ca => $3, target_name => 'Observations partenaires')",
            &[&source_jdd, &target, &local],
        )
        .unwrap();
    let moved: i64 = count(
        &mut db.client,
        &format!("SELECT count(*) FROM gn2pg.observation WHERE source_jdd_uuid = '{source_jdd}'"),
    );
    db.client.execute("SELECT gn2pg_remap('faune')", &[]).unwrap();
    assert_eq!(
        count(&mut db.client, &format!("SELECT count(*) FROM gn_synthese.synthese s JOIN gn_meta.t_datasets d USING (id_dataset)
                                         WHERE d.unique_dataset_id = '{target}' AND d.dataset_name = 'Observations partenaires'")),
        moved,
        "the rows of the mapped JDD are in the platform's JDD"
    );
    assert_eq!(fx.stats().requests, 0, "remapping asks the source nothing");
    assert_consistent(&mut db.client, "faune");
}

/// Registering a destination where GeoNature is missing fails naming what is missing; a
/// source writing to GeoNature is neither removed nor stripped of its destination without an
/// explicit decision about its synthese rows: keep (a later enablement takes them over, no
/// duplicate) or delete.
#[test]
fn enabling_disabling_and_removing_say_what_happens_to_the_synthese_rows() {
    let fx = fixture(300);
    let mut plain = TestDb::new("dest_plain");
    let err = plain
        .client
        .execute(
            "SELECT gn2pg_add_source('x', $1, 3, options => '{\"destination\": \"geonature\"}')",
            &[&fx.base_url()],
        )
        .unwrap_err();
    let text = error_text(&err);
    assert!(
        text.contains("cannot write to GeoNature")
            && text.contains("gn_synthese.synthese")
            && text.contains("taxonomie.taxref"),
        "{text}"
    );
    assert_eq!(count(&mut plain.client, "SELECT count(*) FROM gn2pg.source"), 0, "nothing registered");
    for (options, why) in [
        (r#"{"destination": "synthese"}"#, "option destination must be 'geonature'"),
        (r#"{"destination": "geonature", "nomenclature_unknown": "ignore"}"#, "nomenclature_unknown must be"),
        (r#"{"nomenclature_unknown": "default"}"#, "applies to a destination"),
    ] {
        let e = plain
            .client
            .execute("SELECT gn2pg_add_source('x', $1, 3, options => $2::text::jsonb)", &[&fx.base_url(), &options])
            .unwrap_err();
        assert!(error_text(&e).contains(why), "{options}: {}", error_text(&e));
    }

    let mut db = geonature_db("dest_switch", geonature::LAMBERT_93);
    add_source(&mut db.client, "s", &fx, 3, "public", r#"{"destination": "geonature"}"#);
    harvest(&mut db.client, "s", "full").unwrap();
    let rows = count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese");
    assert_eq!(rows, 300);
    // Deletions found by the other paths reach the synthese too: a keyset full run's sweep, and
    // the sweep after a complete offset walk.
    fx.mutate(Mutation { delete: 10, ..Default::default() });
    let swept = harvest(&mut db.client, "s", "full").unwrap();
    assert_eq!((n(&swept, "rows_deleted"), n(&swept, "synthese_deleted")), (10, 10), "{swept}");
    add_source(&mut db.client, "s", &fx, 3, "public", r#"{"destination": "geonature", "paging": "offset"}"#);
    fx.mutate(Mutation { delete: 5, ..Default::default() });
    let walked = harvest(&mut db.client, "s", "full").unwrap();
    assert_eq!((n(&walked, "rows_deleted"), n(&walked, "synthese_deleted")), (5, 5), "{walked}");
    assert_synthese_matches_source(&mut db.client, "s", &fx, 3, false);
    assert_consistent(&mut db.client, "s");
    let e = db.client.execute("SELECT gn2pg_remove_source('s')", &[]).unwrap_err();
    assert!(
        error_text(&e).contains("say what becomes of its synthese rows")
            && error_text(&e).contains("gn2pg_disable_destination"),
        "{}",
        error_text(&e)
    );
    let e = db.client.execute("SELECT gn2pg_add_source('s', $1, 3)", &[&fx.base_url()]).unwrap_err();
    assert!(error_text(&e).contains("must keep \"destination\""), "{}", error_text(&e));
    let e = db.client.execute("SELECT gn2pg_disable_destination('s', NULL)", &[]).unwrap_err();
    assert!(error_text(&e).contains("'keep' or 'delete'"), "{}", error_text(&e));
    let kept: i64 =
        db.client.query_one("SELECT gn2pg_disable_destination('s', synthese => 'keep')", &[]).unwrap().get(0);
    assert_eq!((kept, count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese")), (285, 285));
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn2pg.source WHERE options ? 'destination'"), 0);
    // Enabled again: the kept rows are taken over, not written twice.
    add_source(&mut db.client, "s", &fx, 3, "public", r#"{"destination": "geonature"}"#);
    let run = harvest(&mut db.client, "s", "full").unwrap();
    assert_eq!(
        (n(&run, "synthese_inserted"), count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese")),
        (0, 285),
        "{run}"
    );
    assert_synthese_matches_source(&mut db.client, "s", &fx, 3, false);
    let deleted: i64 =
        db.client.query_one("SELECT gn2pg_disable_destination('s', synthese => 'delete')", &[]).unwrap().get(0);
    assert_eq!(deleted, 285);
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn_synthese.synthese"), 0);
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn_synthese.t_sources WHERE name_source = 'gn2pg:s'"), 0);
    assert!(db.client.query_one("SELECT gn2pg_remove_source('s')", &[]).unwrap().get::<_, bool>(0));
    // The rows harvested stay in gn2pg.observation unless asked.
    assert_eq!(count(&mut db.client, "SELECT count(*) FROM gn2pg.observation"), 285);
}

/// gn2pg_sync_destination and gn2pg_disable_destination claim the source as a run does: refused
/// while a run is in progress (the run is named), and a lock any role can take (an advisory lock
/// on the old key) holds nothing up.
#[test]
fn destination_functions_wait_for_no_run_and_no_advisory_lock() {
    use gn2pg_pg_test::checks::{run_ended, wait_run};
    use gn2pg_pg_test::fixture::Faults;
    use std::time::Duration;
    let fx = fixture(2000);
    let mut db = geonature_db("dest_claim", geonature::LAMBERT_93);
    add_source(&mut db.client, "c", &fx, 3, "public", r#"{"destination": "geonature", "page_size": 200}"#);
    fx.faults(Faults { slow_ms: 200, ..Default::default() });
    let run: i64 = db.client.query_one("SELECT gn2pg_harvest_async('c', 'full')", &[]).unwrap().get(0);
    wait_run(&mut db.client, run, Duration::from_secs(60), "running", |r| r["status"] == "running" || run_ended(r));
    let mut other = db.session();
    for sql in ["SELECT gn2pg_sync_destination('c')", "SELECT gn2pg_disable_destination('c', 'keep')"] {
        let e = other.execute(sql, &[]).map_err(|e| error_text(&e));
        assert!(e.as_ref().is_err_and(|e| e.contains(&format!("is being harvested by run {run}"))), "{sql}: {e:?}");
    }
    fx.faults(Faults::default());
    let r = wait_run(&mut db.client, run, Duration::from_secs(120), "end", run_ended);
    assert_eq!(r["status"], "success", "{r}");
    // An advisory lock on the source, which any role may take, holds nothing up.
    let id: i32 = db.client.query_one("SELECT id FROM gn2pg.source WHERE name = 'c'", &[]).unwrap().get(0);
    other.execute("SELECT pg_advisory_lock(hashtext('gn2pg.source'), $1)", &[&id]).unwrap();
    let synced: i64 = db.client.query_one("SELECT gn2pg_sync_destination('c')", &[]).unwrap().get(0);
    assert_eq!(synced, 0, "every row is already in the synthese");
    assert_consistent(&mut db.client, "c");
}
