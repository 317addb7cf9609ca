//! `kind = "etcd"`: every key under `prefix` holds one upstream entry (the
//! `[[upstream]]` fields as JSON). A get with the prefix, then a watch from
//! the next revision; on a lost connection the last set stays, an event is
//! raised, and the client reconnects with backoff, re-reads the prefix and
//! resumes watching. Members are named `etcd:NAME` (the entry's `name`) or
//! `etcd:KEY-SUFFIX`.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{Client, ConnectOptions, EventType, GetOptions, WatchOptions};
use futures_util::future::BoxFuture;

use super::{Discover, Sink};
use crate::config::discovery::{EntryConfig, EtcdSpec, MAX_MEMBERS};
use crate::config::UpstreamEntry;
use crate::shutdown::Shutdown;

/// Largest value read as an entry.
const MAX_VALUE: usize = 64 * 1024;
/// Most keys followed under the prefix (entries beyond are reported).
pub const MAX_KEYS: usize = 4 * MAX_MEMBERS;
const BACKOFF_FIRST: Duration = Duration::from_millis(200);
const BACKOFF_MAX: Duration = Duration::from_secs(5);

pub struct Etcd {
    spec: EtcdSpec,
}

impl Etcd {
    pub fn new(spec: EtcdSpec) -> Etcd {
        Etcd { spec }
    }
}

/// The keys under the prefix: the last good entry of each, and the current
/// problem of each key whose latest value is garbage.
#[derive(Debug, Default)]
pub struct Keys {
    good: BTreeMap<String, UpstreamEntry>,
    bad: BTreeMap<String, String>,
    /// A key was ignored because [`MAX_KEYS`] were followed already.
    overflow: bool,
}

impl Keys {
    /// Applies a put. A garbage value keeps the key's last good entry.
    pub fn put(&mut self, prefix: &str, key: &[u8], value: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        let known = self.good.contains_key(&key) || self.bad.contains_key(&key);
        if !known && self.good.len() + self.bad.len() >= MAX_KEYS {
            self.overflow = true;
            return;
        }
        match parse(prefix, &key, value) {
            Ok(e) => {
                self.bad.remove(&key);
                self.good.insert(key, e);
            }
            Err(msg) => {
                self.bad.insert(key.clone(), format!("key {key:?}: {msg}"));
            }
        }
    }

    pub fn delete(&mut self, key: &[u8]) {
        let key = String::from_utf8_lossy(key).into_owned();
        self.good.remove(&key);
        self.bad.remove(&key);
    }

    /// The set (in key order) and the current errors.
    pub fn round(&self) -> (Vec<UpstreamEntry>, Vec<String>) {
        let mut set: Vec<UpstreamEntry> = Vec::new();
        let mut errors: Vec<String> = self.bad.values().cloned().collect();
        if self.overflow {
            errors.insert(
                0,
                format!("more than {MAX_KEYS} keys under the prefix: the rest are ignored"),
            );
        }
        for (k, e) in &self.good {
            if set.iter().any(|s| s.spec.name == e.spec.name) {
                errors.push(format!(
                    "key {k:?}: duplicate name {:?}: ignored",
                    e.spec.name
                ));
                continue;
            }
            set.push(e.clone());
        }
        (set, errors)
    }
}

/// One key's value as a pool entry.
pub fn parse(prefix: &str, key: &str, value: &[u8]) -> Result<UpstreamEntry, String> {
    if value.len() > MAX_VALUE {
        return Err(format!("value larger than {MAX_VALUE} bytes"));
    }
    let cfg: EntryConfig = serde_json::from_slice(value).map_err(|e| {
        format!(
            "not an upstream entry (JSON with at least \"url\"): line {} column {}: {}",
            e.line(),
            e.column(),
            crate::config::redact::redact(&e.to_string())
        )
    })?;
    let suffix = key.strip_prefix(prefix).unwrap_or(key);
    let name = match &cfg.name {
        Some(n) => format!("etcd:{n}"),
        None => format!("etcd:{suffix}"),
    };
    cfg.to_entry(name, "etcd")
}

/// An etcd client error in one line (a gRPC status as `code: message`).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(s) => format!("{:?}: {}", s.code(), s.message()),
        other => other.to_string(),
    }
}

/// Why a session ended (the connection, the watch, or shutdown).
enum End {
    Shutdown,
    Lost(String),
}

impl Etcd {
    async fn connect(&self) -> Result<Client, String> {
        let opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(2))
            .with_timeout(Duration::from_secs(5))
            .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2))
            .with_keep_alive_while_idle(true);
        Client::connect(&self.spec.endpoints, Some(opts))
            .await
            .map_err(|e| describe(&e))
    }

    /// Reads the prefix, reports it, then follows the watch until the
    /// connection or the watch ends. `backoff` resets once a read succeeds.
    async fn session(&self, sink: &mut Sink, shutdown: &Shutdown, backoff: &mut Duration) -> End {
        let prefix = self.spec.prefix.as_str();
        let mut client = match self.connect().await {
            Ok(c) => c,
            Err(e) => return End::Lost(format!("cannot connect: {e}")),
        };
        let got = match client
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_limit(MAX_KEYS as i64)),
            )
            .await
        {
            Ok(g) => g,
            Err(e) => return End::Lost(format!("cannot read the prefix: {}", describe(&e))),
        };
        let revision = got.header().map_or(0, |h| h.revision());
        let mut keys = Keys::default();
        for kv in got.kvs() {
            keys.put(prefix, kv.key(), kv.value());
        }
        if got.more() {
            keys.overflow = true;
        }
        let (set, errors) = keys.round();
        sink.report(Some(set), errors);
        *backoff = BACKOFF_FIRST;
        let watch = WatchOptions::new()
            .with_prefix()
            .with_start_revision(revision + 1);
        let (_watcher, mut stream) = match client.watch(prefix, Some(watch)).await {
            Ok(w) => w,
            Err(e) => return End::Lost(format!("cannot watch the prefix: {}", describe(&e))),
        };
        loop {
            let msg = tokio::select! {
                m = stream.message() => m,
                _ = shutdown.triggered() => return End::Shutdown,
            };
            let resp = match msg {
                Ok(Some(r)) => r,
                Ok(None) => return End::Lost("the watch ended".into()),
                Err(e) => return End::Lost(format!("connection lost: {}", describe(&e))),
            };
            if resp.canceled() {
                return End::Lost(format!("the watch was cancelled: {}", resp.cancel_reason()));
            }
            if resp.events().is_empty() {
                continue;
            }
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                match ev.event_type() {
                    EventType::Put => keys.put(prefix, kv.key(), kv.value()),
                    EventType::Delete => keys.delete(kv.key()),
                }
            }
            let (set, errors) = keys.round();
            sink.report(Some(set), errors);
        }
    }
}

impl Discover for Etcd {
    fn run(self: Box<Self>, mut sink: Sink, shutdown: Shutdown) -> BoxFuture<'static, ()> {
        Box::pin(async move {
            let mut backoff = BACKOFF_FIRST;
            loop {
                match self.session(&mut sink, &shutdown, &mut backoff).await {
                    End::Shutdown => return,
                    End::Lost(why) => {
                        sink.report(
                            None,
                            vec![format!(
                                "etcd {}: {why}; reconnecting",
                                self.spec.endpoints.join(",")
                            )],
                        );
                    }
                }
                let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.8..1.2);
                tokio::select! {
                    _ = tokio::time::sleep(backoff.mul_f64(jitter)) => {}
                    _ = shutdown.triggered() => return,
                }
                backoff = (backoff * 2).min(BACKOFF_MAX);
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_keep_the_last_good_value_and_name_members() {
        let p = "/pg/up/";
        let mut k = Keys::default();
        k.put(p, b"/pg/up/a", br#"{"url":"http://127.0.0.1:3128"}"#);
        k.put(
            p,
            b"/pg/up/b",
            br#"{"name":"bee","url":"socks5://127.0.0.1:1080","priority":1}"#,
        );
        let (set, errors) = k.round();
        let names: Vec<&str> = set.iter().map(|e| e.spec.name.as_str()).collect();
        assert_eq!(names, ["etcd:a", "etcd:bee"]);
        assert!(errors.is_empty());
        // Garbage keeps the last good value of that key, and says so.
        k.put(p, b"/pg/up/a", b"{not json");
        let (set, errors) = k.round();
        assert_eq!(set.len(), 2);
        assert_eq!(set[0].spec.redacted_url(), "http://127.0.0.1:3128");
        assert!(
            errors[0].contains("/pg/up/a") && errors[0].contains("line 1"),
            "{errors:?}"
        );
        // A new good value clears the error.
        k.put(p, b"/pg/up/a", br#"{"url":"http://127.0.0.1:3129"}"#);
        let (set, errors) = k.round();
        assert!(errors.is_empty());
        assert_eq!(set[0].spec.port, 3129);
        k.delete(b"/pg/up/b");
        assert_eq!(k.round().0.len(), 1);
        // A garbage key never seen good contributes nothing but an error.
        k.put(p, b"/pg/up/c", br#"{"url":"ftp://u:s3cret@x:1"}"#);
        let (set, errors) = k.round();
        assert_eq!(set.len(), 1);
        assert!(!errors[0].contains("s3cret"), "{errors:?}");
        // Two keys naming the same member: the first wins.
        k.put(
            p,
            b"/pg/up/d",
            br#"{"name":"a","url":"http://127.0.0.1:1"}"#,
        );
        let (set, errors) = k.round();
        assert_eq!(set.len(), 1);
        assert!(errors.iter().any(|e| e.contains("duplicate")), "{errors:?}");
    }

    #[test]
    fn keys_beyond_the_bound_are_ignored_and_reported() {
        let p = "/p/";
        let mut k = Keys::default();
        for i in 0..MAX_KEYS + 5 {
            let v = format!("{{\"url\":\"http://127.0.0.1:{}\"}}", 1000 + i);
            k.put(p, format!("/p/{i:05}").as_bytes(), v.as_bytes());
        }
        let (set, errors) = k.round();
        assert_eq!(set.len(), MAX_KEYS);
        assert!(errors[0].contains("more than"), "{errors:?}");
        // A key already followed still updates.
        k.put(p, b"/p/00000", br#"{"url":"http://127.0.0.1:9"}"#);
        assert_eq!(k.round().0[0].spec.port, 9);
    }
}
