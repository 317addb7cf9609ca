//! OpenAPI V3 signature (`ACS3-HMAC-SHA256`).
//!
//! ```text
//! CanonicalRequest = METHOD "\n" CanonicalURI "\n" CanonicalQuery "\n"
//!                    CanonicalHeaders "\n" SignedHeaders "\n" hex(sha256(body))
//! StringToSign     = "ACS3-HMAC-SHA256\n" hex(sha256(CanonicalRequest))
//! Signature        = hex(HMAC-SHA256(secret, StringToSign))
//! Authorization    = ACS3-HMAC-SHA256 Credential=<id>,SignedHeaders=<names>,Signature=<sig>
//! ```
//! Signed headers: `host`, `content-type` (if present) and every `x-acs-*` header.

use sha2::{Digest, Sha256};

use super::{
    canonical_query, check_access_key, hmac_sha256, nonce_or, now_iso8601, percent_encode,
    SignError, SignRequest,
};

pub const ALGORITHM: &str = "ACS3-HMAC-SHA256";

/// What [`sign_detailed`] needs besides the request and the secret.
#[derive(Debug, Clone, Default)]
pub struct Acs3Params {
    pub access_key_id: String,
    /// `x-acs-date` as `YYYY-MM-DDTHH:MM:SSZ` (UTC); now when `None`.
    pub timestamp: Option<String>,
    /// `x-acs-signature-nonce`; a fresh UUID v4 when `None`.
    pub nonce: Option<String>,
    /// `host`; taken from the request's `Host` header when `None`.
    pub host: Option<String>,
    /// `x-acs-security-token` for STS credentials.
    pub security_token: Option<String>,
}

/// Result of [`sign_detailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acs3Signed {
    /// Headers to add (`host`, `x-acs-*`, `Authorization` last).
    pub headers: Vec<(String, String)>,
    pub canonical_request: String,
    /// `;`-separated signed header names.
    pub signed_headers: String,
    pub string_to_sign: String,
    pub signature: String,
}

/// The path, each segment percent-decoded then RFC 3986-encoded; `/` when empty.
pub fn canonical_uri(path: &str) -> String {
    if path.is_empty() {
        return "/".into();
    }
    path.split('/')
        .map(|seg| percent_encode(&percent_encoding::percent_decode_str(seg).decode_utf8_lossy()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Canonical request of `req` (which must already carry all headers to sign) and the
/// `;`-joined signed header names.
pub fn canonical_request(req: &SignRequest) -> (String, String) {
    let mut headers: Vec<(String, String)> = Vec::new();
    for (k, v) in &req.headers {
        let k = k.trim().to_ascii_lowercase();
        let signed = k == "host" || k == "content-type" || k.starts_with("x-acs-");
        if signed && !headers.iter().any(|(n, _)| *n == k) {
            headers.push((k, v.trim().to_string()));
        }
    }
    headers.sort();
    let canonical_headers: String = headers.iter().map(|(k, v)| format!("{k}:{v}\n")).collect();
    let signed_headers = headers
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let body_hash = req
        .header("x-acs-content-sha256")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|| hex::encode(Sha256::digest(&req.body)));
    let cr = format!(
        "{}\n{}\n{}\n{}\n{}\n{}",
        req.method.trim().to_ascii_uppercase(),
        canonical_uri(req.path()),
        canonical_query(&req.query_pairs()),
        canonical_headers,
        signed_headers,
        body_hash
    );
    (cr, signed_headers)
}

/// Sign `req`, returning the headers to add together with the intermediate strings.
pub fn sign_detailed(
    req: &SignRequest,
    secret: &str,
    params: &Acs3Params,
) -> Result<Acs3Signed, SignError> {
    check_access_key(&params.access_key_id, secret)?;
    req.check_headers()?;
    let host = match (&params.host, req.header("host")) {
        (Some(h), _) => h.trim().to_string(),
        (None, Some(h)) => h.trim().to_string(),
        (None, None) => return Err(SignError::MissingHeader("host".into())),
    };
    if host.is_empty() {
        return Err(SignError::MissingHeader("host".into()));
    }
    let nonce = nonce_or(params.nonce.as_deref(), || {
        uuid::Uuid::new_v4().simple().to_string()
    })?;
    let mut added: Vec<(String, String)> = vec![
        ("host".into(), host),
        (
            "x-acs-date".into(),
            params.timestamp.clone().unwrap_or_else(now_iso8601),
        ),
        ("x-acs-signature-nonce".into(), nonce),
        (
            "x-acs-content-sha256".into(),
            hex::encode(Sha256::digest(&req.body)),
        ),
    ];
    if let Some(token) = &params.security_token {
        added.push(("x-acs-security-token".into(), token.trim().to_string()));
    }
    let mut work = req.clone();
    work.remove_header("authorization");
    work.set_headers_checked(&added)?;
    let (canonical_request, signed_headers) = canonical_request(&work);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}",
        hex::encode(Sha256::digest(canonical_request.as_bytes()))
    );
    let signature = hex::encode(hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes())?);
    added.push((
        "Authorization".into(),
        format!(
            "{ALGORITHM} Credential={},SignedHeaders={signed_headers},Signature={signature}",
            params.access_key_id.trim()
        ),
    ));
    Ok(Acs3Signed {
        headers: added,
        canonical_request,
        signed_headers,
        string_to_sign,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_uri_encoding() {
        assert_eq!(canonical_uri(""), "/");
        assert_eq!(canonical_uri("/"), "/");
        assert_eq!(canonical_uri("/a b/c%20d/e*"), "/a%20b/c%20d/e%2A");
    }

    #[test]
    fn missing_host_is_an_error() {
        let req = SignRequest::new("GET", "/");
        let p = Acs3Params {
            access_key_id: "id".into(),
            ..Default::default()
        };
        assert!(matches!(
            sign_detailed(&req, "s", &p),
            Err(SignError::MissingHeader(h)) if h == "host"
        ));
    }
}
