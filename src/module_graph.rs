//! No import cycles between the crate's files: a file that needs another one's items while that
//! one needs its own hides a missing module (issue 10). Reads `src/` as text: every `crate::` and
//! `super::` path outside `#[cfg(test)]` modules and comments is an edge from the file that
//! names it to the deepest file module the path reaches.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Edges left on purpose, each with its way out (none today).
const ALLOWED: &[(&str, &str)] = &[];

type Graph = BTreeMap<String, BTreeSet<String>>;

/// Module path of a file relative to `src/`: `lib.rs` is the root (""), `a/mod.rs` is `a`.
fn module_of(rel: &Path) -> String {
    let mut parts: Vec<String> = rel.iter().map(|s| s.to_string_lossy().into_owned()).collect();
    let last = parts.pop().unwrap_or_default();
    let stem = last.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts.join("::")
}

/// The text that counts: no comment lines, no `#[cfg(test)]` inline modules.
fn shipped_code(text: &str) -> String {
    let mut out = String::new();
    let mut lines = text.lines().peekable();
    while let Some(line) = lines.next() {
        if line.trim_start().starts_with("//") {
            continue;
        }
        if line.trim() == "#[cfg(test)]" {
            if let Some(next) = lines.peek() {
                let body = next.trim();
                if (body.starts_with("mod ") || body.starts_with("pub mod ")) && body.ends_with('{') {
                    // Skip to the brace that closes the module, at the module's indentation.
                    let indent = next.len() - next.trim_start().len();
                    lines.next();
                    for l in lines.by_ref() {
                        if l.trim() == "}" && l.len() - l.trim_start().len() == indent {
                            break;
                        }
                    }
                    continue;
                }
            }
        }
        out.push_str(line);
        out.push('\n');
    }
    out
}

fn ident_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// Paths (as segments, after `crate`/`super`) named in `code`: `crate::a::b`, `super::a`, and
/// each entry of `crate::{a::b, c}`.
fn paths(code: &str) -> Vec<(bool, Vec<String>)> {
    let mut found = Vec::new();
    for anchor in ["crate::", "super::"] {
        let is_super = anchor == "super::";
        let mut from = 0;
        while let Some(at) = code[from..].find(anchor) {
            let start = from + at;
            from = start + anchor.len();
            if code[..start].chars().next_back().is_some_and(ident_char) {
                continue;
            }
            let rest = &code[from..];
            let mut segs = Vec::new();
            let mut pos = 0;
            loop {
                let len = rest[pos..].find(|c: char| !ident_char(c)).unwrap_or(rest.len() - pos);
                if len == 0 {
                    break;
                }
                segs.push(rest[pos..pos + len].to_string());
                pos += len;
                if rest[pos..].starts_with("::") && rest[pos + 2..].starts_with(|c: char| ident_char(c)) {
                    pos += 2;
                } else {
                    break;
                }
            }
            let group = if segs.is_empty() { rest.strip_prefix('{') } else { rest[pos..].strip_prefix("::{") };
            match group {
                Some(inner) => {
                    let end = inner.find('}').unwrap_or(inner.len());
                    for entry in inner[..end].split(',') {
                        let mut full = segs.clone();
                        full.extend(
                            entry
                                .trim()
                                .split("::")
                                .take_while(|s| !s.is_empty() && s.chars().all(ident_char))
                                .map(String::from),
                        );
                        found.push((is_super, full));
                    }
                }
                None => found.push((is_super, segs)),
            }
        }
    }
    found
}

/// The edges between the file modules of `files` (module path, text).
fn graph(files: &[(String, String)]) -> Graph {
    let modules: BTreeSet<&str> = files.iter().map(|(m, _)| m.as_str()).collect();
    let mut edges = Graph::new();
    for (module, text) in files {
        let out = edges.entry(module.clone()).or_default();
        for (is_super, segs) in paths(&shipped_code(text)) {
            let mut full: Vec<String> = Vec::new();
            if is_super {
                let own: Vec<&str> = module.split("::").filter(|s| !s.is_empty()).collect();
                full.extend(own[..own.len().saturating_sub(1)].iter().map(|s| s.to_string()));
            }
            full.extend(segs);
            let target = (1..=full.len()).rev().map(|k| full[..k].join("::")).find(|c| modules.contains(c.as_str()));
            if let Some(target) = target {
                let related = target == *module
                    || module.starts_with(&format!("{target}::"))
                    || target.starts_with(&format!("{module}::"));
                if !related {
                    out.insert(target);
                }
            }
        }
    }
    edges
}

/// The groups of modules that reach each other (strongly connected components of more than one).
fn cycles(edges: &Graph) -> Vec<Vec<String>> {
    let reach = |from: &str| {
        let mut seen = BTreeSet::new();
        let mut todo = vec![from.to_string()];
        while let Some(m) = todo.pop() {
            for n in edges.get(&m).into_iter().flatten() {
                if seen.insert(n.clone()) {
                    todo.push(n.clone());
                }
            }
        }
        seen
    };
    let reached: BTreeMap<&String, BTreeSet<String>> = edges.keys().map(|m| (m, reach(m))).collect();
    let mut groups: Vec<Vec<String>> = Vec::new();
    for m in edges.keys() {
        if !reached[m].contains(m) || groups.iter().any(|g| g.contains(m)) {
            continue;
        }
        let group = edges.keys().filter(|n| reached[m].contains(*n) && reached[*n].contains(m)).cloned().collect();
        groups.push(group);
    }
    groups
}

fn without_allowed(mut edges: Graph) -> Graph {
    for (from, to) in ALLOWED {
        if let Some(out) = edges.get_mut(*from) {
            out.remove(*to);
        }
    }
    edges
}

/// The crate's files; `GN2PG_MODULE_GRAPH_SRC` points the check at another tree (to see it
/// fail on an older one).
fn crate_files() -> Vec<(String, String)> {
    let root =
        std::env::var("GN2PG_MODULE_GRAPH_SRC").unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/src").into());
    let root = Path::new(&root);
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("src/ is readable") {
            let path = entry.expect("a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let rel = path.strip_prefix(root).expect("under src/");
                files.push((module_of(rel), std::fs::read_to_string(&path).expect("a readable source file")));
            }
        }
    }
    assert!(files.len() > 10, "found only {} files under {}", files.len(), root.display());
    files
}

fn describe(groups: &[Vec<String>], edges: &Graph) -> String {
    groups
        .iter()
        .map(|g| {
            g.iter()
                .map(|m| {
                    let inside: Vec<&str> = edges[m].iter().filter(|n| g.contains(n)).map(String::as_str).collect();
                    format!("{m} -> {}", inside.join(", "))
                })
                .collect::<Vec<_>>()
                .join("; ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn no_cycles_between_files() {
    let edges = without_allowed(graph(&crate_files()));
    let groups = cycles(&edges);
    assert!(
        groups.is_empty(),
        "import cycles between files (move what both need to a module of its own):\n{}",
        describe(&groups, &edges)
    );
}

#[test]
fn allowed_edges_still_exist() {
    let edges = graph(&crate_files());
    for (from, to) in ALLOWED {
        assert!(
            edges.get(*from).is_some_and(|out| out.contains(*to)),
            "{from} no longer uses {to}: remove ({from:?}, {to:?}) from ALLOWED in src/module_graph.rs"
        );
    }
}

#[test]
fn finds_the_cycles_it_is_meant_to_find() {
    let file = |m: &str, text: &str| (m.to_string(), text.to_string());
    let files = vec![
        file("", "mod worker;\nmod run;\nmod alert;\nmod source;\nmod api;\nmod schedule;"),
        file("worker", "use crate::run::{self, Requested};\npub fn tx() {}"),
        file("run", "fn f() { crate::alert::after_run(); }"),
        file("alert", "use crate::worker::tx;"),
        file("api", "use crate::{schedule::unschedule, run};"),
        file("schedule", "// crate::worker is only a comment\nfn f() { crate::api::check_name(\"x\"); }"),
        file("source", "pub mod page;"),
        file("source::page", "use super::paging::Step;\n#[cfg(test)]\nmod tests {\n    use crate::run::x;\n}\n"),
        file("source::paging", "use crate::source::page::Shape;"),
    ];
    let edges = graph(&files);
    assert_eq!(edges["worker"], ["run".to_string()].into());
    assert_eq!(edges["api"], ["run".to_string(), "schedule".to_string()].into());
    assert_eq!(edges["schedule"], ["api".to_string()].into());
    assert_eq!(edges["source::page"], ["source::paging".to_string()].into(), "test modules do not count");
    let groups = cycles(&edges);
    assert_eq!(
        groups,
        vec![
            vec!["alert".to_string(), "run".to_string(), "worker".to_string()],
            vec!["api".to_string(), "schedule".to_string()],
            vec!["source::page".to_string(), "source::paging".to_string()],
        ]
    );
}
