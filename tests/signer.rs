//! Tests of the Alibaba Cloud signer: official vectors, a cross-check against an
//! independent Python implementation (tests/signer_ref.py), properties, verify, the
//! gateway error helpers and the CLI.

use std::io::Write;
use std::process::{Command, Stdio};

use base64::Engine as _;
use clap::Parser;
use proptest::prelude::*;
use proxyguard::signer::apigw::{self, ApigwParams, SignatureMethod};
use proxyguard::signer::cli::{run, SignArgs};
use proxyguard::signer::verify::{
    compare_string_to_sign, parse_gateway_error, verify_apigw, GatewayError, VerifyError,
};
use proxyguard::signer::{acs3, percent_encode, rpc, SignError, SignRequest};

const APIGW_VECTOR_SIG: &str = "mylrWQPNif4Aq87MYnBRi/h5tsq1fX4QasZafcDbqjw=";
const APIGW_VECTOR_NONCE: &str = "c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44";

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

fn vector_params() -> ApigwParams {
    ApigwParams {
        app_key: "203753830".into(),
        signature_method: SignatureMethod::HmacSha256,
        stage: None,
        extra_signed_headers: vec![],
        timestamp_ms: Some(1_700_000_000_000),
        nonce: Some(APIGW_VECTOR_NONCE.into()),
    }
}

// ---------------------------------------------------------------- official vectors

#[test]
fn apigw_vector_from_notes() {
    let req = SignRequest::new("GET", "/demo/get?b=2&a=1&empty=")
        .with_header("Accept", "application/json");
    let signed = apigw::sign_detailed(&req, "testsecret", &vector_params()).expect("sign");
    assert_eq!(signed.signature, APIGW_VECTOR_SIG);
    assert_eq!(
        signed.string_to_sign,
        "GET\napplication/json\n\n\n\n\
         x-ca-key:203753830\n\
         x-ca-nonce:c9f15cbf-f4ac-4a6c-b54d-f51abf4b5b44\n\
         x-ca-signature-method:HmacSHA256\n\
         x-ca-timestamp:1700000000000\n\
         /demo/get?a=1&b=2&empty"
    );
    let h = &signed.headers;
    assert_eq!(header(h, "X-Ca-Signature"), Some(APIGW_VECTOR_SIG));
    assert_eq!(header(h, "X-Ca-Key"), Some("203753830"));
    assert_eq!(header(h, "X-Ca-Timestamp"), Some("1700000000000"));
    assert_eq!(header(h, "X-Ca-Nonce"), Some(APIGW_VECTOR_NONCE));
    assert_eq!(header(h, "X-Ca-Signature-Method"), Some("HmacSHA256"));
    assert_eq!(
        header(h, "X-Ca-Signature-Headers"),
        Some("x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp")
    );
    assert_eq!(
        header(h, "Content-MD5"),
        None,
        "GET without body has no MD5"
    );
    assert_eq!(header(h, "X-Ca-Stage"), None);

    // The same through string_to_sign with the headers already on the request.
    let req = req
        .with_header("x-ca-key", "203753830")
        .with_header("x-ca-nonce", APIGW_VECTOR_NONCE)
        .with_header("x-ca-signature-method", "HmacSHA256")
        .with_header("x-ca-timestamp", "1700000000000");
    let names = apigw::signed_header_names(&req, &[]);
    let sts = apigw::string_to_sign(&req, &names);
    assert_eq!(sts, signed.string_to_sign);
    assert_eq!(
        apigw::compute_signature(SignatureMethod::HmacSha256, "testsecret", &sts).expect("mac"),
        APIGW_VECTOR_SIG
    );
}

#[test]
fn rpc_official_vector() {
    let req = SignRequest::new(
        "GET",
        "/?Action=DescribeRegions&Format=XML&Version=2014-05-26",
    );
    let params = rpc::RpcParams {
        access_key_id: "testid".into(),
        timestamp: Some("2016-02-23T12:46:24Z".into()),
        nonce: Some("3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf".into()),
    };
    let signed = rpc::sign_detailed(&req, "testsecret", &params).expect("sign");
    assert_eq!(signed.signature, "OLeaidS1JvxuMvnyHOwuJ+uX5qY=");
    assert_eq!(
        signed.string_to_sign,
        "GET&%2F&AccessKeyId%3Dtestid%26Action%3DDescribeRegions%26Format%3DXML\
         %26SignatureMethod%3DHMAC-SHA1%26SignatureNonce%3D3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf\
         %26SignatureVersion%3D1.0%26Timestamp%3D2016-02-23T12%253A46%253A24Z\
         %26Version%3D2014-05-26"
    );
    let params_out = rpc::sign_detailed(&req, "testsecret", &params)
        .expect("sign")
        .params;
    assert_eq!(params_out.len(), 9);
    assert_eq!(
        params_out.last(),
        Some(&(
            "Signature".to_string(),
            "OLeaidS1JvxuMvnyHOwuJ+uX5qY=".to_string()
        ))
    );
    // An old Signature in the input is dropped, not signed.
    let again = SignRequest::new(
        "GET",
        "/?Signature=old&Action=DescribeRegions&Format=XML&Version=2014-05-26",
    );
    assert_eq!(
        rpc::sign_detailed(&again, "testsecret", &params)
            .expect("sign")
            .signature,
        "OLeaidS1JvxuMvnyHOwuJ+uX5qY="
    );
}

#[test]
fn acs3_official_vector() {
    let req = SignRequest::new(
        "POST",
        "/?ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai",
    )
    .with_header("x-acs-action", "RunInstances")
    .with_header("x-acs-version", "2014-05-26");
    let params = acs3::Acs3Params {
        access_key_id: "YourAccessKeyId".into(),
        timestamp: Some("2023-10-26T10:22:32Z".into()),
        nonce: Some("3156853299f313e23d1673dc12e1703d".into()),
        host: Some("ecs.cn-shanghai.aliyuncs.com".into()),
        security_token: None,
    };
    let signed = acs3::sign_detailed(&req, "YourAccessKeySecret", &params).expect("sign");
    assert_eq!(
        signed.signed_headers,
        "host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version"
    );
    assert_eq!(
        signed.signature,
        "06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    );
    let empty_sha = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    assert!(signed.canonical_request.ends_with(empty_sha));
    let h = &signed.headers;
    assert_eq!(header(h, "x-acs-content-sha256"), Some(empty_sha));
    assert_eq!(header(h, "x-acs-date"), Some("2023-10-26T10:22:32Z"));
    assert_eq!(
        header(h, "x-acs-signature-nonce"),
        Some("3156853299f313e23d1673dc12e1703d")
    );
    assert_eq!(header(h, "host"), Some("ecs.cn-shanghai.aliyuncs.com"));
    assert_eq!(
        header(h, "Authorization"),
        Some(
            "ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;\
             x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,\
             Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
        )
    );
}

// ------------------------------------------------- cross-check with the Python reference

struct Case {
    name: &'static str,
    method: &'static str,
    url: &'static str,
    headers: Vec<(&'static str, &'static str)>,
    body: &'static [u8],
    sig_method: SignatureMethod,
    stage: Option<&'static str>,
    extra: Vec<&'static str>,
}

fn python_reference(case: &Case, secret: &str, params: &ApigwParams) -> serde_json::Value {
    let input = serde_json::json!({
        "secret": secret,
        "app_key": params.app_key,
        "timestamp": params.timestamp_ms,
        "nonce": params.nonce,
        "stage": params.stage,
        "sig_method": params.signature_method.as_str(),
        "extra_signed": case.extra,
        "method": case.method,
        "url": case.url,
        "headers": case.headers,
        "body_b64": base64::engine::general_purpose::STANDARD.encode(case.body),
    });
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/signer_ref.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 is needed for the reference cross-check");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.to_string().as_bytes())
        .expect("write to python");
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "signer_ref.py failed for {}: {}",
        case.name,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("python JSON")
}

#[test]
fn apigw_matches_python_reference() {
    let form = "application/x-www-form-urlencoded; charset=UTF-8";
    let cases = [
        Case {
            name: "notes vector",
            method: "GET",
            url: "/demo/get?b=2&a=1&empty=",
            headers: vec![("Accept", "application/json")],
            body: b"",
            sig_method: SignatureMethod::HmacSha256,
            stage: None,
            extra: vec![],
        },
        Case {
            name: "form body overrides query, repeated keys, empty values, SHA1, stage",
            method: "POST",
            url: "/form/post?z=last&dup=q1&dup=q2&shared=fromquery&bare",
            headers: vec![("Content-Type", form), ("Accept", "application/json")],
            body: b"shared=fromform&f=1&f=2&blank=&sp=a+b%26c",
            sig_method: SignatureMethod::HmacSha1,
            stage: Some("TEST"),
            extra: vec![],
        },
        Case {
            name: "JSON body with Content-MD5, Date, extra signed header",
            method: "POST",
            url: "/json/create?lang=zh",
            headers: vec![
                ("Content-Type", "application/json; charset=utf-8"),
                ("Accept", "application/json"),
                ("Date", "Tue, 14 Nov 2023 22:13:20 GMT"),
                ("X-Custom-Trace", "  abc 123 "),
            ],
            body: br#"{"name":"proxyguard","tags":["a","b"]}"#,
            sig_method: SignatureMethod::HmacSha256,
            stage: Some("RELEASE"),
            extra: vec!["X-Custom-Trace"],
        },
        Case {
            name: "encoded, unicode and plus values, key without =",
            method: "get",
            url: "/enc/%E4%B8%AD?q=a%20b&plus=1+2&u=%E4%B8%AD%E6%96%87&k&amp=%26%3D&Zed=1&alpha=",
            headers: vec![("accept", "*/*")],
            body: b"",
            sig_method: SignatureMethod::HmacSha256,
            stage: None,
            extra: vec![],
        },
        Case {
            name: "binary body without Content-Type, user X-Ca-* headers, SHA1",
            method: "PUT",
            url: "/bin/upload",
            headers: vec![
                ("X-Ca-Request-Mode", "debug"),
                ("x-CA-Custom", "Mixed Case Value"),
                ("User-Agent", "proxyguard-test"),
            ],
            body: &[0u8, 159, 146, 150, 255, 10, 13, 0],
            sig_method: SignatureMethod::HmacSha1,
            stage: Some("PRE"),
            extra: vec!["user-agent"],
        },
        Case {
            name: "form content type but empty body, query only",
            method: "DELETE",
            url: "/items/42?force=true&force=false",
            headers: vec![("Content-Type", "application/x-www-form-urlencoded")],
            body: b"",
            sig_method: SignatureMethod::HmacSha256,
            stage: None,
            extra: vec![],
        },
        Case {
            name: "no parameters at all",
            method: "HEAD",
            url: "/",
            headers: vec![],
            body: b"",
            sig_method: SignatureMethod::HmacSha256,
            stage: None,
            extra: vec![],
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        // Case 0 is the notes vector with its exact parameters; the others vary them.
        let secret = if i == 0 {
            "testsecret".to_string()
        } else {
            format!("secret-{i}-with spaces & symbols")
        };
        let mut req = SignRequest::new(case.method, case.url).with_body(case.body);
        for (k, v) in &case.headers {
            req = req.with_header(*k, *v);
        }
        let params = if i == 0 {
            vector_params()
        } else {
            ApigwParams {
                app_key: format!("20375383{i}"),
                signature_method: case.sig_method,
                stage: case.stage.map(str::to_string),
                extra_signed_headers: case.extra.iter().map(|s| s.to_string()).collect(),
                timestamp_ms: Some(1_700_000_000_000 + i as u64 * 1_234),
                nonce: Some(format!("00000000-0000-4000-8000-00000000000{i}")),
            }
        };
        let ours = apigw::sign_detailed(&req, &secret, &params)
            .unwrap_or_else(|e| panic!("{}: {e}", case.name));
        let reference = python_reference(case, &secret, &params);
        assert_eq!(
            reference["string_to_sign"].as_str(),
            Some(ours.string_to_sign.as_str()),
            "StringToSign differs for case {:?}",
            case.name
        );
        let ref_headers: Vec<(String, String)> =
            serde_json::from_value(reference["headers"].clone()).expect("headers");
        assert_eq!(
            ours.headers, ref_headers,
            "headers differ for {:?}",
            case.name
        );
        if i == 0 {
            assert_eq!(ours.signature, APIGW_VECTOR_SIG);
        }
        // What we sign, we verify.
        let mut signed_req = req.clone();
        signed_req.headers.extend(ours.headers.clone());
        verify_apigw(&signed_req, &secret)
            .unwrap_or_else(|e| panic!("verify failed for {:?}: {e}", case.name));
    }
}

#[test]
fn python_reference_reproduces_notes_vector() {
    // Guards the reference itself: it must agree with the published vector.
    let case = Case {
        name: "vector",
        method: "GET",
        url: "/demo/get?b=2&a=1&empty=",
        headers: vec![("Accept", "application/json")],
        body: b"",
        sig_method: SignatureMethod::HmacSha256,
        stage: None,
        extra: vec![],
    };
    let out = python_reference(&case, "testsecret", &vector_params());
    let headers: Vec<(String, String)> =
        serde_json::from_value(out["headers"].clone()).expect("headers");
    assert_eq!(header(&headers, "X-Ca-Signature"), Some(APIGW_VECTOR_SIG));
}

// ------------------------------------------------------------------------ properties

fn key_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z][a-zA-Z0-9_.~-]{0,7}"
}

fn value_strategy() -> impl Strategy<Value = String> {
    "[a-zA-Z0-9 ._~*+/=&%:-]{0,10}"
}

fn sign_sig(req: &SignRequest, secret: &str) -> String {
    let params = ApigwParams {
        app_key: "appkey".into(),
        timestamp_ms: Some(1_700_000_000_000),
        nonce: Some("nonce-1".into()),
        extra_signed_headers: vec!["X-Extra".into()],
        ..Default::default()
    };
    match apigw::sign_detailed(req, secret, &params) {
        Ok(s) => s.signature,
        Err(e) => panic!("{e}"),
    }
}

fn query_of(pairs: &[(String, String)]) -> String {
    pairs
        .iter()
        .map(|(k, v)| format!("{}={}", percent_encode(k), percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

fn recase(name: &str, mask: &[bool]) -> String {
    name.chars()
        .zip(mask.iter().cycle())
        .map(|(c, up)| {
            if *up {
                c.to_ascii_uppercase()
            } else {
                c.to_ascii_lowercase()
            }
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn query_order_does_not_matter(
        params in prop::collection::btree_map(key_strategy(), value_strategy(), 1..8)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>())
            .prop_shuffle(),
    ) {
        let mut sorted = params.clone();
        sorted.sort();
        let a = SignRequest::new("GET", format!("/p?{}", query_of(&params)))
            .with_header("X-Extra", "1");
        let b = SignRequest::new("GET", format!("/p?{}", query_of(&sorted)))
            .with_header("X-Extra", "1");
        prop_assert_eq!(sign_sig(&a, "s3cret"), sign_sig(&b, "s3cret"));
    }

    #[test]
    fn header_case_and_order_do_not_matter(
        headers in prop::collection::btree_map("[a-z]{1,8}", "[ -~]{0,12}", 0..6)
            .prop_map(|m| m.into_iter()
                .map(|(k, v)| (format!("x-ca-{k}"), v))
                .collect::<Vec<_>>()),
        mask in prop::collection::vec(any::<bool>(), 1..16),
        seed in any::<u64>(),
    ) {
        // Leave out names the signer sets itself.
        let headers: Vec<(String, String)> = headers
            .into_iter()
            .filter(|(k, _)| !matches!(
                k.as_str(),
                "x-ca-key" | "x-ca-nonce" | "x-ca-timestamp" | "x-ca-stage"
            ))
            .collect();
        let mut base = SignRequest::new("POST", "/h?a=1")
            .with_header("Accept", "application/json")
            .with_header("X-Extra", "extra")
            .with_body("{}");
        base.headers.extend(headers.iter().cloned());
        let mut shuffled: Vec<(String, String)> = base
            .headers
            .iter()
            .map(|(k, v)| (recase(k, &mask), v.clone()))
            .collect();
        // Deterministic rotation/reversal from the seed.
        let n = shuffled.len();
        shuffled.rotate_left((seed as usize) % n);
        if seed & 1 == 1 {
            shuffled.reverse();
        }
        let mut other = base.clone();
        other.headers = shuffled;
        prop_assert_eq!(sign_sig(&base, "k"), sign_sig(&other, "k"));
    }

    #[test]
    fn verify_accepts_signed_and_rejects_tampering(
        params in prop::collection::btree_map(key_strategy(), value_strategy(), 0..5)
            .prop_map(|m| m.into_iter().collect::<Vec<_>>()),
        body in prop::collection::vec(any::<u8>(), 1..64),
        form in any::<bool>(),
        sha1 in any::<bool>(),
        secret in "[!-~]{1,20}",
    ) {
        let mut req = SignRequest::new("POST", format!("/v?{}", query_of(&params)));
        if form {
            req = req
                .with_header("Content-Type", "application/x-www-form-urlencoded")
                .with_body(format!("fk={}", percent_encode(&String::from_utf8_lossy(&body))));
        } else {
            req = req
                .with_header("Content-Type", "application/octet-stream")
                .with_body(body.clone());
        }
        let p = ApigwParams {
            app_key: "app".into(),
            signature_method: if sha1 { SignatureMethod::HmacSha1 } else { SignatureMethod::HmacSha256 },
            ..Default::default()
        };
        let added = apigw::sign(&req, &secret, &p).expect("sign");
        let mut signed = req.clone();
        signed.headers.extend(added);
        prop_assert!(verify_apigw(&signed, &secret).is_ok());

        let mut wrong = secret.clone();
        wrong.push('x');
        let wrong_secret = matches!(
            verify_apigw(&signed, &wrong),
            Err(VerifyError::SignatureMismatch { .. })
        );
        prop_assert!(wrong_secret, "wrong secret accepted");

        let mut tampered_body = signed.clone();
        tampered_body.body.push(b'!');
        if form {
            tampered_body.body.extend_from_slice(b"&injected=1");
        }
        prop_assert!(verify_apigw(&tampered_body, &secret).is_err());

        let mut tampered_query = signed.clone();
        tampered_query.url.push_str(if params.is_empty() { "?zz=1" } else { "&zz=1" });
        let query_rejected = matches!(
            verify_apigw(&tampered_query, &secret),
            Err(VerifyError::SignatureMismatch { .. })
        );
        prop_assert!(query_rejected, "tampered query accepted");
    }

    #[test]
    fn compare_finds_first_difference(pos_seed in any::<usize>(), hash_form in any::<bool>()) {
        let req = SignRequest::new("GET", "/demo/get?b=2&a=1&empty=")
            .with_header("Accept", "application/json");
        let ours = apigw::sign_detailed(&req, "testsecret", &vector_params())
            .expect("sign")
            .string_to_sign;
        let chars: Vec<char> = ours.chars().collect();
        let candidates: Vec<usize> = (0..chars.len()).filter(|i| chars[*i] != '\n').collect();
        let pos = candidates[pos_seed % candidates.len()];
        let mut changed = chars.clone();
        let repl = if chars[pos] == 'Z' { 'Y' } else { 'Z' };
        changed[pos] = repl;
        let changed: String = changed.into_iter().collect();
        let server = if hash_form { changed.replace('\n', "#") } else { changed.replace('\n', "") };
        let msg = format!("Invalid Signature, Server StringToSign:{server}");
        let m = compare_string_to_sign(&ours, &msg).expect("a mismatch");
        prop_assert_eq!(m.ours_position, pos);
        prop_assert_eq!(m.ours_char, Some(chars[pos]));
        prop_assert_eq!(m.server_char, Some(repl));
        prop_assert_eq!(m.ours_line, 1 + chars[..pos].iter().filter(|c| **c == '\n').count());
    }
}

// ------------------------------------------------------------- verify and error helpers

fn signed_vector_request() -> SignRequest {
    let req = SignRequest::new("POST", "/demo/post?b=2&a=1")
        .with_header("Accept", "application/json")
        .with_header("Content-Type", "application/json")
        .with_body(r#"{"x":1}"#);
    let added = apigw::sign(&req, "testsecret", &vector_params()).expect("sign");
    let mut signed = req;
    signed.headers.extend(added);
    signed
}

#[test]
fn verify_specific_rejections() {
    let signed = signed_vector_request();
    assert!(verify_apigw(&signed, "testsecret").is_ok());

    let mut body = signed.clone();
    body.body = br#"{"x":2}"#.to_vec();
    assert!(matches!(
        verify_apigw(&body, "testsecret"),
        Err(VerifyError::ContentMd5Mismatch { .. })
    ));

    let mut no_md5 = signed.clone();
    no_md5.remove_header("content-md5");
    assert!(matches!(
        verify_apigw(&no_md5, "testsecret"),
        Err(VerifyError::BodyNotCovered)
    ));

    let mut no_sig = signed.clone();
    no_sig.remove_header("x-ca-signature");
    assert!(matches!(
        verify_apigw(&no_sig, "testsecret"),
        Err(VerifyError::MissingHeader("X-Ca-Signature"))
    ));

    let mut garbage = signed.clone();
    garbage.set_header("X-Ca-Signature", "not base64!!");
    assert!(matches!(
        verify_apigw(&garbage, "testsecret"),
        Err(VerifyError::MalformedSignature)
    ));

    let mut nonce = signed.clone();
    nonce.set_header("X-Ca-Nonce", "another");
    assert!(matches!(
        verify_apigw(&nonce, "testsecret"),
        Err(VerifyError::SignatureMismatch { .. })
    ));

    let mut method = signed.clone();
    method.method = "PUT".into();
    assert!(verify_apigw(&method, "testsecret").is_err());

    let mut bad_alg = signed;
    bad_alg.set_header("X-Ca-Signature-Method", "HmacMD5");
    assert!(matches!(
        verify_apigw(&bad_alg, "testsecret"),
        Err(VerifyError::Sign(SignError::UnsupportedSignatureMethod(_)))
    ));
}

#[test]
fn compare_string_to_sign_with_server_forms() {
    let ours = "GET\napplication/json\n\n\n\nx-ca-key:1\n/demo/get?a=1";
    // Identical in both server renderings.
    assert_eq!(
        compare_string_to_sign(
            ours,
            "Invalid Signature, Server StringToSign:GET#application/json####x-ca-key:1#/demo/get?a=1"
        ),
        None
    );
    assert_eq!(
        compare_string_to_sign(ours, "GETapplication/jsonx-ca-key:1/demo/get?a=1"),
        None
    );
    // The classic: the client sent Accept */*.
    let m = compare_string_to_sign(
        ours,
        "Invalid Signature, Server StringToSign:GET#*/*####x-ca-key:1#/demo/get?a=1",
    )
    .expect("mismatch");
    assert_eq!(m.ours_position, 4);
    assert_eq!(m.ours_line, 2);
    assert_eq!(m.ours_char, Some('a'));
    assert_eq!(m.server_char, Some('*'));
    assert_eq!(m.server_position, 4);
    assert!(
        m.ours_context.starts_with("GET\\n[a]pplication"),
        "{}",
        m.ours_context
    );
    assert!(
        m.server_context.starts_with("GET#[*]/*"),
        "{}",
        m.server_context
    );
    assert!(m.to_string().contains("line 2"));
    // Server shorter (dropped-newline form).
    let m = compare_string_to_sign(ours, "GETapplication/jsonx-ca-key:1/demo/get").expect("m");
    assert_eq!(m.ours_position, ours.len() - 4);
    assert_eq!(m.ours_char, Some('?'));
    assert_eq!(m.server_char, None);
}

#[test]
fn gateway_error_feeds_compare() {
    let v =
        "Invalid Signature, Server StringToSign:GET#application/json####x-ca-key:1#/demo/get?a=2";
    let GatewayError::InvalidSignature {
        server_sts: Some(sts),
    } = parse_gateway_error(v)
    else {
        panic!("not parsed as InvalidSignature");
    };
    let m = compare_string_to_sign(
        "GET\napplication/json\n\n\n\nx-ca-key:1\n/demo/get?a=1",
        &sts,
    )
    .expect("mismatch");
    assert_eq!(m.ours_char, Some('1'));
    assert_eq!(m.server_char, Some('2'));
    assert_eq!(parse_gateway_error("Nonce Used"), GatewayError::NonceUsed);
    assert_eq!(
        parse_gateway_error("Timestamp Expired"),
        GatewayError::TimestampExpired
    );
}

// ------------------------------------------------------------------------------- CLI

#[derive(Parser, Debug)]
struct TestCli {
    #[command(flatten)]
    sign: SignArgs,
}

fn cli(args: &[&str]) -> SignArgs {
    let mut argv = vec!["proxyguard-sign"];
    argv.extend_from_slice(args);
    TestCli::try_parse_from(argv)
        .unwrap_or_else(|e| panic!("{e}"))
        .sign
}

const APIGW_VECTOR_ARGS: [&str; 14] = [
    "--scheme",
    "apigw",
    "--key",
    "203753830",
    "--header",
    "Accept: application/json",
    "--timestamp",
    "1700000000000",
    "--nonce",
    APIGW_VECTOR_NONCE,
    "--signature-method",
    "HmacSHA256",
    "--secret-env",
    "PG_TEST_SECRET_APIGW",
];

#[test]
fn cli_apigw_default_explain_and_curl() {
    std::env::set_var("PG_TEST_SECRET_APIGW", "testsecret");
    let mut args: Vec<&str> = APIGW_VECTOR_ARGS.to_vec();
    args.push("http://gw.example.test/demo/get?b=2&a=1&empty=");
    let out = run(&cli(&args)).expect("run");
    assert_eq!(
        out,
        format!(
            "X-Ca-Key: 203753830\nX-Ca-Timestamp: 1700000000000\nX-Ca-Nonce: {APIGW_VECTOR_NONCE}\n\
             X-Ca-Signature-Method: HmacSHA256\n\
             X-Ca-Signature-Headers: x-ca-key,x-ca-nonce,x-ca-signature-method,x-ca-timestamp\n\
             X-Ca-Signature: {APIGW_VECTOR_SIG}"
        )
    );

    let mut explain = args.clone();
    explain.insert(0, "--explain");
    let out = run(&cli(&explain)).expect("run");
    assert!(out.contains("GET\\n\napplication/json\\n\n\\n\n\\n\n\\n\nx-ca-key:203753830\\n\n"));
    assert!(out.contains("x-ca-timestamp:1700000000000\\n\n/demo/get?a=1&b=2&empty\n"));
    assert!(out.contains(&format!("Signature: {APIGW_VECTOR_SIG}")));
    assert!(out.contains("GET#application/json####x-ca-key:203753830#"));

    let mut curl = args.clone();
    curl.insert(0, "--curl");
    let out = run(&cli(&curl)).expect("run");
    assert!(
        out.starts_with("curl -X GET -H 'Accept: application/json' "),
        "{out}"
    );
    assert!(out.contains(&format!("-H 'X-Ca-Signature: {APIGW_VECTOR_SIG}'")));
    assert!(
        out.ends_with(" 'http://gw.example.test/demo/get?b=2&a=1&empty='"),
        "{out}"
    );
    assert!(!out.contains("'Accept:'"), "Accept was given explicitly");

    // A path-only URL works for headers but not for curl.
    let mut path_only = APIGW_VECTOR_ARGS.to_vec();
    path_only.push("/demo/get?b=2&a=1&empty=");
    assert!(run(&cli(&path_only))
        .expect("run")
        .contains(APIGW_VECTOR_SIG));
    path_only.push("--curl");
    assert!(matches!(run(&cli(&path_only)), Err(SignError::Usage(_))));
}

#[test]
fn cli_curl_suppresses_curl_defaults_and_quotes() {
    std::env::set_var("PG_TEST_SECRET_CURL", "s");
    let dir = tempfile::tempdir().expect("tempdir");
    let body = dir.path().join("it's body.json");
    std::fs::write(&body, "{\"a\":1}").expect("write");
    let body_s = body.to_str().expect("utf8 path");
    let out = run(&cli(&[
        "--scheme",
        "apigw",
        "--key",
        "k",
        "--secret-env",
        "PG_TEST_SECRET_CURL",
        "--method",
        "post",
        "--body-file",
        body_s,
        "--header",
        "X-Note: it's here",
        "--curl",
        "https://gw.example.test/p",
    ]))
    .expect("run");
    assert!(out.starts_with("curl -X POST "), "{out}");
    assert!(out.contains("-H 'X-Note: it'\\''s here'"), "{out}");
    assert!(out.contains("-H Accept: "), "{out}");
    assert!(out.contains("-H Content-Type: "), "{out}");
    assert!(
        out.contains("-H 'Content-MD5: u2y1xo30ZSlByvZSo2by2A=='"),
        "{out}"
    );
    assert!(out.contains(&format!(
        "--data-binary '@{}'",
        body_s.replace('\'', "'\\''")
    )));
}

#[test]
fn cli_rpc_and_acs3_vectors() {
    std::env::set_var("PG_TEST_SECRET_RPC", "testsecret");
    let out = run(&cli(&[
        "--scheme",
        "rpc",
        "--key",
        "testid",
        "--secret-env",
        "PG_TEST_SECRET_RPC",
        "--timestamp",
        "2016-02-23T20:46:24+08:00",
        "--nonce",
        "3ee8c1b8-83d3-44af-a94f-4e0ad82fd6cf",
        "https://ecs.aliyuncs.com/?Action=DescribeRegions&Format=XML&Version=2014-05-26",
    ]))
    .expect("run");
    assert!(out.starts_with("https://ecs.aliyuncs.com/?AccessKeyId=testid&Action=DescribeRegions"));
    assert!(
        out.contains("&Timestamp=2016-02-23T12%3A46%3A24Z&"),
        "{out}"
    );
    assert!(
        out.ends_with("&Signature=OLeaidS1JvxuMvnyHOwuJ%2BuX5qY%3D"),
        "{out}"
    );

    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "YourAccessKeySecret\n").expect("write");
    let secret_s = secret.to_str().expect("utf8");
    let acs3_args = [
        "--scheme",
        "acs3",
        "--key",
        "YourAccessKeyId",
        "--secret-file",
        secret_s,
        "--method",
        "POST",
        "-H",
        "x-acs-action: RunInstances",
        "-H",
        "x-acs-version: 2014-05-26",
        "--timestamp",
        "2023-10-26T10:22:32Z",
        "--nonce",
        "3156853299f313e23d1673dc12e1703d",
        "https://ecs.cn-shanghai.aliyuncs.com/?ImageId=win2019_1809_x64_dtc_zh-cn_40G_alibase_20230811.vhd&RegionId=cn-shanghai",
    ];
    let out = run(&cli(&acs3_args)).expect("run");
    assert!(out.contains(
        "Authorization: ACS3-HMAC-SHA256 Credential=YourAccessKeyId,SignedHeaders=host;x-acs-action;x-acs-content-sha256;x-acs-date;x-acs-signature-nonce;x-acs-version,Signature=06563a9e1b43f5dfe96b81484da74bceab24a1d853912eee15083a6f0f3283c0"
    ), "{out}");
    assert!(out.contains("x-acs-date: 2023-10-26T10:22:32Z"));
    let mut explain = acs3_args.to_vec();
    explain.push("--explain");
    let out = run(&cli(&explain)).expect("run");
    assert!(out.contains("POST\\n\n/\\n\nImageId="), "{out}");
    assert!(out.contains("ACS3-HMAC-SHA256\\n\n"), "{out}");
}

#[test]
fn cli_errors_are_clear() {
    std::env::remove_var("PG_TEST_SECRET_SURELY_UNSET");
    let base = [
        "--scheme",
        "apigw",
        "--key",
        "k",
        "--secret-env",
        "PG_TEST_SECRET_SURELY_UNSET",
        "/x",
    ];
    let err = run(&cli(&base)).expect_err("missing env var");
    assert!(
        err.to_string().contains("PG_TEST_SECRET_SURELY_UNSET"),
        "{err}"
    );

    // No secret source at all is rejected by clap.
    assert!(TestCli::try_parse_from(["x", "--scheme", "apigw", "--key", "k", "/x"]).is_err());
    // A secret on the command line is not an option.
    assert!(TestCli::try_parse_from([
        "x", "--scheme", "apigw", "--key", "k", "--secret", "s", "/x"
    ])
    .is_err());

    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("nope");
    let err = run(&cli(&[
        "--scheme",
        "apigw",
        "--key",
        "k",
        "--secret-file",
        missing.to_str().expect("utf8"),
        "/x",
    ]))
    .expect_err("missing file");
    assert!(matches!(err, SignError::SecretFile { .. }));
    assert!(err.to_string().contains("nope"));

    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").expect("write");
    let err = run(&cli(&[
        "--scheme",
        "apigw",
        "--key",
        "k",
        "--secret-file",
        empty.to_str().expect("utf8"),
        "/x",
    ]))
    .expect_err("empty secret");
    assert!(matches!(err, SignError::EmptySecret(_)));

    std::env::set_var("PG_TEST_SECRET_ERRS", "s");
    let with = |extra: &[&str]| {
        let mut v = vec!["--key", "k", "--secret-env", "PG_TEST_SECRET_ERRS"];
        v.extend_from_slice(extra);
        run(&cli(&v))
    };
    assert!(matches!(
        with(&["--scheme", "apigw", "--timestamp", "1700000000", "/x"]),
        Err(SignError::InvalidTimestamp { .. })
    ));
    assert!(matches!(
        with(&["--scheme", "rpc", "--timestamp", "1700000000000", "/x"]),
        Err(SignError::InvalidTimestamp { .. })
    ));
    assert!(matches!(
        with(&["--scheme", "apigw", "--signature-method", "HmacMD5", "/x"]),
        Err(SignError::UnsupportedSignatureMethod(_))
    ));
    assert!(matches!(
        with(&["--scheme", "acs3", "--stage", "TEST", "https://h/"]),
        Err(SignError::Usage(_))
    ));
    assert!(matches!(
        with(&["--scheme", "apigw", "--header", "NoColon", "/x"]),
        Err(SignError::InvalidHeader(_))
    ));
    assert!(matches!(
        with(&["--scheme", "acs3", "/no-host"]),
        Err(SignError::MissingHeader(_))
    ));
    assert!(matches!(
        with(&["--scheme", "apigw", "ftp://h/x"]),
        Err(SignError::InvalidUrl { .. })
    ));
}
