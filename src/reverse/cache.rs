//! The fallback cache: the last good response to each GET, bounded in
//! entries, served only up to a maximum age when no backend can answer.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

type Entry = (StatusCode, HeaderMap, Bytes, Instant);

pub struct Cache {
    max: usize,
    map: Mutex<HashMap<String, Entry>>,
}

impl Cache {
    pub fn new(max: usize) -> Self {
        Cache {
            max,
            map: Mutex::new(HashMap::new()),
        }
    }

    pub fn put(&self, key: String, status: StatusCode, headers: HeaderMap, body: Bytes) {
        if self.max == 0 {
            return;
        }
        let Ok(mut m) = self.map.lock() else { return };
        if m.len() >= self.max && !m.contains_key(&key) {
            // Evict the oldest entry.
            if let Some(k) = m.iter().min_by_key(|(_, v)| v.3).map(|(k, _)| k.clone()) {
                m.remove(&k);
            }
        }
        m.insert(key, (status, headers, body, Instant::now()));
    }

    /// The entry if it is younger than `max_age`.
    pub fn get(&self, key: &str, max_age: Duration) -> Option<Entry> {
        let m = self.map.lock().ok()?;
        m.get(key).filter(|e| e.3.elapsed() <= max_age).cloned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_aged() {
        let c = Cache::new(2);
        c.put(
            "a".into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from("1"),
        );
        std::thread::sleep(Duration::from_millis(2));
        c.put(
            "b".into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from("2"),
        );
        c.put(
            "c".into(),
            StatusCode::OK,
            HeaderMap::new(),
            Bytes::from("3"),
        );
        assert!(
            c.get("a", Duration::from_secs(9)).is_none(),
            "oldest evicted"
        );
        assert_eq!(
            c.get("c", Duration::from_secs(9)).unwrap().2,
            Bytes::from("3")
        );
        std::thread::sleep(Duration::from_millis(20));
        assert!(c.get("c", Duration::from_millis(5)).is_none(), "too old");
    }
}
