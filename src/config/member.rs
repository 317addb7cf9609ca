//! The fields of one upstream wherever it is written: an `[[upstream]]`
//! table of the configuration file, or an entry a discovery source returns
//! (an etcd value, an entry of a discovered file). One definition, so both
//! take the same keys with the same defaults.

use serde::{Deserialize, Serialize};

use super::duration::Dur;
use super::load::{Applies, UpstreamEntry};
use crate::upstream::UpstreamSpec;

/// One upstream as written. `N` and `U` are how the name and the URL are
/// read: see [`UpstreamConfig`](super::schema::UpstreamConfig) and
/// [`EntryConfig`](super::discovery::EntryConfig).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemberConfig<N, U> {
    pub name: N,
    pub url: U,
    pub zone: Option<String>,
    /// Lower is preferred by the `failover` strategy.
    #[serde(default)]
    pub priority: i32,
    #[serde(default = "one")]
    pub weight: u32,
    /// Passive failures within `fail_timeout` that eject the upstream.
    #[serde(default = "three")]
    pub max_fails: u32,
    #[serde(default = "ten_s")]
    pub fail_timeout: Dur,
}

pub(super) fn one() -> u32 {
    1
}
pub(super) fn three() -> u32 {
    3
}
pub(super) fn ten_s() -> Dur {
    Dur::secs(10)
}

impl<N, U> MemberConfig<N, U> {
    /// The pool entry for `spec` (parsed from `url`) with these settings,
    /// for all traffic. `max_fails` is at least 1.
    pub fn entry(&self, spec: UpstreamSpec, origin: &str) -> UpstreamEntry {
        UpstreamEntry {
            spec,
            zone: self.zone.clone(),
            priority: self.priority,
            weight: self.weight,
            max_fails: self.max_fails.max(1),
            fail_timeout: self.fail_timeout.0,
            applies: Applies::ALL,
            origin: origin.to_string(),
        }
    }
}

impl UpstreamEntry {
    /// `spec` with the defaults of an `[[upstream]]` table, for all traffic.
    pub fn with_defaults(spec: UpstreamSpec, origin: impl Into<String>) -> Self {
        UpstreamEntry {
            spec,
            zone: None,
            priority: 0,
            weight: one(),
            max_fails: three(),
            fail_timeout: ten_s().0,
            applies: Applies::ALL,
            origin: origin.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::discovery::EntryConfig;
    use super::super::schema::FileConfig;

    #[test]
    fn missing_optional_keys_read_as_none_and_are_left_out_when_written() {
        let f: FileConfig = toml::from_str(
            "[[upstream]]\nname = \"a\"\nurl = \"http://127.0.0.1:1\"\n[[route]]\nlisten = \"127.0.0.1:1\"\n",
        )
        .unwrap();
        let u = &f.upstream[0];
        assert_eq!((u.zone.as_deref(), u.weight, u.max_fails), (None, 1, 3));
        assert!(f.route[0].sign.is_none() && f.fleet.is_none());
        let written = toml::to_string(&f).unwrap();
        assert!(
            !written.contains("zone") && !written.contains("sign"),
            "{written}"
        );
        let back: FileConfig = toml::from_str(&written).unwrap();
        assert_eq!(back.upstream[0].url.get_ref(), "http://127.0.0.1:1");

        let e: EntryConfig = serde_json::from_str(r#"{"url":"http://127.0.0.1:1"}"#).unwrap();
        assert_eq!((e.name, e.zone, e.priority), (None, None, 0));
        assert!(toml::from_str::<FileConfig>("[[upstream]]\nurl = \"http://h:1\"\n").is_err());
    }
}
