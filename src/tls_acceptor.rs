//! The server side of TLS for our own listeners: a certificate chain and
//! key loaded from PEM files into a rustls `ServerConfig`, held behind an
//! `ArcSwap` so a reload (SIGHUP, `POST /reload`) can replace it without
//! touching live connections. A reload that fails keeps the old
//! certificate and says why.
//!
//! Used by the forward listeners (`[[listen]] protocol = "https"` or
//! `"mixed"` with `cert`/`key`); reusable by any listener that needs TLS:
//! [`ServerTls::load`] with the ALPN protocols it speaks, then
//! [`ServerTls::accept`] per connection and [`ServerTls::reload`] on reload.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;

/// ALPN for a listener that speaks HTTP/1.1 only.
pub const ALPN_HTTP11: &[&[u8]] = &[b"http/1.1"];

/// The first byte of a TLS record carrying a handshake (the ClientHello).
pub const TLS_HANDSHAKE_BYTE: u8 = 0x16;

/// The PEM files of one listener's certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// Certificate chain, leaf first.
    pub cert: PathBuf,
    /// The leaf's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: PathBuf,
}

/// Why a certificate and key cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsSetupError {
    #[error("cannot read the {what} file {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: no certificate in the file (expected a PEM block -----BEGIN CERTIFICATE-----)", path.display())]
    NoCertificate { path: PathBuf },
    #[error("{}: malformed PEM in the {what} file: {detail}", path.display())]
    BadPem {
        what: &'static str,
        path: PathBuf,
        detail: String,
    },
    #[error("{}: no private key in the file (expected a PEM block -----BEGIN PRIVATE KEY----- or an RSA/EC private key)", path.display())]
    NoKey { path: PathBuf },
    #[error("the private key in {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch { cert: PathBuf, key: PathBuf },
    #[error("cannot use the certificate {} with the key {}: {detail}", cert.display(), key.display())]
    Unusable {
        cert: PathBuf,
        key: PathBuf,
        detail: String,
    },
}

impl TlsSetupError {
    /// True when the key file (rather than the certificate) is at fault.
    pub fn is_key_problem(&self) -> bool {
        match self {
            TlsSetupError::Read { what, .. } | TlsSetupError::BadPem { what, .. } => *what == "key",
            TlsSetupError::NoKey { .. } | TlsSetupError::KeyMismatch { .. } => true,
            _ => false,
        }
    }
}

fn read(what: &'static str, path: &Path) -> Result<Vec<u8>, TlsSetupError> {
    std::fs::read(path).map_err(|source| TlsSetupError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn bad_pem(what: &'static str, path: &Path, e: pem::Error) -> TlsSetupError {
    TlsSetupError::BadPem {
        what,
        path: path.to_path_buf(),
        detail: e.to_string(),
    }
}

/// Reads the certificate chain (leaf first) from a PEM file.
pub fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsSetupError> {
    let pem = read("certificate", path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem("certificate", path, e))?;
    if certs.is_empty() {
        return Err(TlsSetupError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// Reads the first private key from a PEM file.
pub fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsSetupError> {
    let pem = read("key", path)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(k) => Ok(k),
        Err(pem::Error::NoItemsFound) => Err(TlsSetupError::NoKey {
            path: path.to_path_buf(),
        }),
        Err(e) => Err(bad_pem("key", path, e)),
    }
}

/// Builds a rustls server config (ring, TLS 1.2 and 1.3) from the files,
/// checking that the key belongs to the leaf certificate.
pub fn load_server_config(files: &TlsFiles, alpn: &[&[u8]]) -> Result<ServerConfig, TlsSetupError> {
    let certs = load_certs(&files.cert)?;
    let key = load_key(&files.key)?;
    let unusable = |detail: String| TlsSetupError::Unusable {
        cert: files.cert.clone(),
        key: files.key.clone(),
        detail,
    };
    let mut cfg =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| unusable(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .map_err(|e| match e {
                rustls::Error::InconsistentKeys(rustls::InconsistentKeys::KeyMismatch) => {
                    TlsSetupError::KeyMismatch {
                        cert: files.cert.clone(),
                        key: files.key.clone(),
                    }
                }
                other => unusable(other.to_string()),
            })?;
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(cfg)
}

/// Why a client's TLS handshake failed.
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    #[error("no TLS handshake within {}ms", .0.as_millis())]
    Timeout(Duration),
    #[error("{0}")]
    Failed(io::Error),
}

impl HandshakeError {
    /// A short label for metrics: `timeout`, `alert` (the client refused us,
    /// e.g. it does not trust our certificate), `protocol` or `io`.
    pub fn reason(&self) -> &'static str {
        match self {
            HandshakeError::Timeout(_) => "timeout",
            HandshakeError::Failed(e) => {
                match e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    Some(rustls::Error::AlertReceived(_)) => "alert",
                    Some(_) => "protocol",
                    None => "io",
                }
            }
        }
    }
}

/// A listener's TLS settings, replaceable at run time.
pub struct ServerTls {
    files: TlsFiles,
    alpn: Vec<Vec<u8>>,
    current: ArcSwap<ServerConfig>,
}

impl std::fmt::Debug for ServerTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTls")
            .field("files", &self.files)
            .finish_non_exhaustive()
    }
}

impl ServerTls {
    /// Loads the certificate and key; `alpn` lists the protocols offered.
    pub fn load(files: TlsFiles, alpn: &[&[u8]]) -> Result<Arc<ServerTls>, TlsSetupError> {
        let cfg = load_server_config(&files, alpn)?;
        Ok(Arc::new(ServerTls {
            files,
            alpn: alpn.iter().map(|p| p.to_vec()).collect(),
            current: ArcSwap::from_pointee(cfg),
        }))
    }

    pub fn files(&self) -> &TlsFiles {
        &self.files
    }

    /// The config new handshakes use.
    pub fn config(&self) -> Arc<ServerConfig> {
        self.current.load_full()
    }

    /// Re-reads the files. On error the old certificate stays in use.
    pub fn reload(&self) -> Result<(), TlsSetupError> {
        let alpn: Vec<&[u8]> = self.alpn.iter().map(|p| p.as_slice()).collect();
        let cfg = load_server_config(&self.files, &alpn)?;
        self.current.store(Arc::new(cfg));
        Ok(())
    }

    /// The server side of a handshake on `io`, bounded by `timeout`.
    pub async fn accept<IO>(
        &self,
        io: IO,
        timeout: Duration,
    ) -> Result<TlsStream<IO>, HandshakeError>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let acceptor = tokio_rustls::TlsAcceptor::from(self.config());
        match tokio::time::timeout(timeout, acceptor.accept(io)).await {
            Ok(Ok(s)) => Ok(s),
            Ok(Err(e)) => Err(HandshakeError::Failed(e)),
            Err(_) => Err(HandshakeError::Timeout(timeout)),
        }
    }
}

/// Reloads every listener's certificate, logging each outcome; a failure
/// keeps that listener's old certificate.
pub fn reload_all(all: &[Arc<ServerTls>]) {
    for t in all {
        match t.reload() {
            Ok(()) => {
                metrics::counter!("proxyguard_tls_reloads_total", "result" => "ok").increment(1);
                tracing::info!(cert = %t.files.cert.display(), "TLS certificate reloaded");
            }
            Err(e) => {
                metrics::counter!("proxyguard_tls_reloads_total", "result" => "error").increment(1);
                tracing::error!(error = %e, "TLS certificate reload failed; keeping the old certificate");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p
    }

    fn self_signed(name: &str) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec![name.to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        (cert.pem(), key.serialize_pem())
    }

    #[test]
    fn loads_a_matching_pair_and_names_what_is_wrong_otherwise() {
        let d = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed("a.test");
        let (_, k2) = self_signed("b.test");
        let cert = write(d.path(), "c.pem", &c1);
        let key = write(d.path(), "k.pem", &k1);
        let other_key = write(d.path(), "k2.pem", &k2);
        let files = TlsFiles {
            cert: cert.clone(),
            key: key.clone(),
        };
        let cfg = load_server_config(&files, ALPN_HTTP11).unwrap();
        assert_eq!(cfg.alpn_protocols, vec![b"http/1.1".to_vec()]);

        let e = load_server_config(
            &TlsFiles {
                cert: cert.clone(),
                key: other_key,
            },
            ALPN_HTTP11,
        )
        .unwrap_err();
        assert!(matches!(e, TlsSetupError::KeyMismatch { .. }), "{e}");
        assert!(e.to_string().contains("does not match"), "{e}");
        assert!(e.is_key_problem());

        // A key where the certificate should be, and vice versa.
        let e = load_server_config(
            &TlsFiles {
                cert: key.clone(),
                key: key.clone(),
            },
            ALPN_HTTP11,
        )
        .unwrap_err();
        assert!(matches!(e, TlsSetupError::NoCertificate { .. }), "{e}");
        assert!(!e.is_key_problem());
        let e = load_server_config(
            &TlsFiles {
                cert: cert.clone(),
                key: cert.clone(),
            },
            ALPN_HTTP11,
        )
        .unwrap_err();
        assert!(matches!(e, TlsSetupError::NoKey { .. }), "{e}");

        let e = load_server_config(
            &TlsFiles {
                cert: d.path().join("missing.pem"),
                key,
            },
            ALPN_HTTP11,
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("cannot read the certificate file"),
            "{e}"
        );
    }

    #[test]
    fn a_failed_reload_keeps_the_old_certificate() {
        let d = tempfile::tempdir().unwrap();
        let (c1, k1) = self_signed("a.test");
        let files = TlsFiles {
            cert: write(d.path(), "c.pem", &c1),
            key: write(d.path(), "k.pem", &k1),
        };
        let tls = ServerTls::load(files.clone(), ALPN_HTTP11).unwrap();
        let before = tls.config();
        write(d.path(), "c.pem", "not a certificate\n");
        assert!(tls.reload().is_err());
        assert!(Arc::ptr_eq(&before, &tls.config()));
        let (c2, k2) = self_signed("b.test");
        write(d.path(), "c.pem", &c2);
        write(d.path(), "k.pem", &k2);
        tls.reload().unwrap();
        assert!(!Arc::ptr_eq(&before, &tls.config()));
    }
}
