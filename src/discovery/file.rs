//! `kind = "file"`: a glob of files listing upstream entries, polled every
//! `interval` (like Prometheus `file_sd`). TOML files hold `[[upstream]]`
//! tables, `.json` files a list of entries (or `{"upstream": [...]}`).
//! A broken file keeps its last good entries and its error (file:line) is
//! logged; a removed file's entries go. Members are named `file:NAME`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use futures_util::future::BoxFuture;
use serde::Deserialize;

use super::{Discover, Sink};
use crate::config::discovery::{EntryConfig, FileSpec, MAX_MEMBERS};
use crate::config::UpstreamEntry;
use crate::shutdown::Shutdown;

/// Largest file read.
const MAX_FILE: u64 = 1024 * 1024;
/// Most files one glob may match.
const MAX_FILES: usize = 64;

pub struct Files {
    spec: FileSpec,
    per: BTreeMap<PathBuf, FileState>,
}

#[derive(Debug, Default)]
struct FileState {
    /// Size and modification time last read: unchanged, the file is not
    /// read again.
    stamp: Option<(u64, std::time::SystemTime)>,
    /// The contents last parsed (re-parsed only when they change).
    seen: Vec<u8>,
    parsed: bool,
    good: Vec<UpstreamEntry>,
    error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TomlDoc {
    #[serde(default)]
    upstream: Vec<toml::Spanned<EntryConfig>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum JsonDoc {
    List(Vec<EntryConfig>),
    Table { upstream: Vec<EntryConfig> },
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The line of the `n`-th (0-based) `"url"` key: where JSON entry `n` is.
fn json_entry_line(text: &str, n: usize) -> Option<usize> {
    text.match_indices("\"url\"")
        .nth(n)
        .map(|(i, _)| line_of(text, i))
}

/// Parses one file's entries; errors read `FILE:LINE: what`.
pub fn parse(path: &Path, text: &str) -> Result<Vec<UpstreamEntry>, String> {
    let shown = path.display();
    let json = path
        .extension()
        .is_some_and(|x| x.eq_ignore_ascii_case("json"));
    let items: Vec<(Option<usize>, EntryConfig)> = if json {
        let doc: JsonDoc =
            serde_json::from_str(text).map_err(|e| format!("{shown}:{}: {e}", e.line()))?;
        let list = match doc {
            JsonDoc::List(l) | JsonDoc::Table { upstream: l } => l,
        };
        list.into_iter()
            .enumerate()
            .map(|(i, e)| (json_entry_line(text, i), e))
            .collect()
    } else {
        let doc: TomlDoc = toml::from_str(text).map_err(|e| {
            let line = e.span().map_or(0, |s| line_of(text, s.start));
            format!("{shown}:{line}: {}", e.message().trim())
        })?;
        doc.upstream
            .into_iter()
            .map(|s| (Some(line_of(text, s.span().start)), s.into_inner()))
            .collect()
    };
    let mut out: Vec<UpstreamEntry> = Vec::new();
    for (line, cfg) in items.into_iter().take(MAX_MEMBERS + 1) {
        let at = format!("{shown}:{}", line.map_or("?".into(), |l| l.to_string()));
        let Some(name) = cfg.name.clone().filter(|n| !n.trim().is_empty()) else {
            return Err(format!("{at}: entry without `name`"));
        };
        let member = format!("file:{}", name.trim());
        if out.iter().any(|o| o.spec.name == member) {
            return Err(format!("{at}: duplicate name {:?}", name.trim()));
        }
        out.push(
            cfg.to_entry(member, "file")
                .map_err(|e| format!("{at}: entry {:?}: {e}", name.trim()))?,
        );
    }
    Ok(out)
}

impl Files {
    pub fn new(spec: FileSpec) -> Files {
        Files {
            spec,
            per: BTreeMap::new(),
        }
    }

    /// One poll: re-reads changed files; returns the union and the errors.
    fn round(&mut self) -> (Vec<UpstreamEntry>, Vec<String>) {
        let mut errors = Vec::new();
        let mut paths: Vec<PathBuf> = Vec::new();
        match glob::glob(&self.spec.pattern) {
            Ok(it) => {
                for p in it {
                    match p {
                        Ok(p) if p.is_file() => paths.push(p),
                        Ok(_) => {}
                        Err(e) => errors.push(format!("{}: {}", e.path().display(), e.error())),
                    }
                }
            }
            Err(e) => errors.push(format!("{}: {e}", self.spec.pattern)),
        }
        paths.sort();
        if paths.len() > MAX_FILES {
            errors.push(format!(
                "{} files match {}: only the first {MAX_FILES} are read",
                paths.len(),
                self.spec.pattern
            ));
            paths.truncate(MAX_FILES);
        }
        self.per.retain(|p, _| paths.contains(p));
        for p in &paths {
            let st = self.per.entry(p.clone()).or_default();
            let meta = std::fs::metadata(p);
            let stamp = meta
                .as_ref()
                .ok()
                .and_then(|m| Some((m.len(), m.modified().ok()?)));
            // A file changed within the last 2 s is read anyway: a coarse
            // mtime could hide a same-size rewrite in the same tick.
            let settled = stamp.is_some_and(|(_, t)| {
                t.elapsed()
                    .is_ok_and(|age| age > std::time::Duration::from_secs(2))
            });
            if st.parsed && settled && stamp == st.stamp {
                continue;
            }
            st.stamp = stamp;
            let read = meta.and_then(|m| {
                if m.len() > MAX_FILE {
                    Err(std::io::Error::other(format!(
                        "larger than {MAX_FILE} bytes"
                    )))
                } else {
                    std::fs::read(p)
                }
            });
            match read {
                Ok(bytes) if st.parsed && bytes == st.seen => {}
                Ok(bytes) => {
                    match parse(p, &String::from_utf8_lossy(&bytes)) {
                        Ok(v) => {
                            st.good = v;
                            st.error = None;
                        }
                        Err(e) => st.error = Some(e),
                    }
                    st.seen = bytes;
                    st.parsed = true;
                }
                // Unreadable for now (e.g. being replaced): keep what it had.
                Err(e) => st.error = Some(format!("{}: {e}", p.display())),
            }
        }
        let mut set: Vec<UpstreamEntry> = Vec::new();
        for (p, st) in &self.per {
            if let Some(e) = &st.error {
                errors.push(e.clone());
            }
            for e in &st.good {
                if set.iter().any(|s| s.spec.name == e.spec.name) {
                    errors.push(format!(
                        "{}: name {:?} is also in another file: ignored here",
                        p.display(),
                        e.spec.name.trim_start_matches("file:")
                    ));
                    continue;
                }
                set.push(e.clone());
            }
        }
        (set, errors)
    }
}

impl Discover for Files {
    fn run(mut self: Box<Self>, mut sink: Sink, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            loop {
                let (set, errors) = self.round();
                sink.report(Some(set), errors);
                tokio::select! {
                    _ = tokio::time::sleep(self.spec.interval) => {}
                    _ = shutdown.triggered() => return,
                }
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_and_json_lists_parse_with_lines_in_errors() {
        let t = "# upstreams\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:3128\"\n\n[[upstream]]\nname = \"b\"\nurl = \"socks5://127.0.0.1:1080\"\npriority = 2\n";
        let v = parse(Path::new("u.toml"), t).unwrap();
        let names: Vec<&str> = v.iter().map(|e| e.spec.name.as_str()).collect();
        assert_eq!(names, ["file:a", "file:b"]);
        assert_eq!(v[1].priority, 2);
        assert!(v.iter().all(|e| e.origin == "file"));
        let j = "[\n {\"name\": \"a\", \"url\": \"http://127.0.0.1:3128\"},\n {\"name\": \"c\", \"url\": \"http://127.0.0.1:3129\"}\n]\n";
        assert_eq!(parse(Path::new("u.json"), j).unwrap().len(), 2);
        let j2 = "{\"upstream\": [{\"name\": \"a\", \"url\": \"http://127.0.0.1:3128\"}]}";
        assert_eq!(parse(Path::new("u.JSON"), j2).unwrap().len(), 1);

        let e = parse(
            Path::new("/d/u.toml"),
            "[[upstream]]\nname = \"a\"\nurl = \n",
        )
        .unwrap_err();
        assert!(e.starts_with("/d/u.toml:3:"), "{e}");
        let bad_url = "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[upstream]]\nname = \"b\"\nurl = \"ftp://u:s3cret@x\"\n";
        let e = parse(Path::new("u.toml"), bad_url).unwrap_err();
        assert!(
            e.starts_with("u.toml:4:") || e.starts_with("u.toml:5:"),
            "{e}"
        );
        assert!(
            e.contains("\"b\"") && e.contains("`url`") && !e.contains("s3cret"),
            "{e}"
        );
        let e = parse(Path::new("u.json"), "[\n{\"name\": \"a\",\n \"url\": 5}]").unwrap_err();
        assert!(e.starts_with("u.json:"), "{e}");
        let e = parse(
            Path::new("u.json"),
            "[\n{\"name\":\"a\",\"url\":\"http://127.0.0.1:1\"},\n{\"name\":\"b\",\n\"url\":\"nope://x\"}]",
        )
        .unwrap_err();
        assert!(e.starts_with("u.json:4:"), "{e}");
        let e = parse(
            Path::new("u.toml"),
            "[[upstream]]\nurl = \"http://127.0.0.1:1\"\n",
        )
        .unwrap_err();
        assert!(e.contains("without `name`"), "{e}");
        let e = parse(Path::new("u.toml"), "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:2\"\n").unwrap_err();
        assert!(e.contains("duplicate"), "{e}");
        assert!(parse(Path::new("u.toml"), "bogus = 1\n").is_err());
    }

    #[test]
    fn a_broken_file_keeps_its_last_good_entries_and_a_removed_one_goes() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.toml");
        let b = dir.path().join("b.json");
        std::fs::write(
            &a,
            "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:3128\"\n",
        )
        .unwrap();
        std::fs::write(&b, r#"[{"name":"b","url":"http://127.0.0.1:3129"}]"#).unwrap();
        let mut f = Files::new(FileSpec {
            pattern: format!("{}/*", dir.path().display()),
            interval: std::time::Duration::from_secs(1),
        });
        let (set, errors) = f.round();
        assert_eq!(set.len(), 2, "{errors:?}");
        std::fs::write(
            &a,
            "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:3128\"\n[[upstream\n",
        )
        .unwrap();
        let (set, errors) = f.round();
        assert_eq!(set.len(), 2);
        assert!(
            errors.len() == 1 && errors[0].contains("a.toml:4"),
            "{errors:?}"
        );
        // Still broken: the same error, no re-parse needed.
        assert_eq!(f.round().1, errors);
        std::fs::remove_file(&b).unwrap();
        let (set, _) = f.round();
        assert_eq!(set.len(), 1);
        std::fs::write(&a, "").unwrap();
        let (set, errors) = f.round();
        assert!(set.is_empty() && errors.is_empty(), "{set:?} {errors:?}");
    }
}
