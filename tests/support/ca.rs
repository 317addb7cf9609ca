//! A test CA (rcgen) and leaf certificates for TLS peers.

use super::*;

/// Names in the default leaf certificate.
pub const DEFAULT_LEAF_NAMES: &[&str] = &["origin.test", "localhost", "127.0.0.1", "::1"];

/// A leaf certificate and key, written as PEM files.
pub struct Leaf {
    pub cert_pem: String,
    pub key_pem: String,
    pub cert_path: PathBuf,
    pub key_path: PathBuf,
}

impl Leaf {
    /// A rustls server config (ring provider, HTTP/1.1 ALPN) for this leaf.
    pub fn server_config(&self) -> rustls::ServerConfig {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs: Vec<CertificateDer<'static>> =
            CertificateDer::pem_slice_iter(self.cert_pem.as_bytes())
                .collect::<Result<_, _>>()
                .expect("leaf cert pem");
        let key = PrivateKeyDer::from_pem_slice(self.key_pem.as_bytes()).expect("leaf key pem");
        let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .expect("server cert");
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        cfg
    }
}

/// A throwaway CA (rcgen) plus a default leaf for [`DEFAULT_LEAF_NAMES`].
/// Files: `ca.pem`, `cert.pem` (leaf followed by nothing else), `key.pem`.
pub struct TestCa {
    dir: tempfile::TempDir,
    ca_cert: rcgen::Certificate,
    ca_key: rcgen::KeyPair,
    pub ca_pem: String,
    pub default_leaf: Leaf,
    counter: AtomicUsize,
}

impl TestCa {
    pub fn new() -> TestCa {
        Self::with_name("proxyguard test CA")
    }

    /// A CA with the given common name (e.g. one that looks like a
    /// TLS-inspecting proxy's).
    pub fn with_name(common_name: &str) -> TestCa {
        let dir = temp_dir("ca", false);
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, common_name);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::CrlSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let now = SystemTime::now();
        params.not_before = (now - Duration::from_secs(86400)).into();
        params.not_after = (now + Duration::from_secs(86400 * 365)).into();
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let ca_cert = params.self_signed(&ca_key).unwrap();
        let ca_pem = ca_cert.pem();
        write_file(&dir.path().join("ca.pem"), &ca_pem, 0o644);
        let mut ca = TestCa {
            dir,
            ca_cert,
            ca_key,
            ca_pem,
            default_leaf: Leaf {
                cert_pem: String::new(),
                key_pem: String::new(),
                cert_path: PathBuf::new(),
                key_path: PathBuf::new(),
            },
            counter: AtomicUsize::new(0),
        };
        let leaf = ca.make_leaf(
            DEFAULT_LEAF_NAMES,
            now - Duration::from_secs(86400),
            now + Duration::from_secs(86400 * 30),
            "cert.pem",
            "key.pem",
        );
        ca.default_leaf = leaf;
        ca
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Path of `ca.pem`.
    pub fn ca_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// Path of the default leaf's `cert.pem`.
    pub fn cert_path(&self) -> PathBuf {
        self.default_leaf.cert_path.clone()
    }

    /// Path of the default leaf's `key.pem`.
    pub fn key_path(&self) -> PathBuf {
        self.default_leaf.key_path.clone()
    }

    /// A new leaf signed by this CA (names: DNS names or IP literals).
    pub fn leaf(&self, names: &[&str], not_before: SystemTime, not_after: SystemTime) -> Leaf {
        let n = self.counter.fetch_add(1, Ordering::SeqCst);
        self.make_leaf(
            names,
            not_before,
            not_after,
            &format!("leaf{n}-cert.pem"),
            &format!("leaf{n}-key.pem"),
        )
    }

    /// Default names, expired yesterday.
    pub fn expired_leaf(&self) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            DEFAULT_LEAF_NAMES,
            now - Duration::from_secs(86400 * 10),
            now - Duration::from_secs(86400),
        )
    }

    /// Valid dates, but only for `wrong.test`.
    pub fn wrong_name_leaf(&self) -> Leaf {
        let now = SystemTime::now();
        self.leaf(
            &["wrong.test"],
            now - Duration::from_secs(86400),
            now + Duration::from_secs(86400 * 30),
        )
    }

    /// rustls server config for the default leaf.
    pub fn server_config(&self) -> rustls::ServerConfig {
        self.default_leaf.server_config()
    }

    fn make_leaf(
        &self,
        names: &[&str],
        not_before: SystemTime,
        not_after: SystemTime,
        cert_file: &str,
        key_file: &str,
    ) -> Leaf {
        let sans: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        let mut params = rcgen::CertificateParams::new(sans).unwrap();
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            names.first().copied().unwrap_or("leaf"),
        );
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.ca_cert, &self.ca_key).unwrap();
        let leaf = Leaf {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path: self.dir.path().join(cert_file),
            key_path: self.dir.path().join(key_file),
        };
        write_file(&leaf.cert_path, &leaf.cert_pem, 0o644);
        write_file(&leaf.key_path, &leaf.key_pem, 0o644);
        leaf
    }
}

impl Default for TestCa {
    fn default() -> Self {
        TestCa::new()
    }
}
