//! Inputs for the property tests of the parsers and encoders: JSON texts of every shape, export
//! pages (real-looking items and hostile ones: dense arrays, many empty items, deep nesting,
//! long strings, odd numbers), geometries, and mutations of all of them (bytes deleted,
//! inserted, replaced, duplicated, the text cut).

use proptest::prelude::*;

/// A JSON number token, from ordinary to absurd.
pub fn number() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| f.to_string()),
        (any::<bool>(), "[0-9]{1,30}", proptest::option::of("[0-9]{1,20}"), proptest::option::of(-20_000i32..20_000))
            .prop_map(|(neg, int, frac, exp)| {
                let int = int.trim_start_matches('0');
                let mut s = String::from(if neg { "-" } else { "" });
                s.push_str(if int.is_empty() { "0" } else { int });
                if let Some(f) = frac {
                    s.push('.');
                    s.push_str(&f);
                }
                if let Some(e) = exp {
                    s.push_str(&format!("e{e}"));
                }
                s
            }),
        Just("1e999".to_string()),
        Just("-0".to_string()),
    ]
}

/// A JSON string token with escapes, non-ASCII text and what only jsonb refuses.
pub fn string() -> impl Strategy<Value = String> {
    proptest::collection::vec(
        prop_oneof![
            8 => "[a-zA-Z0-9 _éà中😀-]{0,8}",
            1 => Just("\\n".to_string()),
            1 => Just("\\\"".to_string()),
            1 => Just("\\u00e9".to_string()),
            1 => Just("\\ud83d\\ude00".to_string()),
            1 => Just("\\u0000".to_string()),
            1 => Just("\\ud83d".to_string()),
        ],
        0..6,
    )
    .prop_map(|parts| format!("\"{}\"", parts.concat()))
}

/// Any JSON value, nested a few levels.
pub fn value() -> impl Strategy<Value = String> {
    let leaf =
        prop_oneof![number(), string(), Just("true".to_string()), Just("false".to_string()), Just("null".to_string()),];
    leaf.prop_recursive(4, 64, 8, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..8).prop_map(|v| format!("[{}]", v.join(","))),
            proptest::collection::vec((prop_oneof!["[a-z]{1,3}", Just("id_synthese".into())], inner), 0..8).prop_map(
                |m| {
                    let members: Vec<String> = m.into_iter().map(|(k, v)| format!("\"{k}\":{v}")).collect();
                    format!("{{{}}}", members.join(","))
                }
            ),
        ]
    })
}

/// A WKT or GeoJSON geometry, valid or not.
pub fn geometry() -> impl Strategy<Value = String> {
    let coord = || (-180.0f64..180.0, -90.0f64..90.0);
    prop_oneof![
        coord().prop_map(|(x, y)| format!("POINT({x} {y})")),
        proptest::collection::vec(coord(), 1..6).prop_map(|v| {
            let pts: Vec<String> = v.iter().map(|(x, y)| format!("{x} {y}")).collect();
            format!("LINESTRING({})", pts.join(","))
        }),
        proptest::collection::vec(coord(), 3..6).prop_map(|v| {
            let mut pts: Vec<String> = v.iter().map(|(x, y)| format!("{x} {y}")).collect();
            pts.push(pts[0].clone());
            format!("MULTIPOLYGON((({})))", pts.join(","))
        }),
        proptest::collection::vec(coord(), 1..6).prop_map(|v| {
            let pts: Vec<String> = v.iter().map(|(x, y)| format!("[{x},{y}]")).collect();
            format!(r#"{{"type":"MultiPoint","coordinates":[{}]}}"#, pts.join(","))
        }),
        coord().prop_map(|(x, y)| format!(r#"{{"type":"Point","coordinates":[{x},{y}]}}"#)),
        "[A-Z]{1,12}[ (]{0,2}[-0-9 .,eE()]{0,30}",
    ]
}

/// One export item: mostly the columns a GeoNature view sends, with extra values of any shape.
pub fn item() -> impl Strategy<Value = String> {
    (
        proptest::option::weighted(0.9, 0i64..1_000_000),
        any::<u32>(),
        proptest::option::weighted(0.5, geometry()),
        proptest::collection::vec(("[a-z_]{1,12}", value()), 0..6),
        any::<bool>(),
    )
        .prop_map(|(id, u, wkt, extra, nested)| {
            let mut m = Vec::new();
            if let Some(id) = id {
                m.push(format!("\"id_synthese\":{id}"));
            }
            m.push(format!("\"id_perm_sinp\":\"3f1c7c5e-0000-4000-8000-{u:012x}\""));
            if let Some(w) = wkt.filter(|w| !w.starts_with('{')) {
                m.push(format!("\"wkt_4326\":\"{w}\""));
            }
            m.push("\"derniere_action\":\"2023-05-13 10:02:11\"".into());
            if nested {
                m.push(r#""ca_data":{"uuid":"57b7d0f2-4183-4b7b-8f08-6e105d476dc5","name":"CA"}"#.into());
                m.push(r#""jdd_uuid":"9b2a0c1e-5f4d-4e3c-8b7a-6d5c4b3a2f10","jdd_nom":"J""#.into());
            }
            m.extend(extra.into_iter().map(|(k, v)| format!("\"{k}\":{v}")));
            format!("{{{}}}", m.join(","))
        })
}

/// A page of the export API, as an array or a FeatureCollection.
pub fn page() -> impl Strategy<Value = String> {
    let array = proptest::collection::vec(prop_oneof![8 => item(), 1 => value()], 0..40)
        .prop_map(|items| format!(r#"{{"items":[{}],"limit":1000,"total":9,"total_filtered":9}}"#, items.join(",")));
    let features = proptest::collection::vec((item(), proptest::option::of(geometry())), 0..30).prop_map(|fs| {
        let fs: Vec<String> = fs
            .into_iter()
            .map(|(props, g)| {
                let g = g.filter(|g| g.starts_with('{')).unwrap_or_else(|| "null".into());
                format!(r#"{{"type":"Feature","geometry":{g},"properties":{props}}}"#)
            })
            .collect();
        format!(r#"{{"items":{{"type":"FeatureCollection","features":[{}]}},"limit":1000}}"#, fs.join(","))
    });
    prop_oneof![array, features, hostile_page()]
}

/// What a hostile source sends, at the size of a test: dense and empty values by the thousand,
/// deep nesting, long strings, NaN, numbers out of range.
pub fn hostile_page() -> impl Strategy<Value = String> {
    (0usize..8, 1usize..6000).prop_map(|(kind, n)| {
        let items = match kind {
            0 => vec!["{}"; n].join(","),
            1 => format!(r#"{{"id_synthese":1,"a":[{}]}}"#, vec!["0"; n * 4].join(",")),
            2 => format!("{}{}", "[".repeat(n), "]".repeat(n)),
            3 => format!(r#"{{"id_synthese":1,"s":"{}"}}"#, "x".repeat(n * 16)),
            4 => r#"{"id_synthese":1,"v":NaN},{"id_synthese":2,"v":1e999}"#.to_string(),
            5 => (0..n)
                .map(|i| format!(r#"{{"id_synthese":{i},"k":"{}"}}"#, "\\u00e9".repeat(8)))
                .collect::<Vec<_>>()
                .join(","),
            6 => format!(r#"{{"id_synthese":1,"wkt_4326":"MULTIPOINT({})"}}"#, vec!["0 0"; n].join(",")),
            _ => format!(r#"{{{}}}"#, (0..n).map(|i| format!("\"k{i}\":0")).collect::<Vec<_>>().join(",")),
        };
        format!(r#"{{"items":[{items}],"limit":1000}}"#)
    })
}

/// One change to a text's bytes.
#[derive(Debug, Clone)]
pub enum Edit {
    Delete(usize, usize),
    Insert(usize, Vec<u8>),
    Replace(usize, u8),
    Duplicate(usize, usize),
    Cut(usize),
}

pub fn edits() -> impl Strategy<Value = Vec<Edit>> {
    let edit = prop_oneof![
        (any::<usize>(), 1usize..8).prop_map(|(a, n)| Edit::Delete(a, n)),
        (
            any::<usize>(),
            proptest::collection::vec(
                prop_oneof![
                    Just(b'{'),
                    Just(b'['),
                    Just(b'"'),
                    Just(b','),
                    Just(b'\\'),
                    Just(b'0'),
                    Just(b'e'),
                    any::<u8>()
                ],
                1..4,
            )
        )
            .prop_map(|(a, b)| Edit::Insert(a, b)),
        (any::<usize>(), any::<u8>()).prop_map(|(a, b)| Edit::Replace(a, b)),
        (any::<usize>(), 1usize..64).prop_map(|(a, n)| Edit::Duplicate(a, n)),
        any::<usize>().prop_map(Edit::Cut),
    ];
    proptest::collection::vec(edit, 0..4)
}

/// `text` with `edits` applied, as a string (invalid UTF-8 replaced, as a body that is not
/// UTF-8 never reaches the parsers).
pub fn mutate(text: &str, edits: &[Edit]) -> String {
    let mut b = text.as_bytes().to_vec();
    for e in edits {
        let at = |a: usize, b: &Vec<u8>| if b.is_empty() { 0 } else { a % (b.len() + 1) };
        match e {
            Edit::Delete(a, n) => {
                let a = at(*a, &b);
                let end = (a + n).min(b.len());
                b.drain(a..end);
            }
            Edit::Insert(a, bytes) => {
                let a = at(*a, &b);
                b.splice(a..a, bytes.iter().copied());
            }
            Edit::Replace(a, v) => {
                if !b.is_empty() {
                    let a = a % b.len();
                    b[a] = *v;
                }
            }
            Edit::Duplicate(a, n) => {
                let a = at(*a, &b);
                let end = (a + n).min(b.len());
                let slice = b[a..end].to_vec();
                b.splice(a..a, slice);
            }
            Edit::Cut(a) => {
                let a = at(*a, &b);
                b.truncate(a);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}
