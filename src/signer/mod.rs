//! Alibaba Cloud request signing.
//!
//! Three schemes are supported:
//! * [`apigw`]: API Gateway app authentication (`X-Ca-*` headers, HMAC-SHA256/HMAC-SHA1),
//! * [`rpc`]: OpenAPI RPC signature v1 (`Signature` query parameter, HMAC-SHA1),
//! * [`acs3`]: OpenAPI V3 (`Authorization: ACS3-HMAC-SHA256 ...`).
//!
//! [`verify`] recomputes API Gateway signatures and interprets gateway error messages;
//! [`cli`] holds the `proxyguard sign` command. See `docs/signing.md`.

pub mod acs3;
pub mod apigw;
pub mod cli;
pub mod rpc;
pub mod verify;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC};

/// An HTTP request to be signed (or verified).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SignRequest {
    /// HTTP method, e.g. `GET`. Used upper-cased.
    pub method: String,
    /// Path and query, e.g. `/demo/get?b=2&a=1` (no scheme or host). A `#fragment` is ignored.
    pub url: String,
    /// Request headers in order; names are matched case-insensitively.
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
}

impl SignRequest {
    /// A request without headers or body.
    pub fn new(method: impl Into<String>, url: impl Into<String>) -> Self {
        SignRequest {
            method: method.into(),
            url: url.into(),
            headers: Vec::new(),
            body: Vec::new(),
        }
    }

    /// Builder: append a header.
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Builder: set the body.
    pub fn with_body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Replace every header called `name` (case-insensitive) by a single `name: value`.
    pub fn set_header(&mut self, name: &str, value: impl Into<String>) {
        self.remove_header(name);
        self.headers.push((name.to_string(), value.into()));
    }

    /// Remove every header called `name` (case-insensitive).
    pub fn remove_header(&mut self, name: &str) {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
    }

    /// Rejects the request if any header value would break its header line.
    pub(crate) fn check_headers(&self) -> Result<(), SignError> {
        self.headers
            .iter()
            .try_for_each(|(k, v)| check_header_value(k, v))
    }

    /// Sets each of `headers` (replacing same-named ones) after checking its value.
    pub(crate) fn set_headers_checked(
        &mut self,
        headers: &[(String, String)],
    ) -> Result<(), SignError> {
        for (k, v) in headers {
            check_header_value(k, v)?;
            self.set_header(k, v.clone());
        }
        Ok(())
    }

    fn without_fragment(&self) -> &str {
        match self.url.find('#') {
            Some(i) => &self.url[..i],
            None => &self.url,
        }
    }

    /// The path (everything before `?`), as written.
    pub fn path(&self) -> &str {
        let u = self.without_fragment();
        match u.find('?') {
            Some(i) => &u[..i],
            None => u,
        }
    }

    /// The raw query string (after `?`), if any.
    pub fn raw_query(&self) -> Option<&str> {
        let u = self.without_fragment();
        u.find('?').map(|i| &u[i + 1..])
    }

    /// Decoded query parameters in order (`+` is a space; a key without `=` has an empty value).
    pub fn query_pairs(&self) -> Vec<(String, String)> {
        match self.raw_query() {
            Some(q) => decode_pairs(q.as_bytes()),
            None => Vec::new(),
        }
    }

    /// Whether the body is `application/x-www-form-urlencoded`.
    pub fn is_form(&self) -> bool {
        self.header("content-type").is_some_and(|ct| {
            ct.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
    }

    /// Decoded form parameters of the body (empty unless [`is_form`](Self::is_form)).
    pub fn form_pairs(&self) -> Vec<(String, String)> {
        if self.is_form() {
            decode_pairs(&self.body)
        } else {
            Vec::new()
        }
    }
}

fn decode_pairs(input: &[u8]) -> Vec<(String, String)> {
    url::form_urlencoded::parse(input)
        .map(|(k, v)| (k.into_owned(), v.into_owned()))
        .collect()
}

/// Errors while preparing or signing a request.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error("environment variable {0} is not set (it should hold the secret)")]
    MissingEnvVar(String),
    #[error("environment variable {0} does not hold valid UTF-8")]
    EnvVarNotUnicode(String),
    #[error("cannot read secret file {path}: {source}")]
    SecretFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the secret from {0} is empty")]
    EmptySecret(String),
    #[error("cannot read body file {path}: {source}")]
    BodyFile {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid URL {url:?}: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("invalid header {0:?}: expected 'Name: value' without line breaks")]
    InvalidHeader(String),
    #[error("invalid timestamp {value:?}: {reason}")]
    InvalidTimestamp { value: String, reason: String },
    #[error("unsupported signature method {0:?} (expected HmacSHA256 or HmacSHA1)")]
    UnsupportedSignatureMethod(String),
    #[error("header {0} is required for signing but missing from the request")]
    MissingHeader(String),
    #[error("{0}")]
    Usage(String),
    #[error("HMAC key rejected")]
    Crypto,
}

/// RFC 3986 unreserved characters are kept; everything else is percent-encoded
/// (space becomes `%20`, `*` becomes `%2A`).
pub(crate) const RFC3986: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// RFC 3986 percent-encoding keeping only `A-Za-z0-9-_.~`.
pub fn percent_encode(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, RFC3986).to_string()
}

pub(crate) fn hmac_sha256(key: &[u8], data: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(key).map_err(|_| SignError::Crypto)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

pub(crate) fn hmac_sha1(key: &[u8], data: &[u8]) -> Result<Vec<u8>, SignError> {
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(key).map_err(|_| SignError::Crypto)?;
    mac.update(data);
    Ok(mac.finalize().into_bytes().to_vec())
}

/// Every scheme needs a key id and a secret: neither may be empty. `key_name`
/// and `secret_name` are what the scheme calls them.
pub(crate) fn check_credentials(
    key: &str,
    key_name: &str,
    secret: &str,
    secret_name: &str,
) -> Result<(), SignError> {
    if key.trim().is_empty() {
        return Err(SignError::Usage(format!("the {key_name} is empty")));
    }
    if secret.is_empty() {
        return Err(SignError::Usage(format!("the {secret_name} is empty")));
    }
    Ok(())
}

/// rpc and acs3: neither the AccessKeyId nor its secret may be empty.
pub(crate) fn check_access_key(id: &str, secret: &str) -> Result<(), SignError> {
    check_credentials(id, "AccessKeyId", secret, "AccessKey secret")
}

/// The nonce given (trimmed; empty is an error), or a `fresh` one.
pub(crate) fn nonce_or(
    given: Option<&str>,
    fresh: impl FnOnce() -> String,
) -> Result<String, SignError> {
    match given.map(str::trim) {
        Some("") => Err(SignError::Usage("the nonce is empty".into())),
        Some(n) => Ok(n.to_string()),
        None => Ok(fresh()),
    }
}

/// Parameters RFC 3986-encoded, sorted by encoded key (then value), `k=v`
/// joined by `&` (an empty value gives `k=`): the canonical query of the rpc
/// and acs3 schemes.
pub fn canonical_query(params: &[(String, String)]) -> String {
    let mut enc: Vec<(String, String)> = params
        .iter()
        .map(|(k, v)| (percent_encode(k), percent_encode(v)))
        .collect();
    enc.sort();
    enc.iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Reject header values that would break the header line.
pub(crate) fn check_header_value(name: &str, value: &str) -> Result<(), SignError> {
    if value.contains(['\r', '\n']) {
        return Err(SignError::InvalidHeader(format!("{name}: {value}")));
    }
    Ok(())
}

/// Milliseconds since the Unix epoch, now.
pub fn now_epoch_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Current UTC time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn now_iso8601() -> String {
    format_iso8601((now_epoch_ms() / 1000) as i64)
}

/// Format seconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SSZ` (UTC).
pub fn format_iso8601(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        (rem / 60) % 60,
        rem % 60
    )
}

/// Parse an RFC 3339 date-time (`2016-02-23T12:46:24Z`, `2016-02-23T20:46:24+08:00`,
/// fractional seconds allowed and dropped) into seconds since the Unix epoch.
pub fn parse_rfc3339(s: &str) -> Result<i64, SignError> {
    let bad = |reason: &str| SignError::InvalidTimestamp {
        value: s.to_string(),
        reason: reason.to_string(),
    };
    let b = s.trim().as_bytes();
    if b.len() < 20 {
        return Err(bad("expected RFC 3339, e.g. 2016-02-23T12:46:24Z"));
    }
    let num = |r: std::ops::Range<usize>| -> Result<i64, SignError> {
        let part = b
            .get(r)
            .ok_or_else(|| bad("expected RFC 3339, e.g. 2016-02-23T12:46:24Z"))?;
        if part.iter().all(u8::is_ascii_digit) {
            Ok(part.iter().fold(0i64, |a, d| a * 10 + i64::from(d - b'0')))
        } else {
            Err(bad("expected RFC 3339, e.g. 2016-02-23T12:46:24Z"))
        }
    };
    let sep_ok = b[4] == b'-'
        && b[7] == b'-'
        && matches!(b[10], b'T' | b't' | b' ')
        && b[13] == b':'
        && b[16] == b':';
    if !sep_ok {
        return Err(bad("expected RFC 3339, e.g. 2016-02-23T12:46:24Z"));
    }
    let (y, mo, d, h, mi, sec) = (
        num(0..4)?,
        num(5..7)?,
        num(8..10)?,
        num(11..13)?,
        num(14..16)?,
        num(17..19)?,
    );
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) {
        return Err(bad("date out of range"));
    }
    if h > 23 || mi > 59 || sec > 59 {
        return Err(bad("time out of range"));
    }
    let mut i = 19;
    if b.get(i) == Some(&b'.') {
        i += 1;
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == start {
            return Err(bad("empty fractional seconds"));
        }
    }
    let offset = match b.get(i) {
        Some(b'Z' | b'z') if i + 1 == b.len() => 0,
        Some(sign @ (b'+' | b'-')) if i + 6 == b.len() && b[i + 3] == b':' => {
            let oh = num(i + 1..i + 3)?;
            let om = num(i + 4..i + 6)?;
            if oh > 23 || om > 59 {
                return Err(bad("offset out of range"));
            }
            let o = oh * 3600 + om * 60;
            if *sign == b'+' {
                o
            } else {
                -o
            }
        }
        _ => return Err(bad("missing or malformed time zone (use Z or +hh:mm)")),
    };
    Ok(days_from_civil(y, mo, d) * 86_400 + h * 3600 + mi * 60 + sec - offset)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        _ => 28,
    }
}

// Howard Hinnant's civil calendar algorithms.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_parts() {
        let r = SignRequest::new("GET", "/a/b?x=1&y=%20+z&k#frag")
            .with_header("Content-Type", "application/json");
        assert_eq!(r.path(), "/a/b");
        assert_eq!(r.raw_query(), Some("x=1&y=%20+z&k"));
        assert_eq!(
            r.query_pairs(),
            vec![
                ("x".to_string(), "1".to_string()),
                ("y".to_string(), "  z".to_string()),
                ("k".to_string(), String::new()),
            ]
        );
        assert!(!r.is_form());
        assert_eq!(r.header("content-type"), Some("application/json"));
    }

    #[test]
    fn iso8601_round_trip() {
        assert_eq!(format_iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_iso8601(1_456_231_584), "2016-02-23T12:46:24Z");
        assert_eq!(
            parse_rfc3339("2016-02-23T12:46:24Z").ok(),
            Some(1_456_231_584)
        );
        assert_eq!(
            parse_rfc3339("2016-02-23T20:46:24.123+08:00").ok(),
            Some(1_456_231_584)
        );
        assert_eq!(
            parse_rfc3339("2024-02-29T00:00:00Z").ok(),
            Some(1_709_164_800)
        );
        for bad in [
            "2023-02-29T00:00:00Z",
            "2016-02-23 12:46:24",
            "1700000000000",
            "2016-13-01T00:00:00Z",
            "",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
        for secs in [0i64, 951_782_400, 1_700_000_000, 4_102_444_800] {
            assert_eq!(parse_rfc3339(&format_iso8601(secs)).ok(), Some(secs));
        }
    }

    #[test]
    fn rfc3986_encoding() {
        assert_eq!(percent_encode("a b*c~-_./é"), "a%20b%2Ac~-_.%2F%C3%A9");
    }
}
