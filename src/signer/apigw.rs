//! API Gateway app authentication (`X-Ca-*` headers).
//!
//! ```text
//! StringToSign = METHOD "\n" Accept "\n" Content-MD5 "\n" Content-Type "\n" Date "\n"
//!                Headers Url
//! ```
//! Headers are `name:value\n` for every signed header (lower-cased names, sorted);
//! Url is the path, then `?` and the query and form parameters merged, sorted by key
//! (decoded values, `k=v` joined by `&`, an empty value written as the bare key, the
//! first value of a repeated key, a form value winning over a query value).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use base64::Engine as _;
use md5::{Digest, Md5};

use super::{
    check_credentials, hmac_sha1, hmac_sha256, nonce_or, now_epoch_ms, SignError, SignRequest,
};

/// Headers that are part of the fixed StringToSign lines or carry the signature itself:
/// never listed as signed headers.
pub const NEVER_SIGNED: [&str; 6] = [
    "x-ca-signature",
    "x-ca-signature-headers",
    "accept",
    "content-md5",
    "content-type",
    "date",
];

/// `X-Ca-Signature-Method`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum SignatureMethod {
    #[default]
    HmacSha256,
    HmacSha1,
}

impl SignatureMethod {
    /// The header value: `HmacSHA256` or `HmacSHA1`.
    pub fn as_str(self) -> &'static str {
        match self {
            SignatureMethod::HmacSha256 => "HmacSHA256",
            SignatureMethod::HmacSha1 => "HmacSHA1",
        }
    }
}

impl fmt::Display for SignatureMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SignatureMethod {
    type Err = SignError;
    /// Case-insensitive `HmacSHA256` / `HmacSHA1`.
    fn from_str(s: &str) -> Result<Self, SignError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "hmacsha256" => Ok(SignatureMethod::HmacSha256),
            "hmacsha1" => Ok(SignatureMethod::HmacSha1),
            _ => Err(SignError::UnsupportedSignatureMethod(s.to_string())),
        }
    }
}

/// What [`sign`] needs besides the request and the secret.
#[derive(Debug, Clone, Default)]
pub struct ApigwParams {
    /// The AppKey (`X-Ca-Key`).
    pub app_key: String,
    pub signature_method: SignatureMethod,
    /// `X-Ca-Stage` (TEST / PRE / RELEASE); not sent when `None` (gateway default RELEASE).
    pub stage: Option<String>,
    /// Further headers to sign besides the `X-Ca-*` ones (must be present in the request).
    pub extra_signed_headers: Vec<String>,
    /// `X-Ca-Timestamp` in epoch milliseconds; now when `None`.
    pub timestamp_ms: Option<u64>,
    /// `X-Ca-Nonce`; a fresh UUID v4 when `None`.
    pub nonce: Option<String>,
}

/// Result of [`sign_detailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApigwSigned {
    /// Headers to add to the request, in a stable order, `X-Ca-Signature` last.
    pub headers: Vec<(String, String)>,
    /// Lower-cased, sorted signed header names (the `X-Ca-Signature-Headers` list).
    pub signed_headers: Vec<String>,
    pub string_to_sign: String,
    pub signature: String,
}

/// base64(md5(body)), the `Content-MD5` value.
pub fn content_md5(body: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(Md5::digest(body))
}

/// Whether signing adds `Content-MD5`: a non-empty body that is not a form.
pub fn needs_content_md5(req: &SignRequest) -> bool {
    !req.body.is_empty() && !req.is_form()
}

/// The header names the demo SDKs sign for `req`: every `X-Ca-*` header except
/// `X-Ca-Signature` and `X-Ca-Signature-Headers`, plus `extra` — lower-cased, sorted,
/// deduplicated, without [`NEVER_SIGNED`] names.
pub fn signed_header_names(req: &SignRequest, extra: &[String]) -> Vec<String> {
    let names = req
        .headers
        .iter()
        .map(|(k, _)| k.trim().to_ascii_lowercase())
        .filter(|k| k.starts_with("x-ca-"))
        .chain(extra.iter().map(|k| k.trim().to_ascii_lowercase()));
    normalise_names(names)
}

fn normalise_names(names: impl Iterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = names
        .filter(|k| !k.is_empty() && !NEVER_SIGNED.contains(&k.as_str()))
        .collect();
    v.sort();
    v.dedup();
    v
}

/// The StringToSign of `req` with the given signed header names (case-insensitive; a
/// name missing from the request is signed with an empty value).
pub fn string_to_sign(req: &SignRequest, signed_headers: &[String]) -> String {
    let h = |name: &str| req.header(name).map(str::trim).unwrap_or("");
    let mut s = String::new();
    s.push_str(&req.method.trim().to_ascii_uppercase());
    s.push('\n');
    for fixed in ["accept", "content-md5", "content-type", "date"] {
        s.push_str(h(fixed));
        s.push('\n');
    }
    for name in normalise_names(signed_headers.iter().map(|n| n.trim().to_ascii_lowercase())) {
        s.push_str(&name);
        s.push(':');
        s.push_str(h(&name));
        s.push('\n');
    }
    s.push_str(&url_to_sign(req));
    s
}

/// The Url part: path, then `?` and the merged, sorted parameters if there are any.
pub fn url_to_sign(req: &SignRequest) -> String {
    let mut params: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.query_pairs() {
        if !k.is_empty() {
            params.entry(k).or_insert(v);
        }
    }
    let mut form: BTreeMap<String, String> = BTreeMap::new();
    for (k, v) in req.form_pairs() {
        if !k.is_empty() {
            form.entry(k).or_insert(v);
        }
    }
    params.extend(form);
    let mut out = req.path().to_string();
    if !params.is_empty() {
        out.push('?');
        let joined: Vec<String> = params
            .into_iter()
            .map(|(k, v)| if v.is_empty() { k } else { format!("{k}={v}") })
            .collect();
        out.push_str(&joined.join("&"));
    }
    out
}

/// base64(HMAC(secret, string_to_sign)).
pub fn compute_signature(
    method: SignatureMethod,
    secret: &str,
    string_to_sign: &str,
) -> Result<String, SignError> {
    let mac = match method {
        SignatureMethod::HmacSha256 => hmac_sha256(secret.as_bytes(), string_to_sign.as_bytes())?,
        SignatureMethod::HmacSha1 => hmac_sha1(secret.as_bytes(), string_to_sign.as_bytes())?,
    };
    Ok(base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Sign `req`, returning the headers to add together with the StringToSign.
///
/// Existing `X-Ca-Key`/`-Timestamp`/`-Nonce`/`-Signature-Method`/`-Stage`/`-Signature*`
/// headers of `req` are replaced by the values from `params`; any other `X-Ca-*` header of
/// `req` is signed. `Content-MD5` is computed for non-empty non-form bodies.
pub fn sign_detailed(
    req: &SignRequest,
    secret: &str,
    params: &ApigwParams,
) -> Result<ApigwSigned, SignError> {
    check_credentials(&params.app_key, "AppKey (X-Ca-Key)", secret, "app secret")?;
    req.check_headers()?;
    let mut work = req.clone();
    for name in [
        "x-ca-signature",
        "x-ca-signature-headers",
        "x-ca-stage",
        "content-md5",
    ] {
        work.remove_header(name);
    }
    let timestamp = params.timestamp_ms.unwrap_or_else(now_epoch_ms).to_string();
    let nonce = nonce_or(params.nonce.as_deref(), || uuid::Uuid::new_v4().to_string())?;
    let mut added: Vec<(String, String)> = vec![
        ("X-Ca-Key".into(), params.app_key.trim().to_string()),
        ("X-Ca-Timestamp".into(), timestamp),
        ("X-Ca-Nonce".into(), nonce),
        (
            "X-Ca-Signature-Method".into(),
            params.signature_method.as_str().into(),
        ),
    ];
    if let Some(stage) = &params.stage {
        added.push(("X-Ca-Stage".into(), stage.trim().to_string()));
    }
    if needs_content_md5(&work) {
        added.push(("Content-MD5".into(), content_md5(&work.body)));
    }
    work.set_headers_checked(&added)?;
    for extra in &params.extra_signed_headers {
        let lower = extra.trim().to_ascii_lowercase();
        if NEVER_SIGNED.contains(&lower.as_str()) {
            return Err(SignError::Usage(format!(
                "header {extra} cannot be a signed header: it has its own line in the StringToSign or carries the signature"
            )));
        }
        if work.header(&lower).is_none() {
            return Err(SignError::MissingHeader(extra.clone()));
        }
    }
    let signed_headers = signed_header_names(&work, &params.extra_signed_headers);
    let string_to_sign = string_to_sign(&work, &signed_headers);
    let signature = compute_signature(params.signature_method, secret, &string_to_sign)?;
    added.push(("X-Ca-Signature-Headers".into(), signed_headers.join(",")));
    added.push(("X-Ca-Signature".into(), signature.clone()));
    Ok(ApigwSigned {
        headers: added,
        signed_headers,
        string_to_sign,
        signature,
    })
}

/// Sign `req`; returns the headers to add (`X-Ca-*`, `Content-MD5` when applicable).
pub fn sign(
    req: &SignRequest,
    secret: &str,
    params: &ApigwParams,
) -> Result<Vec<(String, String)>, SignError> {
    sign_detailed(req, secret, params).map(|s| s.headers)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vector_request() -> SignRequest {
        SignRequest::new("GET", "/demo/get?b=2&a=1&empty=")
            .with_header("Accept", "application/json")
            .with_header("X-Ca-Key", "203753830")
            .with_header("X-Ca-Nonce", "c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44")
            .with_header("X-Ca-Signature-Method", "HmacSHA256")
            .with_header("X-Ca-Timestamp", "1700000000000")
    }

    #[test]
    fn vector_string_to_sign() {
        let req = vector_request();
        let names = signed_header_names(&req, &[]);
        let sts = string_to_sign(&req, &names);
        assert_eq!(
            sts,
            "GET\napplication/json\n\n\n\nx-ca-key:203753830\nx-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44\nx-ca-signature-method:HmacSHA256\nx-ca-timestamp:1700000000000\n/demo/get?a=1&b=2&empty"
        );
        assert_eq!(
            compute_signature(SignatureMethod::HmacSha256, "testsecret", &sts).ok(),
            Some("mylrWQPNif4Aq87MYnBRi/h5tsq1fX4QasZafcDbqjw=".to_string())
        );
    }

    #[test]
    fn url_merging_rules() {
        let req = SignRequest::new("POST", "/p?z=q&a=1&a=2&f=query&sp=a%20b")
            .with_header(
                "Content-Type",
                "application/x-www-form-urlencoded; charset=UTF-8",
            )
            .with_body("f=form&f=second&e=&m=x%2By");
        assert_eq!(url_to_sign(&req), "/p?a=1&e&f=form&m=x+y&sp=a b&z=q");
        let json = SignRequest::new("POST", "/p")
            .with_header("Content-Type", "application/json")
            .with_body("f=form");
        assert_eq!(url_to_sign(&json), "/p");
        assert!(needs_content_md5(&json));
        assert!(!needs_content_md5(&req));
    }

    #[test]
    fn never_signed_are_rejected_as_extras() {
        let req = vector_request();
        let params = ApigwParams {
            app_key: "k".into(),
            extra_signed_headers: vec!["Accept".into()],
            ..Default::default()
        };
        assert!(matches!(sign(&req, "s", &params), Err(SignError::Usage(_))));
        let params = ApigwParams {
            app_key: "k".into(),
            extra_signed_headers: vec!["X-Missing".into()],
            ..Default::default()
        };
        assert!(matches!(
            sign(&req, "s", &params),
            Err(SignError::MissingHeader(_))
        ));
    }

    #[test]
    fn content_md5_of_body() {
        assert_eq!(content_md5(b""), "1B2M2Y8AsgTpgAmY7PhCfg==");
        assert_eq!(content_md5(b"{\"a\":1}"), "u2y1xo30ZSlByvZSo2by2A==");
    }
}
