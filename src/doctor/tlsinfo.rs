//! TLS through the tunnel, recording what the server presented so a failed
//! verification can still be explained (issuer, validity, names), and which
//! roots verified it (the platform's, or `--cacert`).

use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::{DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

/// Extra roots and where they came from.
#[derive(Debug)]
struct Extra {
    verifier: Arc<dyn ServerCertVerifier>,
    roots: Vec<CertificateDer<'static>>,
    label: String,
}

/// Verifies against the platform roots first, then with the extra roots, and
/// keeps the presented chain and which roots verified it.
#[derive(Debug)]
pub struct Recording {
    platform: Arc<dyn ServerCertVerifier>,
    extra: Option<Extra>,
    pub chain: Mutex<Vec<CertificateDer<'static>>>,
    /// Human description of the roots that verified the chain.
    pub verified_by: Mutex<Option<String>>,
}

impl Recording {
    /// `label` names where `extra_roots` came from (e.g. `--cacert FILE`).
    pub fn new(extra_roots: &[CertificateDer<'static>], label: &str) -> Result<Arc<Self>, String> {
        crate::upstream::tls::ensure_provider();
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let platform = rustls_platform_verifier::Verifier::new().with_provider(provider.clone());
        let extra = if extra_roots.is_empty() {
            None
        } else {
            let v = rustls_platform_verifier::Verifier::new_with_extra_roots(
                extra_roots.iter().cloned(),
            )
            .map_err(|e| e.to_string())?
            .with_provider(provider);
            Some(Extra {
                verifier: Arc::new(v),
                roots: extra_roots.to_vec(),
                label: label.to_string(),
            })
        };
        Ok(Arc::new(Recording {
            platform: Arc::new(platform),
            extra,
            chain: Mutex::new(Vec::new()),
            verified_by: Mutex::new(None),
        }))
    }

    fn record(&self, by: String) {
        if let Ok(mut v) = self.verified_by.lock() {
            *v = Some(by);
        }
    }
}

/// The subject of the extra root that issued the top of `chain`, if any.
fn issuing_root(chain: &[CertificateDer<'_>], roots: &[CertificateDer<'_>]) -> Option<String> {
    let top = chain.last()?;
    let (_, top) = x509_parser::parse_x509_certificate(top.as_ref()).ok()?;
    roots.iter().find_map(|r| {
        let (_, r) = x509_parser::parse_x509_certificate(r.as_ref()).ok()?;
        (r.subject().as_raw() == top.issuer().as_raw()).then(|| r.subject().to_string())
    })
}

impl ServerCertVerifier for Recording {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut chain = vec![end_entity.clone().into_owned()];
        chain.extend(intermediates.iter().map(|i| i.clone().into_owned()));
        let platform =
            self.platform
                .verify_server_cert(end_entity, intermediates, server_name, ocsp, now);
        let result = match (&platform, &self.extra) {
            (Ok(_), _) => {
                self.record("the platform roots".to_string());
                platform
            }
            (Err(_), Some(x)) => {
                let r = x.verifier.verify_server_cert(
                    end_entity,
                    intermediates,
                    server_name,
                    ocsp,
                    now,
                );
                if r.is_ok() {
                    let root = issuing_root(&chain, &x.roots)
                        .map(|s| format!(" (root {s:?})"))
                        .unwrap_or_default();
                    self.record(format!("{}{root}", x.label));
                }
                r
            }
            (Err(_), None) => platform,
        };
        if let Ok(mut c) = self.chain.lock() {
            *c = chain;
        }
        result
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.platform.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.platform.supported_verify_schemes()
    }
}

/// A certificate, summarised for the report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CertSummary {
    pub subject: String,
    pub issuer: String,
    pub sans: Vec<String>,
    pub not_before: String,
    pub not_after: String,
    /// Seconds until expiry (negative when expired).
    pub expires_in_s: i64,
    /// Seconds until valid (positive when not yet valid).
    pub valid_in_s: i64,
    /// basicConstraints CA:TRUE (a CA certificate used as a server's own).
    pub is_ca: bool,
    /// Subject and issuer are the same name.
    pub self_signed: bool,
}

pub fn summarise(der: &CertificateDer<'_>) -> Option<CertSummary> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let sans = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => d.to_string(),
                    x509_parser::extensions::GeneralName::IPAddress(b) => match b.len() {
                        4 => std::net::Ipv4Addr::new(b[0], b[1], b[2], b[3]).to_string(),
                        16 => {
                            let mut a = [0u8; 16];
                            a.copy_from_slice(b);
                            std::net::Ipv6Addr::from(a).to_string()
                        }
                        _ => "(malformed IP address)".to_string(),
                    },
                    other => other.to_string(),
                })
                .collect()
        })
        .unwrap_or_default();
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let nb = cert.validity().not_before.timestamp();
    let na = cert.validity().not_after.timestamp();
    let is_ca = cert
        .basic_constraints()
        .ok()
        .flatten()
        .map(|b| b.value.ca)
        .unwrap_or(false);
    Some(CertSummary {
        subject: cert.subject().to_string(),
        issuer: cert.issuer().to_string(),
        sans,
        not_before: cert.validity().not_before.to_string(),
        not_after: cert.validity().not_after.to_string(),
        expires_in_s: na - now,
        valid_in_s: nb - now,
        is_ca,
        self_signed: cert.subject().as_raw() == cert.issuer().as_raw(),
    })
}
