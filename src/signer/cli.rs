//! `proxyguard sign`: print the headers (or URL) that sign a request.
//!
//! Secrets are read only from an environment variable (`--secret-env VAR`) or a file
//! (`--secret-file F`, trailing newlines trimmed), never from the command line.

use std::path::PathBuf;

use super::{acs3, apigw, format_iso8601, parse_rfc3339, rpc, SignError, SignRequest};

/// Signature scheme.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// API Gateway app authentication (X-Ca-* headers)
    Apigw,
    /// OpenAPI RPC signature v1 (Signature query parameter, HMAC-SHA1)
    Rpc,
    /// OpenAPI V3 (Authorization: ACS3-HMAC-SHA256)
    Acs3,
}

/// `--shell` of `sign --curl`: which shell the printed command is for.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CurlShell {
    /// POSIX sh, bash, zsh (single quotes)
    #[default]
    Sh,
    /// PowerShell (`curl.exe`, single quotes with '' inside)
    Powershell,
}

/// Arguments of `proxyguard sign`.
#[derive(clap::Args, Debug, Clone)]
pub struct SignArgs {
    /// Signature scheme
    #[arg(long, value_enum)]
    pub scheme: Scheme,
    /// AppKey (apigw) or AccessKeyId (rpc, acs3)
    #[arg(long, value_name = "KEY")]
    pub key: String,
    /// Read the secret from this environment variable
    #[arg(
        long,
        value_name = "VAR",
        conflicts_with = "secret_file",
        required_unless_present = "secret_file"
    )]
    pub secret_env: Option<String>,
    /// Read the secret from this file (trailing newlines are trimmed)
    #[arg(long, value_name = "FILE")]
    pub secret_file: Option<PathBuf>,
    /// HTTP method
    #[arg(long, default_value = "GET")]
    pub method: String,
    /// Request header, repeatable: --header 'Accept: application/json'
    #[arg(long = "header", short = 'H', value_name = "NAME: VALUE")]
    pub headers: Vec<String>,
    /// apigw: also sign this (non X-Ca-*) header, repeatable; it must be given with --header
    #[arg(long = "sign-header", value_name = "NAME")]
    pub sign_headers: Vec<String>,
    /// Read the request body from this file
    #[arg(long, value_name = "FILE")]
    pub body_file: Option<PathBuf>,
    /// Fixed timestamp: epoch milliseconds for apigw; RFC 3339 (e.g. 2016-02-23T12:46:24Z)
    /// for rpc and acs3. Default: now
    #[arg(long, value_name = "T")]
    pub timestamp: Option<String>,
    /// Fixed nonce. Default: a fresh UUID v4. Never reuse one within 15 minutes
    #[arg(long, value_name = "N")]
    pub nonce: Option<String>,
    /// apigw: X-Ca-Stage (TEST, PRE, RELEASE)
    #[arg(long, value_name = "S")]
    pub stage: Option<String>,
    /// apigw: HmacSHA256 (default) or HmacSHA1
    #[arg(long, value_name = "METHOD")]
    pub signature_method: Option<String>,
    /// Print a ready-to-run curl command
    #[arg(long, conflicts_with = "explain")]
    pub curl: bool,
    /// Quote the --curl command for this shell
    #[arg(long, value_enum, default_value = "sh", requires = "curl")]
    pub shell: CurlShell,
    /// Print the StringToSign (line ends shown as \n) and the signature
    #[arg(long)]
    pub explain: bool,

    /// apigw: compare our StringToSign with the one the gateway reported
    /// (the `X-Ca-Error-Message: Invalid Signature, Server StringToSign:…`
    /// value, newlines as `#` or dropped) and show the first difference.
    #[arg(long, value_name = "TEXT", conflicts_with_all = ["curl", "explain"])]
    pub compare_server: Option<String>,
    /// Request URL: http(s)://host/path?query (a bare /path?query is accepted for apigw
    /// and rpc without --curl)
    #[arg(value_name = "URL")]
    pub url: String,
}

/// The parsed target: origin (`scheme://host[:port]`) if a full URL was given, the host
/// (with a non-default port) and the path+query.
struct Target {
    origin: Option<String>,
    host: Option<String>,
    path_and_query: String,
}

fn parse_target(raw: &str) -> Result<Target, SignError> {
    let raw = raw.trim();
    if raw.starts_with('/') {
        return Ok(Target {
            origin: None,
            host: None,
            path_and_query: raw.to_string(),
        });
    }
    let bad = |reason: String| SignError::InvalidUrl {
        url: raw.to_string(),
        reason,
    };
    let u = url::Url::parse(raw).map_err(|e| bad(e.to_string()))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(bad("only http and https URLs can be signed".into()));
    }
    let host_name = u
        .host_str()
        .ok_or_else(|| bad("the URL has no host".into()))?;
    let host = match u.port() {
        Some(p) => format!("{host_name}:{p}"),
        None => host_name.to_string(),
    };
    let mut path_and_query = u.path().to_string();
    if let Some(q) = u.query() {
        path_and_query.push('?');
        path_and_query.push_str(q);
    }
    Ok(Target {
        origin: Some(format!("{}://{host}", u.scheme())),
        host: Some(host),
        path_and_query,
    })
}

fn parse_header(raw: &str) -> Result<(String, String), SignError> {
    let (name, value) = raw
        .split_once(':')
        .ok_or_else(|| SignError::InvalidHeader(raw.to_string()))?;
    let name = name.trim();
    let valid_name = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b));
    if !valid_name || value.contains(['\r', '\n']) {
        return Err(SignError::InvalidHeader(raw.to_string()));
    }
    Ok((name.to_string(), value.trim().to_string()))
}

fn load_secret(args: &SignArgs) -> Result<String, SignError> {
    let (secret, source) = match (&args.secret_env, &args.secret_file) {
        (Some(_), Some(_)) => {
            return Err(SignError::Usage(
                "give only one of --secret-env and --secret-file".into(),
            ))
        }
        (None, None) => {
            return Err(SignError::Usage(
                "no secret given: use --secret-env VAR or --secret-file FILE (secrets are never taken from the command line)".into(),
            ))
        }
        (Some(var), None) => match std::env::var(var) {
            Ok(v) => (v, format!("environment variable {var}")),
            Err(std::env::VarError::NotPresent) => {
                return Err(SignError::MissingEnvVar(var.clone()))
            }
            Err(std::env::VarError::NotUnicode(_)) => {
                return Err(SignError::EnvVarNotUnicode(var.clone()))
            }
        },
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path).map_err(|source| SignError::SecretFile {
                path: path.clone(),
                source,
            })?;
            (
                text.trim_end_matches(['\n', '\r']).to_string(),
                format!("file {}", path.display()),
            )
        }
    };
    if secret.is_empty() {
        return Err(SignError::EmptySecret(source));
    }
    Ok(secret)
}

fn apigw_timestamp(t: &str) -> Result<u64, SignError> {
    let t = t.trim();
    if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
        let ms: u64 = t.parse().map_err(|_| SignError::InvalidTimestamp {
            value: t.to_string(),
            reason: "number too large".into(),
        })?;
        if ms < 100_000_000_000 {
            return Err(SignError::InvalidTimestamp {
                value: t.to_string(),
                reason: "looks like epoch seconds; apigw wants epoch milliseconds (13 digits)"
                    .into(),
            });
        }
        return Ok(ms);
    }
    match parse_rfc3339(t) {
        Ok(secs) if secs >= 0 => Ok(secs as u64 * 1000),
        _ => Err(SignError::InvalidTimestamp {
            value: t.to_string(),
            reason: "apigw expects epoch milliseconds (e.g. 1700000000000) or RFC 3339".into(),
        }),
    }
}

fn iso_timestamp(t: &str) -> Result<String, SignError> {
    parse_rfc3339(t)
        .map(format_iso8601)
        .map_err(|_| SignError::InvalidTimestamp {
            value: t.to_string(),
            reason: "rpc and acs3 expect RFC 3339, e.g. 2016-02-23T12:46:24Z".into(),
        })
}

/// Quote for PowerShell: single quotes (no `$` expansion), `'` written as `''`.
pub fn powershell_quote(s: &str) -> String {
    single_quote(s, b"-_./:=%+", "''")
}

/// Quote for a POSIX shell: single quotes, `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    single_quote(s, b"-_./:=@%+,", "'\\''")
}

/// `s` itself when it is non-empty and only ASCII alphanumerics and `plain`
/// bytes; else `s` in single quotes, each `'` inside written as `quote`.
fn single_quote(s: &str, plain: &[u8], quote: &str) -> String {
    if !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || plain.contains(&b))
    {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', quote))
    }
}

/// Show a multi-line string with a visible `\n` at each line end.
pub fn visible_newlines(s: &str) -> String {
    s.replace('\n', "\\n\n")
}

fn header_lines(headers: &[(String, String)]) -> String {
    headers
        .iter()
        .map(|(k, v)| format!("{k}: {v}"))
        .collect::<Vec<_>>()
        .join("\n")
}

struct Output<'a> {
    args: &'a SignArgs,
    req: &'a SignRequest,
    target: &'a Target,
}

impl Output<'_> {
    fn curl(&self, url: &str, added: &[(String, String)], suppress_accept: bool) -> String {
        let method = &self.req.method;
        // PowerShell 5 aliases `curl` to Invoke-WebRequest: name the program.
        let (program, shell_quote): (&str, fn(&str) -> String) = match self.args.shell {
            CurlShell::Sh => ("curl", shell_quote),
            CurlShell::Powershell => ("curl.exe", powershell_quote),
        };
        let mut parts: Vec<String> = vec![program.into()];
        if method == "HEAD" {
            parts.push("--head".into());
        } else {
            parts.push("-X".into());
            parts.push(shell_quote(method));
        }
        for (k, v) in self.req.headers.iter().chain(added) {
            parts.push("-H".into());
            parts.push(shell_quote(&format!("{k}: {v}")));
        }
        // curl sends `Accept: */*` unless told otherwise, and a form Content-Type with
        // --data-binary: both would change what the server signs.
        if suppress_accept && self.req.header("accept").is_none() {
            parts.push("-H".into());
            parts.push(shell_quote("Accept:"));
        }
        if let Some(body) = &self.args.body_file {
            if self.req.header("content-type").is_none() {
                parts.push("-H".into());
                parts.push(shell_quote("Content-Type:"));
            }
            parts.push("--data-binary".into());
            parts.push(shell_quote(&format!("@{}", body.display())));
        }
        parts.push(shell_quote(url));
        parts.join(" ")
    }

    fn full_url(&self, path_and_query: &str) -> Result<String, SignError> {
        match (&self.target.origin, self.req.header("host")) {
            (Some(origin), _) => Ok(format!("{origin}{path_and_query}")),
            (None, Some(host)) => Ok(format!("http://{}{path_and_query}", host.trim())),
            (None, None) => Err(SignError::Usage(
                "--curl needs a full URL (http(s)://host/path) or a Host header".into(),
            )),
        }
    }
}

/// Run `proxyguard sign`; returns the text to print (no trailing newline).
///
/// Default: `Name: value` lines of the headers to add (for rpc: the signed URL);
/// `--curl`: a shell-quoted curl command; `--explain`: the StringToSign with visible
/// line ends, the signature and the headers.
pub fn run(args: &SignArgs) -> Result<String, SignError> {
    let secret = load_secret(args)?;
    let target = parse_target(&args.url)?;
    let req = build_request(args, &target)?;
    reject_apigw_only_flags(args)?;
    let out = Output {
        args,
        req: &req,
        target: &target,
    };
    match args.scheme {
        Scheme::Apigw => out.apigw(&secret),
        Scheme::Rpc => out.rpc(&secret),
        Scheme::Acs3 => out.acs3(&secret),
    }
}

/// The request as given: method, path and query, `--header`s and the body file.
fn build_request(args: &SignArgs, target: &Target) -> Result<SignRequest, SignError> {
    let mut req = SignRequest::new(
        args.method.trim().to_ascii_uppercase(),
        target.path_and_query.clone(),
    );
    for h in &args.headers {
        req.headers.push(parse_header(h)?);
    }
    if let Some(path) = &args.body_file {
        req.body = std::fs::read(path).map_err(|source| SignError::BodyFile {
            path: path.clone(),
            source,
        })?;
    }
    Ok(req)
}

/// `--stage`, `--signature-method` and `--sign-header` mean nothing to rpc and acs3.
fn reject_apigw_only_flags(args: &SignArgs) -> Result<(), SignError> {
    if args.scheme == Scheme::Apigw {
        return Ok(());
    }
    let only_apigw = [
        ("--stage", args.stage.is_some()),
        ("--signature-method", args.signature_method.is_some()),
        ("--sign-header", !args.sign_headers.is_empty()),
    ];
    match only_apigw.iter().find(|(_, set)| *set) {
        Some((flag, _)) => Err(SignError::Usage(format!(
            "{flag} only applies to --scheme apigw"
        ))),
        None => Ok(()),
    }
}

/// `--compare-server`: where our StringToSign and the gateway's part.
fn compare_with_server(ours: &str, server: &str) -> String {
    match super::verify::compare_string_to_sign(ours, server) {
        None => format!(
            "StringToSign matches the server's.\nOurs (newlines as #): {}\nIf the gateway still rejects the signature, the AppSecret differs.",
            ours.replace('\n', "#")
        ),
        Some(m) => format!(
            "StringToSign differs at line {} (our position {}, server position {}): ours {:?}, server {:?}\n  ours:   {}\n  server: {}\nOurs in full (newlines as #): {}",
            m.ours_line,
            m.ours_position,
            m.server_position,
            m.ours_char,
            m.server_char,
            m.ours_context,
            m.server_context,
            ours.replace('\n', "#")
        ),
    }
}

impl Output<'_> {
    fn apigw(&self, secret: &str) -> Result<String, SignError> {
        let args = self.args;
        let params = apigw::ApigwParams {
            app_key: args.key.clone(),
            signature_method: match &args.signature_method {
                Some(m) => m.parse()?,
                None => apigw::SignatureMethod::HmacSha256,
            },
            stage: args.stage.clone(),
            extra_signed_headers: args.sign_headers.clone(),
            timestamp_ms: args.timestamp.as_deref().map(apigw_timestamp).transpose()?,
            nonce: args.nonce.clone(),
        };
        let signed = apigw::sign_detailed(self.req, secret, &params)?;
        if let Some(server) = &args.compare_server {
            return Ok(compare_with_server(&signed.string_to_sign, server));
        }
        if args.curl {
            let url = self.full_url(&self.req.url)?;
            Ok(self.curl(&url, &signed.headers, true))
        } else if args.explain {
            Ok(format!(
                "Scheme: apigw ({})\nStringToSign (each line end shown as \\n):\n{}\n\nAs the gateway reports it (newlines as #):\n{}\n\nSignature: {}\n\nHeaders to add:\n{}",
                params.signature_method,
                visible_newlines(&signed.string_to_sign),
                signed.string_to_sign.replace('\n', "#"),
                signed.signature,
                header_lines(&signed.headers)
            ))
        } else {
            Ok(header_lines(&signed.headers))
        }
    }

    fn rpc(&self, secret: &str) -> Result<String, SignError> {
        let args = self.args;
        let params = rpc::RpcParams {
            access_key_id: args.key.clone(),
            timestamp: args.timestamp.as_deref().map(iso_timestamp).transpose()?,
            nonce: args.nonce.clone(),
        };
        let signed = rpc::sign_detailed(self.req, secret, &params)?;
        let path_and_query = format!("{}?{}", self.req.path(), signed.query_string());
        let url = match &self.target.origin {
            Some(origin) => format!("{origin}{path_and_query}"),
            None => path_and_query.clone(),
        };
        if args.curl {
            let url = self.full_url(&path_and_query)?;
            Ok(self.curl(&url, &[], false))
        } else if args.explain {
            Ok(format!(
                "Scheme: rpc (HMAC-SHA1, key = secret + \"&\")\nCanonicalQuery:\n{}\n\nStringToSign:\n{}\n\nSignature: {}\n\nSigned URL:\n{url}",
                signed.canonical_query, signed.string_to_sign, signed.signature
            ))
        } else {
            Ok(url)
        }
    }

    fn acs3(&self, secret: &str) -> Result<String, SignError> {
        let args = self.args;
        let params = acs3::Acs3Params {
            access_key_id: args.key.clone(),
            timestamp: args.timestamp.as_deref().map(iso_timestamp).transpose()?,
            nonce: args.nonce.clone(),
            host: self.target.host.clone(),
            security_token: None,
        };
        let signed = acs3::sign_detailed(self.req, secret, &params)?;
        let add = &signed.headers;
        if args.curl {
            let url = self.full_url(&self.req.url)?;
            Ok(self.curl(&url, add, false))
        } else if args.explain {
            Ok(format!(
                "Scheme: acs3 (ACS3-HMAC-SHA256)\nCanonicalRequest (each line end shown as \\n):\n{}\n\nStringToSign (each line end shown as \\n):\n{}\n\nSignature: {}\n\nHeaders to add:\n{}",
                visible_newlines(&signed.canonical_request),
                visible_newlines(&signed.string_to_sign),
                signed.signature,
                header_lines(add)
            ))
        } else {
            Ok(header_lines(add))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quoting() {
        assert_eq!(shell_quote("abc"), "abc");
        assert_eq!(powershell_quote("a'b $x"), "'a''b $x'");
        assert_eq!(powershell_quote("@body.json"), "'@body.json'");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("x=1&y=2"), "'x=1&y=2'");
    }

    #[test]
    fn headers_parse() {
        assert_eq!(
            parse_header("Accept:  application/json ").ok(),
            Some(("Accept".into(), "application/json".into()))
        );
        assert!(parse_header("no colon").is_err());
        assert!(parse_header(": empty name").is_err());
        assert!(parse_header("Bad Name: x").is_err());
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            apigw_timestamp("1700000000000").ok(),
            Some(1_700_000_000_000)
        );
        assert_eq!(
            apigw_timestamp("2023-11-14T22:13:20Z").ok(),
            Some(1_700_000_000_000)
        );
        assert!(apigw_timestamp("1700000000").is_err());
        assert!(apigw_timestamp("yesterday").is_err());
        assert_eq!(
            iso_timestamp("2016-02-23T20:46:24+08:00").ok(),
            Some("2016-02-23T12:46:24Z".into())
        );
        assert!(iso_timestamp("1456231584").is_err());
    }
}
