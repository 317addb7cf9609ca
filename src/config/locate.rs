//! Finds where a `table.key` is written in a config file, so that errors
//! found after parsing (e.g. `timeouts.connect = "0s"`) still name a line.

/// The 1-based (line, column) of the first `key = …` inside `[table]` (or
/// `[[table]]`) for `field` = `table.key`, or at top level for a bare key.
pub fn key_position(text: &str, field: &str) -> Option<(usize, usize)> {
    let (table, key) = match field.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", field),
    };
    let mut current = String::new();
    for (i, line) in text.lines().enumerate() {
        let t = line.trim_start();
        if t.starts_with('[') {
            current = t
                .trim_start_matches('[')
                .split(']')
                .next()
                .unwrap_or("")
                .trim()
                .to_string();
            continue;
        }
        if current != table {
            continue;
        }
        if let Some(after) = t.strip_prefix(key) {
            if after.trim_start().starts_with('=') {
                return Some((i + 1, line.len() - t.len() + 1));
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_in_their_table_only() {
        let text =
            "connect = 1\n[pool]\nconnect = 2\n\n[timeouts]\n  connect = \"0s\"\nconnection = 3\n";
        assert_eq!(key_position(text, "timeouts.connect"), Some((6, 3)));
        assert_eq!(key_position(text, "pool.connect"), Some((3, 1)));
        assert_eq!(key_position(text, "connect"), Some((1, 1)));
        assert_eq!(key_position(text, "timeouts.idle"), None);
        assert_eq!(
            key_position("[[route.backend]]\nurl = 1\n", "route.backend.url"),
            Some((2, 1))
        );
    }
}
