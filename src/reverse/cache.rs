//! The fallback cache: the last good response to each GET, bounded in
//! entries, served only up to a maximum age when no backend can answer.
//!
//! It is shared by every client of the route, so it holds only responses
//! that are the same for everyone: never one to a request carrying
//! `Authorization` or `Cookie`, never one marked `Cache-Control: private`,
//! `no-store` or `no-cache`, never one that sets a cookie, and never one with
//! a `Vary` (the stored response may not fit the next request's headers).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, StatusCode};

type Entry = (StatusCode, HeaderMap, Bytes, Instant);

/// Whether a request may be answered from (and fill) the shared cache.
pub fn request_may_use_cache(h: &HeaderMap) -> bool {
    !h.contains_key(http::header::AUTHORIZATION) && !h.contains_key(http::header::COOKIE)
}

/// Whether a response may be stored for everyone.
pub fn response_may_be_stored(h: &HeaderMap) -> bool {
    let forbidden = h
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|d| d.trim().to_ascii_lowercase())
        .any(|d| {
            let name = d.split('=').next().unwrap_or("").trim().to_string();
            matches!(name.as_str(), "private" | "no-store" | "no-cache")
        });
    !forbidden && !h.contains_key(http::header::VARY) && !h.contains_key(http::header::SET_COOKIE)
}

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
    fn private_answers_are_never_shared() {
        let mut req = HeaderMap::new();
        assert!(request_may_use_cache(&req));
        req.insert(http::header::AUTHORIZATION, "Bearer a".parse().unwrap());
        assert!(!request_may_use_cache(&req));
        let mut req = HeaderMap::new();
        req.insert(http::header::COOKIE, "s=1".parse().unwrap());
        assert!(!request_may_use_cache(&req));
        for (k, v) in [
            ("cache-control", "max-age=60, private"),
            ("cache-control", "no-store"),
            ("cache-control", "No-Cache"),
            ("vary", "Accept-Language"),
            ("set-cookie", "s=1"),
        ] {
            let mut h = HeaderMap::new();
            h.insert(k, v.parse().unwrap());
            assert!(!response_may_be_stored(&h), "{k}: {v}");
        }
        let mut h = HeaderMap::new();
        h.insert("cache-control", "public, max-age=60".parse().unwrap());
        assert!(response_may_be_stored(&h));
    }

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
