//! OpenAPI RPC signature v1 (HMAC-SHA1).
//!
//! ```text
//! StringToSign = METHOD "&" pe("/") "&" pe(CanonicalQuery)
//! CanonicalQuery = pe(k) "=" pe(v) for every parameter, sorted, joined by "&"
//! Signature = base64(HMAC-SHA1(secret + "&", StringToSign))
//! ```
//! `pe` is RFC 3986 percent-encoding keeping only `A-Za-z0-9-_.~`.

use base64::Engine as _;

pub use super::canonical_query;
use super::{
    check_access_key, hmac_sha1, nonce_or, now_iso8601, percent_encode, SignError, SignRequest,
};

/// What [`sign_detailed`] needs besides the request and the secret.
#[derive(Debug, Clone, Default)]
pub struct RpcParams {
    pub access_key_id: String,
    /// `Timestamp` as `YYYY-MM-DDTHH:MM:SSZ` (UTC); now when `None`.
    pub timestamp: Option<String>,
    /// `SignatureNonce`; a fresh UUID v4 when `None`.
    pub nonce: Option<String>,
}

/// Result of [`sign_detailed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RpcSigned {
    /// All parameters, sorted, `Signature` last.
    pub params: Vec<(String, String)>,
    pub canonical_query: String,
    pub string_to_sign: String,
    pub signature: String,
}

impl RpcSigned {
    /// The parameters as a percent-encoded query string (no leading `?`).
    pub fn query_string(&self) -> String {
        encode_pairs(&self.params)
    }
}

fn encode_pairs(params: &[(String, String)]) -> String {
    params
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// `METHOD&%2F&pe(canonical_query)`.
pub fn string_to_sign(method: &str, params: &[(String, String)]) -> String {
    format!(
        "{}&{}&{}",
        method.trim().to_ascii_uppercase(),
        percent_encode("/"),
        percent_encode(&canonical_query(params))
    )
}

/// base64(HMAC-SHA1(secret + "&", string_to_sign)).
pub fn compute_signature(secret: &str, string_to_sign: &str) -> Result<String, SignError> {
    let key = format!("{secret}&");
    let mac = hmac_sha1(key.as_bytes(), string_to_sign.as_bytes())?;
    Ok(base64::engine::general_purpose::STANDARD.encode(mac))
}

/// Sign the parameters of `req` (its query, plus its form body for form requests).
///
/// `AccessKeyId`, `SignatureMethod`, `SignatureVersion`, `SignatureNonce` and `Timestamp`
/// are set (replacing any given); an existing `Signature` is dropped. `Action`, `Version`,
/// `Format`, … come from the request.
pub fn sign_detailed(
    req: &SignRequest,
    secret: &str,
    params: &RpcParams,
) -> Result<RpcSigned, SignError> {
    check_access_key(&params.access_key_id, secret)?;
    let nonce = nonce_or(params.nonce.as_deref(), || uuid::Uuid::new_v4().to_string())?;
    let timestamp = params.timestamp.clone().unwrap_or_else(now_iso8601);
    let fixed: [(&str, String); 5] = [
        ("AccessKeyId", params.access_key_id.trim().to_string()),
        ("SignatureMethod", "HMAC-SHA1".to_string()),
        ("SignatureVersion", "1.0".to_string()),
        ("SignatureNonce", nonce),
        ("Timestamp", timestamp),
    ];
    let mut all: Vec<(String, String)> = req
        .query_pairs()
        .into_iter()
        .chain(req.form_pairs())
        .filter(|(k, _)| k != "Signature" && !fixed.iter().any(|(f, _)| f == k))
        .collect();
    all.extend(fixed.into_iter().map(|(k, v)| (k.to_string(), v)));
    all.sort();
    let canonical_query = canonical_query(&all);
    let string_to_sign = string_to_sign(&req.method, &all);
    let signature = compute_signature(secret, &string_to_sign)?;
    all.push(("Signature".into(), signature.clone()));
    Ok(RpcSigned {
        params: all,
        canonical_query,
        string_to_sign,
        signature,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_vector() {
        let req = SignRequest::new(
            "GET",
            "/?Action=DescribeRegions&Format=XML&Version=2014-05-26",
        );
        let signed = sign_detailed(
            &req,
            "testsecret",
            &RpcParams {
                access_key_id: "testid".into(),
                timestamp: Some("2016-02-23T12:46:24Z".into()),
                nonce: Some("3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf".into()),
            },
        );
        let signed = match signed {
            Ok(s) => s,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(signed.signature, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
        assert!(signed
            .string_to_sign
            .starts_with("GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions"));
        assert!(signed
            .query_string()
            .ends_with("&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"));
    }

    #[test]
    fn encoding_of_special_characters() {
        let p = vec![
            ("b".to_string(), "x y*z".to_string()),
            ("a".into(), "~".into()),
        ];
        assert_eq!(canonical_query(&p), "a=~&b=x%20y%2Az");
    }
}
