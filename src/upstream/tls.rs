//! TLS client configuration: rustls with the platform verifier, so certificate
//! checks match what the operating system trusts, plus optional extra roots
//! (a private CA for an `https://` proxy or a test).

use std::path::Path;
use std::sync::{Arc, OnceLock};

use rustls::ClientConfig;
use rustls_pki_types::CertificateDer;

use super::error::{ConnectError, TlsKind};

/// Installs the process-wide crypto provider once (ring).
pub fn ensure_provider() {
    static ONCE: OnceLock<()> = OnceLock::new();
    ONCE.get_or_init(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Builds a client config trusting the platform roots and `extra` PEM roots.
pub fn client_config(extra: &[CertificateDer<'static>]) -> Result<Arc<ClientConfig>, String> {
    ensure_provider();
    let verifier = if extra.is_empty() {
        rustls_platform_verifier::Verifier::new()
    } else {
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra.iter().cloned())
            .map_err(|e| e.to_string())?
    }
    .with_provider(provider());
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

/// The default platform-verifier config, built once.
pub fn default_client_config() -> Arc<ClientConfig> {
    static CFG: OnceLock<Arc<ClientConfig>> = OnceLock::new();
    CFG.get_or_init(|| {
        client_config(&[]).unwrap_or_else(|_| {
            // Only fails if the provider lacks safe protocol versions, which ring has.
            Arc::new(
                ClientConfig::builder_with_provider(provider())
                    .with_safe_default_protocol_versions()
                    .expect("ring supports TLS 1.2 and 1.3")
                    .with_root_certificates(rustls::RootCertStore::empty())
                    .with_no_client_auth(),
            )
        })
    })
    .clone()
}

/// Reads PEM certificates from a file.
pub fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let data = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut rd = std::io::BufReader::new(&data[..]);
    let certs: Result<Vec<_>, _> = rustls_pemfile_certs(&mut rd);
    let certs = certs.map_err(|e| format!("{}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{}: no PEM certificates found", path.display()));
    }
    Ok(certs)
}

fn rustls_pemfile_certs(
    rd: &mut dyn std::io::BufRead,
) -> Result<Vec<CertificateDer<'static>>, std::io::Error> {
    use rustls_pki_types::pem::PemObject;
    let mut buf = Vec::new();
    rd.read_to_end(&mut buf)?;
    CertificateDer::pem_slice_iter(&buf)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{e:?}")))
}

/// Classifies a rustls handshake error.
pub fn classify(err: &std::io::Error, server: &str, proxy: bool) -> ConnectError {
    let detail = err.to_string();
    let kind = match err
        .get_ref()
        .and_then(|e| e.downcast_ref::<rustls::Error>())
    {
        Some(rustls::Error::InvalidCertificate(c)) => match c {
            rustls::CertificateError::UnknownIssuer
            | rustls::CertificateError::BadSignature
            | rustls::CertificateError::BadEncoding => TlsKind::UnknownIssuer,
            rustls::CertificateError::Expired | rustls::CertificateError::ExpiredContext { .. } => {
                TlsKind::Expired
            }
            rustls::CertificateError::NotValidYet
            | rustls::CertificateError::NotValidYetContext { .. } => TlsKind::NotYetValid,
            rustls::CertificateError::NotValidForName
            | rustls::CertificateError::NotValidForNameContext { .. } => TlsKind::HostnameMismatch,
            rustls::CertificateError::Other(o) => {
                let s = format!("{o:?}").to_ascii_lowercase();
                if s.contains("unknown") || s.contains("issuer") || s.contains("trust") {
                    TlsKind::UnknownIssuer
                } else if s.contains("expired") {
                    TlsKind::Expired
                } else {
                    TlsKind::Other
                }
            }
            _ => TlsKind::Other,
        },
        Some(rustls::Error::AlertReceived(_))
        | Some(rustls::Error::PeerIncompatible(_))
        | Some(rustls::Error::InvalidMessage(_))
        | Some(rustls::Error::PeerMisbehaved(_)) => TlsKind::Protocol,
        _ => {
            if err.kind() == std::io::ErrorKind::UnexpectedEof
                || err.kind() == std::io::ErrorKind::ConnectionReset
            {
                return ConnectError::Reset {
                    phase: if proxy {
                        super::Phase::ProxyTls
                    } else {
                        super::Phase::Tls
                    },
                    proxy,
                };
            }
            TlsKind::Other
        }
    };
    ConnectError::Tls {
        kind,
        server: server.to_string(),
        detail,
        proxy,
    }
}
