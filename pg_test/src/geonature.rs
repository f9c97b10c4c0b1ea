//! A GeoNature-shaped destination database for the tests and the benchmark: the schema of
//! `sql/geonature.sql` plus its reference data (nomenclature types and values, TAXREF, habref,
//! areas), taken from the fixture server's own tables so that what the source sends and what
//! the destination knows always agree.

use postgres::Client;

use crate::fixture::data::{AREAS, HABITATS, NOMENCLATURES, TAXA};

const SCHEMA: &str = include_str!("../sql/geonature.sql");

/// Mainland France (Lambert-93), GeoNature's usual local SRID.
pub const LAMBERT_93: i32 = 2154;

/// Nomenclature types of the synthese not in the sample views, and those of gn_meta, with
/// their values (code, label).
const OTHER_TYPES: &[(&str, &[(&str, &str)])] = &[
    ("STAT_BIOGEO", &[("1", "Non renseigné"), ("2", "Présent"), ("3", "Introduit")]),
    (
        "NIVEAU_TERRITORIAL",
        &[("1", "International"), ("2", "Européen"), ("3", "National"), ("4", "Inter-régional"), ("5", "Régional")],
    ),
    ("TYPE_FINANCEMENT", &[("1", "Publique"), ("2", "Privée"), ("3", "Mixte"), ("4", "Non financé")]),
    ("DATA_TYP", &[("1", "Occurrences de taxons"), ("2", "Occurrences d'habitats"), ("3", "Synthèse")]),
    (
        "JDD_OBJECTIFS",
        &[
            ("1.1", "Inventaire de répartition"),
            ("1.2", "Inventaire pour étude d'espèces ou de communautés"),
            ("3.1", "Évaluation de la ressource"),
            ("5.1", "Surveillance temporelle d'espèces"),
            ("7.1", "Autre"),
        ],
    ),
    ("METHO_RECUEIL", &[("1", "Observation directe"), ("2", "Observation indirecte"), ("12", "Autre méthode")]),
    ("DS_PUBLIQUE", &[("Pu", "Publique"), ("Pr", "Privée"), ("NSP", "Ne sait pas")]),
    ("RESOURCE_TYP", &[("1", "Jeu de données"), ("2", "Série de jeux de données")]),
    (
        "ROLE_ACTEUR",
        &[
            ("1", "Contact principal"),
            ("2", "Financeur"),
            ("3", "Maître d'ouvrage"),
            ("4", "Maître d'œuvre"),
            ("5", "Fournisseur du jeu de données"),
            ("6", "Producteur"),
            ("7", "Point de contact base de données de production"),
            ("8", "Point de contact pour les métadonnées"),
        ],
    ),
    ("TERRITOIRE", &[("METROP", "Métropole"), ("GUF", "Guyane")]),
];

/// Default value (code) of each type: the synthese's defaults, then gn_meta's.
const SYNTHESE_DEFAULTS: &[(&str, &str)] = &[
    ("NAT_OBJ_GEO", "NSP"),
    ("TYP_GRP", "NSP"),
    ("METH_OBS", "0"),
    ("STATUT_BIO", "1"),
    ("ETA_BIO", "1"),
    ("NATURALITE", "0"),
    ("PREUVE_EXIST", "0"),
    ("STADE_VIE", "0"),
    ("SEXE", "6"),
    ("OBJ_DENBR", "NSP"),
    ("TYP_DENBR", "NSP"),
    ("STATUT_OBS", "Pr"),
    ("DEE_FLOU", "NON"),
    ("STATUT_SOURCE", "NSP"),
    ("TYP_INF_GEO", "1"),
    ("OCC_COMPORTEMENT", "1"),
    ("METH_DETERMIN", "1"),
    ("STATUT_VALID", "0"),
    ("STAT_BIOGEO", "1"),
];
const META_DEFAULTS: &[(&str, &str)] = &[
    ("NIVEAU_TERRITORIAL", "3"),
    ("TYPE_FINANCEMENT", "1"),
    ("DATA_TYP", "1"),
    ("JDD_OBJECTIFS", "1.1"),
    ("METHO_RECUEIL", "1"),
    ("DS_PUBLIQUE", "NSP"),
    ("STATUT_SOURCE", "NSP"),
    ("RESOURCE_TYP", "1"),
    ("ROLE_ACTEUR", "1"),
];

/// Areas: their extent in lon/lat (the fixture's points lie in lon 4-7.5, lat 43.5-46.5).
fn area_extent(code: &str) -> (f64, f64, f64, f64) {
    match code {
        "38" => (4.5, 44.7, 6.4, 45.9),
        "38185" => (5.6, 45.1, 5.8, 45.3),
        "69123" => (4.77, 45.7, 4.9, 45.81),
        _ => (4.0, 43.5, 5.0, 44.5),
    }
}

fn lit(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// Creates the GeoNature-shaped schemas and their reference data in `db`, with `local_srid` as
/// the synthese's local SRID.
pub fn load(db: &mut Client, local_srid: i32) {
    db.batch_execute(&SCHEMA.replace("{local_srid}", &local_srid.to_string()))
        .unwrap_or_else(|e| panic!("loading the GeoNature fixture schema: {}", crate::db::error_text(&e)));
    let mut sql = String::new();
    let types: Vec<(&str, &[(&str, &str)])> =
        NOMENCLATURES.iter().map(|n| (n.mnemonique, n.values)).chain(OTHER_TYPES.iter().copied()).collect();
    for (typ, values) in &types {
        sql.push_str(&format!(
            "INSERT INTO ref_nomenclatures.bib_nomenclatures_types (mnemonique, label_default, label_fr) VALUES ({0}, {0}, {0});\n",
            lit(typ)
        ));
        for (code, label) in values.iter() {
            sql.push_str(&format!(
                "INSERT INTO ref_nomenclatures.t_nomenclatures (id_type, cd_nomenclature, mnemonique, label_default, label_fr)
                 SELECT id_type, {c}, {l}, {l}, {l} FROM ref_nomenclatures.bib_nomenclatures_types WHERE mnemonique = {t};\n",
                c = lit(code),
                l = lit(label),
                t = lit(typ)
            ));
        }
    }
    let default = |table: &str, typ: &str, code: &str| {
        format!(
            "INSERT INTO {table} (mnemonique_type, id_nomenclature)
             VALUES ({t}, ref_nomenclatures.get_id_nomenclature({t}, {c}));\n",
            t = lit(typ),
            c = lit(code)
        )
    };
    for (typ, code) in SYNTHESE_DEFAULTS {
        sql.push_str(&default("gn_synthese.defaults_nomenclatures_value", typ, code));
    }
    for (typ, code) in META_DEFAULTS {
        sql.push_str(&default("ref_nomenclatures.defaults_nomenclatures_value", typ, code));
    }
    for (cd_nom, sci, vern) in TAXA {
        sql.push_str(&format!(
            "INSERT INTO taxonomie.taxref (cd_nom, cd_ref, regne, lb_nom, nom_vern, nom_valide) VALUES ({cd_nom}, {cd_nom}, 'Animalia', {s}, {v}, {s});\n",
            s = lit(sci),
            v = lit(vern)
        ));
    }
    for (cd_hab, label) in HABITATS {
        sql.push_str(&format!(
            "INSERT INTO ref_habitats.habref (cd_hab, lb_code, lb_hab_fr) VALUES ({cd_hab}, '{cd_hab}', {});\n",
            lit(label)
        ));
    }
    for (typ, name) in [("COM", "Communes"), ("DEP", "Départements"), ("M10", "Mailles 10*10")] {
        sql.push_str(&format!(
            "INSERT INTO ref_geo.bib_areas_types (type_code, type_name) VALUES ({}, {});\n",
            lit(typ),
            lit(name)
        ));
    }
    for (code, typ) in AREAS {
        let (x0, y0, x1, y1) = area_extent(code);
        sql.push_str(&format!(
            "INSERT INTO ref_geo.l_areas (id_type, area_name, area_code, geom)
             SELECT id_type, {n}, {c}, ST_Multi(ST_Transform(ST_MakeEnvelope({x0}, {y0}, {x1}, {y1}, 4326), {local_srid}))
               FROM ref_geo.bib_areas_types WHERE type_code = {t};\n",
            n = lit(&format!("Zone {code}")),
            c = lit(code),
            t = lit(typ)
        ));
    }
    // Œdicnème criard is sensitive (diffusion at the 10 km square).
    sql.push_str("INSERT INTO gn_sensitivity.t_sensitivity_rules (cd_nom, cd_sensitivity) VALUES (3187, '2');\n");
    // Statistics, as autovacuum gives a live GeoNature: with none, the planner scans the
    // nomenclatures whole in every CHECK of every synthese row instead of using the index.
    sql.push_str(
        "ANALYZE ref_nomenclatures.bib_nomenclatures_types, ref_nomenclatures.t_nomenclatures,
                 ref_nomenclatures.defaults_nomenclatures_value, gn_synthese.defaults_nomenclatures_value,
                 taxonomie.taxref, ref_habitats.habref, ref_geo.l_areas;\n",
    );
    db.batch_execute(&sql)
        .unwrap_or_else(|e| panic!("loading the GeoNature fixture data: {}", crate::db::error_text(&e)));
}

/// Every synthese column gn2pg writes, compared with what the source serves (`fx`'s export
/// `export`), for the source's written rows; returns the rows written and pending. Nomenclatures
/// are compared by code (views with codes) or by label (`labels`), through the source's
/// nomenclature mappings when it has one for the value; a value the source leaves NULL must be
/// the type's default; the sensitivity is GeoNature's own (its rules); geometries
/// byte for byte, the local one projected with find_srid's SRID, the point on the geometry.
/// Panics listing the first differences, and if a row is neither written nor pending.
pub fn assert_synthese_matches_source(
    db: &mut Client,
    source: &str,
    fx: &crate::fixture::FixtureServer,
    export: u32,
    labels: bool,
) -> (i64, i64) {
    let exp = fx.expected_rows(export);
    assert!(!exp.is_empty(), "the export serves no row: the comparison would prove nothing");
    let ids: Vec<i64> = exp.iter().map(|r| r.id_synthese).collect();
    let items: Vec<String> = exp.iter().map(|r| r.item.to_string()).collect();
    let wkts: Vec<Option<String>> = exp.iter().map(|r| r.wkt.clone()).collect();
    let nomenclature = |col: &str, field: &str, typ: &str| {
        let by = if labels { "label_default" } else { "cd_nomenclature" };
        format!(
            "('{col}', (SELECT n.{by} FROM ref_nomenclatures.t_nomenclatures n WHERE n.id_nomenclature = r.{col})
                        IS DISTINCT FROM coalesce(
                            (SELECT n.{by} FROM gn2pg.nomenclature_mapping m
                               JOIN ref_nomenclatures.bib_nomenclatures_types t ON t.mnemonique = m.type
                               JOIN ref_nomenclatures.t_nomenclatures n ON n.id_type = t.id_type AND n.cd_nomenclature = m.target_code
                              WHERE m.source = $1 AND m.type = '{typ}' AND m.source_value = r.j ->> '{field}'),
                            r.j ->> '{field}',
                            (SELECT n.{by} FROM ref_nomenclatures.t_nomenclatures n
                              WHERE n.id_nomenclature = gn_synthese.get_default_nomenclature_value('{typ}'))))"
        )
    };
    let mut checks = vec![
        "('id_source', r.id_source IS DISTINCT FROM (SELECT d.id_source FROM gn2pg.destination d WHERE d.source = $1))".to_string(),
        "('entity_source_pk_value', r.entity_source_pk_value IS DISTINCT FROM r.id::text)".into(),
        "('unique_id_sinp', r.unique_id_sinp::text IS DISTINCT FROM r.j ->> 'id_perm_sinp')".into(),
        "('unique_id_sinp_grp', r.unique_id_sinp_grp::text IS DISTINCT FROM r.j ->> 'id_perm_grp_sinp')".into(),
        "('date_min', r.date_min IS DISTINCT FROM (r.j ->> 'date_debut')::timestamp)".into(),
        "('date_max', r.date_max IS DISTINCT FROM (r.j ->> 'date_fin')::timestamp)".into(),
        "('cd_nom', r.cd_nom IS DISTINCT FROM (r.j ->> 'cd_nom')::int)".into(),
        "('meta_v_taxref', r.meta_v_taxref IS DISTINCT FROM r.j ->> 'version_taxref')".into(),
        "('nom_cite', r.nom_cite IS DISTINCT FROM r.j ->> 'nom_cite')".into(),
        "('count_min', r.count_min IS DISTINCT FROM (r.j ->> 'nombre_min')::int)".into(),
        "('count_max', r.count_max IS DISTINCT FROM (r.j ->> 'nombre_max')::int)".into(),
        "('altitude_min', r.altitude_min IS DISTINCT FROM (r.j ->> 'altitude_min')::int)".into(),
        "('altitude_max', r.altitude_max IS DISTINCT FROM (r.j ->> 'altitude_max')::int)".into(),
        "('depth_min', r.depth_min IS DISTINCT FROM (r.j ->> 'profondeur_min')::int)".into(),
        "('depth_max', r.depth_max IS DISTINCT FROM (r.j ->> 'profondeur_max')::int)".into(),
        "('observers', r.observers IS DISTINCT FROM r.j ->> 'observateurs')".into(),
        "('determiner', r.determiner IS DISTINCT FROM r.j ->> 'determinateur')".into(),
        "('validator', r.validator IS DISTINCT FROM r.j ->> 'validateur')".into(),
        "('sample_number_proof', r.sample_number_proof IS DISTINCT FROM r.j ->> 'numero_preuve')".into(),
        "('digital_proof', r.digital_proof IS DISTINCT FROM r.j ->> 'preuve_numerique')".into(),
        "('non_digital_proof', r.non_digital_proof IS DISTINCT FROM r.j ->> 'preuve_non_numerique')".into(),
        "('comment_context', r.comment_context IS DISTINCT FROM r.j ->> 'comment_releve')".into(),
        "('comment_description', r.comment_description IS DISTINCT FROM r.j ->> 'comment_occurrence')".into(),
        "('reference_biblio', r.reference_biblio IS DISTINCT FROM r.j ->> 'reference_biblio')".into(),
        "('cd_hab', r.cd_hab IS DISTINCT FROM (r.j ->> 'code_habitat')::int)".into(),
        "('place_name', r.place_name IS DISTINCT FROM r.j ->> 'nom_lieu')".into(),
        "('precision', r.precision IS DISTINCT FROM (r.j ->> 'precision')::int)".into(),
        "('grp_method', r.grp_method IS DISTINCT FROM r.j ->> 'methode_regroupement')".into(),
        "('additional_data', r.additional_data IS DISTINCT FROM
            CASE jsonb_typeof(r.j -> 'donnees_additionnelles') WHEN 'string' THEN (r.j ->> 'donnees_additionnelles')::jsonb
                 WHEN 'null' THEN NULL ELSE r.j -> 'donnees_additionnelles' END)"
            .into(),
        "('id_area_attachment', r.id_area_attachment IS DISTINCT FROM
            (SELECT a.id_area FROM ref_geo.l_areas a JOIN ref_geo.bib_areas_types t ON t.id_type = a.id_type
              WHERE a.area_code = r.j -> 'area_attachment' ->> 'area_code'
                AND t.type_code = r.j -> 'area_attachment' ->> 'type_code'))"
            .into(),
        "('id_dataset', (SELECT ds.unique_dataset_id::text FROM gn_meta.t_datasets ds WHERE ds.id_dataset = r.id_dataset)
            IS DISTINCT FROM coalesce(r.j ->> 'jdd_uuid', r.j -> 'jdd_data' ->> 'uuid'))"
            .into(),
        "('acquisition framework', (SELECT a.unique_acquisition_framework_id::text FROM gn_meta.t_datasets ds
                                      JOIN gn_meta.t_acquisition_frameworks a USING (id_acquisition_framework)
                                     WHERE ds.id_dataset = r.id_dataset)
            IS DISTINCT FROM coalesce(r.j ->> 'ca_uuid', r.j -> 'ca_data' ->> 'uuid'))"
            .into(),
        "('the_geom_4326', r.the_geom_4326::bytea IS DISTINCT FROM ST_GeomFromText(r.wkt, 4326)::bytea)".into(),
        "('the_geom_local', r.the_geom_local::bytea IS DISTINCT FROM
            ST_Transform(r.the_geom_4326, find_srid('gn_synthese', 'synthese', 'the_geom_local'))::bytea)"
            .into(),
        "('the_geom_point', GeometryType(r.the_geom_point) <> 'POINT' OR NOT ST_DWithin(r.the_geom_point, r.the_geom_4326, 1e-9))"
            .into(),
        "('id_nomenclature_sensitivity', r.id_nomenclature_sensitivity IS DISTINCT FROM
            gn_sensitivity.get_id_nomenclature_sensitivity(r.cd_nom))"
            .into(),
        "('id_nomenclature_valid_status', r.id_nomenclature_valid_status IS DISTINCT FROM
            gn_synthese.get_default_nomenclature_value('STATUT_VALID'))"
            .into(),
    ];
    for (col, field, typ) in [
        ("id_nomenclature_geo_object_nature", "nature_objet_geo", "NAT_OBJ_GEO"),
        ("id_nomenclature_grp_typ", "type_regroupement", "TYP_GRP"),
        ("id_nomenclature_behaviour", "comportement", "OCC_COMPORTEMENT"),
        ("id_nomenclature_obs_technique", "technique_obs", "METH_OBS"),
        ("id_nomenclature_bio_status", "statut_biologique", "STATUT_BIO"),
        ("id_nomenclature_bio_condition", "etat_biologique", "ETA_BIO"),
        ("id_nomenclature_naturalness", "naturalite", "NATURALITE"),
        ("id_nomenclature_exist_proof", "preuve_existante", "PREUVE_EXIST"),
        ("id_nomenclature_diffusion_level", "precision_diffusion", "NIV_PRECIS"),
        ("id_nomenclature_life_stage", "stade_vie", "STADE_VIE"),
        ("id_nomenclature_sex", "sexe", "SEXE"),
        ("id_nomenclature_obj_count", "objet_denombrement", "OBJ_DENBR"),
        ("id_nomenclature_type_count", "type_denombrement", "TYP_DENBR"),
        ("id_nomenclature_observation_status", "statut_observation", "STATUT_OBS"),
        ("id_nomenclature_blurring", "floutage_dee", "DEE_FLOU"),
        ("id_nomenclature_source_status", "statut_source", "STATUT_SOURCE"),
        ("id_nomenclature_info_geo_type", "type_info_geo", "TYP_INF_GEO"),
        ("id_nomenclature_determination_method", "methode_determination", "METH_DETERMIN"),
    ] {
        checks.push(nomenclature(col, field, typ));
    }
    let sql = format!(
        "WITH e AS (SELECT * FROM unnest($2::bigint[], $3::text[], $4::text[]) AS e(id, item, wkt)),
              r AS (SELECT e.id, e.item::jsonb AS j, e.wkt, dr.state, sy.*
                      FROM e
                      LEFT JOIN gn2pg.destination_row dr ON dr.source = $1 AND dr.id_data = e.id
                      LEFT JOIN gn_synthese.synthese sy ON sy.id_synthese = dr.id_synthese AND dr.state = 'written'),
              bad AS (SELECT r.id, c.col FROM r CROSS JOIN LATERAL (VALUES {}) AS c(col, bad)
                       WHERE r.state = 'written' AND c.bad)
         SELECT (SELECT count(*) FROM r WHERE state = 'written'),
                (SELECT count(*) FROM r WHERE state = 'pending'),
                (SELECT count(*) FROM r WHERE state IS NULL),
                (SELECT count(*) FROM bad),
                (SELECT string_agg(id || ': ' || col, ', ') FROM (SELECT * FROM bad ORDER BY id, col LIMIT 12) x),
                (SELECT count(*) FROM gn_synthese.synthese sy
                  WHERE sy.id_source = (SELECT d.id_source FROM gn2pg.destination d WHERE d.source = $1)
                    AND NOT EXISTS (SELECT 1 FROM gn2pg.destination_row dr
                                     WHERE dr.source = $1 AND dr.id_synthese = sy.id_synthese AND dr.state = 'written'))",
        checks.join(",\n")
    );
    let row = db
        .query_one(&sql, &[&source, &ids, &items, &wkts])
        .unwrap_or_else(|e| panic!("comparing the synthese: {}", crate::db::error_text(&e)));
    let (written, pending, missing, bad): (i64, i64, i64, i64) = (row.get(0), row.get(1), row.get(2), row.get(3));
    let sample: Option<String> = row.get(4);
    let extra: i64 = row.get(5);
    assert_eq!(bad, 0, "source {source}: {bad} synthese values differ from the source: {sample:?}");
    assert_eq!(missing, 0, "source {source}: {missing} rows served are neither written nor pending");
    assert_eq!(extra, 0, "source {source}: {extra} synthese rows of the source hold no written row");
    assert!(written > 0, "nothing written: the comparison proves nothing");
    (written, pending)
}

/// The source's rows in gn2pg.observation and in the synthese agree: every written row's
/// synthese row is there with the row's uuid and key, no synthese row of the source is unknown
/// to gn2pg, and no destination row outlives its harvested row.
pub fn assert_consistent(db: &mut Client, source: &str) {
    let r = db
        .query_one(
            "WITH d AS (SELECT * FROM gn2pg.destination WHERE source = $1)
             SELECT (SELECT count(*) FROM gn2pg.destination_row dr
                      WHERE dr.source = $1 AND dr.state = 'written'
                        AND NOT EXISTS (SELECT 1 FROM gn_synthese.synthese sy JOIN gn2pg.observation o
                                          ON o.source = $1 AND o.id_data = dr.id_data
                                         WHERE sy.id_synthese = dr.id_synthese AND sy.id_source = (SELECT id_source FROM d)
                                           AND sy.entity_source_pk_value = dr.id_data::text
                                           AND sy.unique_id_sinp IS NOT DISTINCT FROM o.uuid)),
                    (SELECT count(*) FROM gn_synthese.synthese sy
                      WHERE sy.id_source = (SELECT id_source FROM d)
                        AND NOT EXISTS (SELECT 1 FROM gn2pg.destination_row dr
                                         WHERE dr.source = $1 AND dr.id_synthese = sy.id_synthese)),
                    (SELECT count(*) FROM gn2pg.destination_row dr
                      WHERE dr.source = $1
                        AND NOT EXISTS (SELECT 1 FROM gn2pg.observation o WHERE o.source = $1 AND o.id_data = dr.id_data))",
            &[&source],
        )
        .unwrap();
    let (broken, orphans, stale): (i64, i64, i64) = (r.get(0), r.get(1), r.get(2));
    assert_eq!((broken, orphans, stale), (0, 0, 0), "source {source}: (written rows whose synthese row differs, synthese rows unknown to gn2pg, destination rows without a harvested row)");
}
