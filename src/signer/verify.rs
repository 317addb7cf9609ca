//! Checking API Gateway signatures and reading the gateway's error messages.

use std::fmt;

use base64::Engine as _;
use hmac::{Hmac, Mac};

use super::apigw::{content_md5, needs_content_md5, string_to_sign, SignatureMethod};
use super::{SignError, SignRequest};

/// Why [`verify_apigw`] rejected a request.
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the request has no {0} header")]
    MissingHeader(&'static str),
    #[error("X-Ca-Signature is not valid base64")]
    MalformedSignature,
    #[error(transparent)]
    Sign(#[from] SignError),
    #[error("Content-MD5 {header} does not match the body (computed {computed})")]
    ContentMd5Mismatch { header: String, computed: String },
    #[error("the body is not covered by the signature (non-form body without Content-MD5)")]
    BodyNotCovered,
    #[error("signature mismatch; our StringToSign is {string_to_sign:?}")]
    SignatureMismatch { string_to_sign: String },
}

/// Recompute the signature of a signed request (with the signed header list from its own
/// `X-Ca-Signature-Headers`) and compare it with `X-Ca-Signature` in constant time.
///
/// Also checks that `Content-MD5` (when present) matches the body, and refuses a
/// non-empty non-form body without `Content-MD5`, since its content would be unsigned.
pub fn verify_apigw(request: &SignRequest, secret: &str) -> Result<(), VerifyError> {
    let given = request
        .header("x-ca-signature")
        .ok_or(VerifyError::MissingHeader("X-Ca-Signature"))?;
    let given = base64::engine::general_purpose::STANDARD
        .decode(given.trim())
        .map_err(|_| VerifyError::MalformedSignature)?;
    let method: SignatureMethod = match request.header("x-ca-signature-method") {
        Some(m) => m.parse()?,
        None => SignatureMethod::HmacSha256,
    };
    match request.header("content-md5") {
        Some(h) => {
            let computed = content_md5(&request.body);
            if h.trim() != computed {
                return Err(VerifyError::ContentMd5Mismatch {
                    header: h.trim().to_string(),
                    computed,
                });
            }
        }
        None if needs_content_md5(request) => return Err(VerifyError::BodyNotCovered),
        None => {}
    }
    let names: Vec<String> = request
        .header("x-ca-signature-headers")
        .unwrap_or("")
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    let sts = string_to_sign(request, &names);
    let ok = match method {
        SignatureMethod::HmacSha256 => {
            let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes())
                .map_err(|_| SignError::Crypto)?;
            mac.update(sts.as_bytes());
            mac.verify_slice(&given).is_ok()
        }
        SignatureMethod::HmacSha1 => {
            let mut mac = Hmac::<sha1::Sha1>::new_from_slice(secret.as_bytes())
                .map_err(|_| SignError::Crypto)?;
            mac.update(sts.as_bytes());
            mac.verify_slice(&given).is_ok()
        }
    };
    if ok {
        Ok(())
    } else {
        Err(VerifyError::SignatureMismatch {
            string_to_sign: sts,
        })
    }
}

/// Where our StringToSign and the one reported by the gateway first differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mismatch {
    /// Character index in our StringToSign (newlines included).
    pub ours_position: usize,
    /// 1-based line of our StringToSign at that position.
    pub ours_line: usize,
    /// Character index in the server's text (after the `Server StringToSign:` prefix).
    pub server_position: usize,
    /// The differing characters (`None` past the end).
    pub ours_char: Option<char>,
    pub server_char: Option<char>,
    /// Context around the difference, newlines shown as `\n`; `[…]` marks the position.
    pub ours_context: String,
    pub server_context: String,
}

impl fmt::Display for Mismatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "StringToSign differs at character {} (line {}): ours {:?} vs server {:?}\n  ours:   {}\n  server: {}",
            self.ours_position,
            self.ours_line,
            self.ours_char,
            self.server_char,
            self.ours_context,
            self.server_context
        )
    }
}

const SERVER_PREFIX: &str = "server stringtosign:";
const CONTEXT: usize = 24;

fn strip_server_prefix(s: &str) -> &str {
    let lower = s.to_ascii_lowercase();
    match lower.find(SERVER_PREFIX) {
        // ASCII lower-casing keeps byte offsets, so the index is valid in `s`.
        Some(i) => s.get(i + SERVER_PREFIX.len()..).unwrap_or(""),
        None => s,
    }
}

/// Characters kept for comparison, with their index in the original text: newlines and
/// the `#` the gateway uses in their place are dropped on both sides.
fn significant(s: &str) -> Vec<(usize, char)> {
    s.chars()
        .enumerate()
        .filter(|(_, c)| !matches!(c, '\n' | '\r' | '#'))
        .collect()
}

fn context(chars: &[char], pos: usize) -> String {
    let start = pos.saturating_sub(CONTEXT);
    let end = (pos + CONTEXT).min(chars.len());
    let vis = |cs: &[char]| -> String {
        cs.iter()
            .map(|c| match c {
                '\n' => "\\n".to_string(),
                '\r' => "\\r".to_string(),
                c => c.to_string(),
            })
            .collect()
    };
    let before = vis(&chars[start..pos.min(chars.len())]);
    let at = chars.get(pos).map(|c| vis(&[*c])).unwrap_or_default();
    let after = if pos < chars.len() {
        vis(&chars[pos + 1..end.max(pos + 1)])
    } else {
        String::new()
    };
    format!(
        "{}{before}[{at}]{after}{}",
        if start > 0 { "…" } else { "" },
        if end < chars.len() { "…" } else { "" }
    )
}

/// Compare our StringToSign with the one from `X-Ca-Error-Message: Invalid Signature,
/// Server StringToSign:…` (the whole header value or just the reported text). Newlines
/// may be shown as `#` or dropped by the gateway, so both sides are compared without
/// newlines and `#`. Returns `None` when they agree.
pub fn compare_string_to_sign(ours: &str, server_reported: &str) -> Option<Mismatch> {
    // Gateways quote the text in backticks: `GET#…`.
    let server = strip_server_prefix(server_reported)
        .trim()
        .trim_matches('`');
    let a = significant(ours);
    let b = significant(server);
    let i = a
        .iter()
        .zip(b.iter())
        .position(|((_, x), (_, y))| x != y)
        .unwrap_or(a.len().min(b.len()));
    if i == a.len() && i == b.len() {
        return None;
    }
    let ours_chars: Vec<char> = ours.chars().collect();
    let server_chars: Vec<char> = server.chars().collect();
    let ours_position = a.get(i).map(|(p, _)| *p).unwrap_or(ours_chars.len());
    let server_position = b.get(i).map(|(p, _)| *p).unwrap_or(server_chars.len());
    Some(Mismatch {
        ours_position,
        ours_line: 1 + ours_chars[..ours_position]
            .iter()
            .filter(|c| **c == '\n')
            .count(),
        server_position,
        ours_char: a.get(i).map(|(_, c)| *c),
        server_char: b.get(i).map(|(_, c)| *c),
        ours_context: context(&ours_chars, ours_position),
        server_context: context(&server_chars, server_position),
    })
}

/// An `X-Ca-Error-Message` from the API Gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GatewayError {
    /// `Invalid Signature, Server StringToSign:…`; the server's text when reported.
    InvalidSignature {
        server_sts: Option<String>,
    },
    TimestampExpired,
    InvalidTimestamp,
    NonceUsed,
    InvalidContentMd5,
    InvalidAppKey,
    Other(String),
}

/// Classify an `X-Ca-Error-Message` header value.
pub fn parse_gateway_error(header_value: &str) -> GatewayError {
    let v = header_value.trim();
    let lower = v.to_ascii_lowercase();
    if lower.starts_with("invalid signature") {
        let server_sts = lower
            .find(SERVER_PREFIX)
            .and_then(|i| v.get(i + SERVER_PREFIX.len()..))
            .map(str::to_string);
        return GatewayError::InvalidSignature { server_sts };
    }
    let table = [
        ("timestamp expired", GatewayError::TimestampExpired),
        ("invalid timestamp", GatewayError::InvalidTimestamp),
        ("nonce used", GatewayError::NonceUsed),
        ("invalid content-md5", GatewayError::InvalidContentMd5),
        ("invalid appkey", GatewayError::InvalidAppKey),
    ];
    for (prefix, err) in table {
        if lower.starts_with(prefix) {
            return err;
        }
    }
    GatewayError::Other(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gateway_errors() {
        assert_eq!(
            parse_gateway_error("Invalid Signature, Server StringToSign:GET#*/*###/x"),
            GatewayError::InvalidSignature {
                server_sts: Some("GET#*/*###/x".into())
            }
        );
        assert_eq!(
            parse_gateway_error("Invalid Signature"),
            GatewayError::InvalidSignature { server_sts: None }
        );
        assert_eq!(
            parse_gateway_error(" Timestamp Expired "),
            GatewayError::TimestampExpired
        );
        assert_eq!(
            parse_gateway_error("Invalid Timestamp"),
            GatewayError::InvalidTimestamp
        );
        assert_eq!(parse_gateway_error("Nonce Used"), GatewayError::NonceUsed);
        assert_eq!(
            parse_gateway_error("Invalid Content-MD5"),
            GatewayError::InvalidContentMd5
        );
        assert_eq!(
            parse_gateway_error("Invalid AppKey"),
            GatewayError::InvalidAppKey
        );
        assert_eq!(
            parse_gateway_error("Throttled by APP Flow Control"),
            GatewayError::Other("Throttled by APP Flow Control".into())
        );
    }

    #[test]
    fn prefix_mismatch_and_equal() {
        assert_eq!(compare_string_to_sign("GET\n/a", "GET#/a"), None);
        assert_eq!(compare_string_to_sign("GET\n/a", "GET/a"), None);
        let m = compare_string_to_sign("GET\n/ab", "GET#/a");
        let m = match m {
            Some(m) => m,
            None => panic!("expected a mismatch"),
        };
        assert_eq!(m.ours_position, 6);
        assert_eq!(m.ours_char, Some('b'));
        assert_eq!(m.server_char, None);
        assert_eq!(m.ours_line, 2);
    }
}
