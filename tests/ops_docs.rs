//! The configuration reference covers every key of the schema, read from the
//! schema sources at run time (so keys added later are checked too), and the
//! example configuration shows [pool], [health], [admin] and [[alert]] and
//! passes `proxyguard check`.

mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use support::*;

/// struct name -> serde field names (after `rename`, without `skip`), and
/// the struct each field nests (by its type), for every `pub struct` in
/// src/config/.
type Structs = BTreeMap<String, Vec<(String, String)>>;

fn inner_type(ty: &str) -> String {
    let mut t = ty.trim().trim_end_matches(',').trim();
    for wrapper in ["Option<", "Vec<", "Spanned<", "Box<"] {
        while let Some(rest) = t.strip_prefix(wrapper) {
            t = rest.strip_suffix('>').unwrap_or(rest);
        }
    }
    t.rsplit("::").next().unwrap_or(t).trim().to_string()
}

fn parse_structs(text: &str, out: &mut Structs) {
    let mut current: Option<String> = None;
    let mut rename: Option<String> = None;
    let mut skip = false;
    for line in text.lines() {
        let t = line.trim();
        if let Some(rest) = t.strip_prefix("pub struct ") {
            if t.ends_with('{') {
                let name = rest.trim_end_matches('{').trim().to_string();
                out.insert(name.clone(), Vec::new());
                current = Some(name);
            }
            continue;
        }
        let Some(name) = &current else { continue };
        if t == "}" {
            current = None;
            continue;
        }
        if t.starts_with("#[serde(") {
            if t.contains("skip)") || t.contains("skip,") || t.contains("skip_deserializing") {
                skip = true;
            }
            if let Some(r) = t.split("rename = \"").nth(1) {
                rename = r.split('"').next().map(str::to_string);
            }
            continue;
        }
        if let Some(rest) = t.strip_prefix("pub ") {
            if let Some((field, ty)) = rest.split_once(':') {
                let key = rename.take().unwrap_or_else(|| field.trim().to_string());
                if !std::mem::take(&mut skip) {
                    if let Some(v) = out.get_mut(name) {
                        v.push((key, inner_type(ty)));
                    }
                }
            }
        }
    }
}

/// (table path, key) of every leaf key reachable from FileConfig.
fn keys(structs: &Structs, name: &str, prefix: &str, out: &mut Vec<(String, String)>) {
    for (field, ty) in structs.get(name).cloned().unwrap_or_default() {
        if structs.contains_key(&ty) {
            let p = if prefix.is_empty() {
                field.clone()
            } else {
                format!("{prefix}.{field}")
            };
            keys(structs, &ty, &p, out);
        } else {
            out.push((prefix.to_string(), field));
        }
    }
}

/// The text of the `## ` section whose heading names `[table]`/`[[table]]`
/// (or "Top level" for the empty table).
fn section<'a>(doc: &'a str, table: &str) -> Option<&'a str> {
    let top = table.split('.').next().unwrap_or("");
    let mut start = None;
    let mut offset = 0;
    for line in doc.split_inclusive('\n') {
        if line.starts_with("## ") {
            if let Some(s) = start {
                return Some(&doc[s..offset]);
            }
            let hit = if top.is_empty() {
                line.contains("Top level")
            } else {
                line.contains(&format!("[{top}]`")) || line.contains(&format!("[[{top}]]`"))
            };
            if hit {
                start = Some(offset);
            }
        }
        offset += line.len();
    }
    start.map(|s| &doc[s..])
}

#[test]
fn configuration_reference_covers_every_schema_key() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut structs = Structs::new();
    for e in std::fs::read_dir(root.join("src/config")).expect("src/config") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "rs") {
            parse_structs(&std::fs::read_to_string(&p).expect("read"), &mut structs);
        }
    }
    let mut all = Vec::new();
    keys(&structs, "FileConfig", "", &mut all);
    assert!(all.len() > 50, "schema parse found only {all:?}");
    for must in [
        ("admin", "token_env"),
        ("alert", "webhook"),
        ("pool", "upstreams_from_env"),
    ] {
        assert!(
            all.iter().any(|(t, k)| t == must.0 && k == must.1),
            "schema parse missed {must:?}"
        );
    }
    let doc = std::fs::read_to_string(root.join("docs/configuration.md")).expect("doc");
    let mut missing = Vec::new();
    for (table, key) in &all {
        let Some(text) = section(&doc, table) else {
            missing.push(format!("no section for [{table}]"));
            continue;
        };
        // A map-valued key (e.g. `resolve`) is documented by its own section.
        let documented = text.contains(&format!("`{key}`"))
            || text.contains(&format!("\n{key} ="))
            || (table.is_empty() && section(&doc, key).is_some());
        if !documented {
            missing.push(format!("[{table}] {key}"));
        }
    }
    missing.dedup();
    assert!(
        missing.is_empty(),
        "docs/configuration.md lacks: {missing:#?}"
    );
}

#[test]
fn example_config_shows_the_main_tables_and_passes_check() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let path = root.join("examples/proxyguard.toml");
    let text = std::fs::read_to_string(&path).expect("example");
    for table in ["[pool]", "[health]", "[admin]", "[[alert]]", "[breaker]"] {
        assert!(
            text.lines().any(|l| l.trim() == table),
            "example lacks {table}"
        );
    }
    let out = proxyguard_run(
        &["check", "--config", &path.display().to_string()],
        &[],
        Duration::from_secs(20),
    );
    assert_eq!(out.code, 0, "{out:?}");
    assert!(!out.stdout.contains("s3cret"), "secret printed by check");
}
