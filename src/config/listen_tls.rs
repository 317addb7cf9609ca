//! `[[listen]] cert` / `key`: which protocols take TLS, and the files
//! checked once at load (readable, PEM, key matching the certificate), so
//! a bad file is an error naming the config file, line and field.

use std::path::{Path, PathBuf};

use toml::Spanned;

use super::load::{ConfigError, Ctx};
use super::schema::{ListenConfig, Protocol};
use crate::tls_acceptor::{load_server_config, TlsFiles, ALPN_HTTP11};

/// A relative path is taken from the config file's directory.
fn resolve(cx: &Ctx<'_>, p: &str) -> PathBuf {
    let p = Path::new(p.trim());
    if p.is_absolute() {
        return p.to_path_buf();
    }
    match Path::new(cx.source()).parent() {
        Some(dir) if dir.is_dir() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

/// The listener's TLS files, or None for a plaintext one.
pub(super) fn validate(cx: &Ctx<'_>, l: &ListenConfig) -> Result<Option<TlsFiles>, ConfigError> {
    let (cert, key) = match (&l.cert, &l.key, l.protocol) {
        (None, None, Protocol::Https) => {
            return cx.at(
                &l.addr,
                "listen.cert",
                "protocol = \"https\" needs `cert` and `key` (PEM files: certificate chain and private key)".into(),
            )
        }
        (None, None, _) => return Ok(None),
        (Some(c), _, Protocol::Socks5) | (None, Some(c), Protocol::Socks5) => {
            return cx.at(
                c,
                "listen.protocol",
                "a socks5 listener does not speak TLS: remove `cert`/`key`, or use protocol = \"https\" (TLS only) or \"mixed\" (TLS, plain HTTP and SOCKS5 on one port)".into(),
            )
        }
        (Some(c), _, Protocol::Http) | (None, Some(c), Protocol::Http) => {
            return cx.at(
                c,
                "listen.protocol",
                "protocol = \"http\" is plaintext: with `cert`/`key` use \"https\" (TLS only) or \"mixed\" (TLS, plain HTTP and SOCKS5 on one port)".into(),
            )
        }
        (Some(c), None, _) => {
            return cx.at(c, "listen.key", "`cert` is set but `key` is not: give both".into())
        }
        (None, Some(k), _) => {
            return cx.at(k, "listen.cert", "`key` is set but `cert` is not: give both".into())
        }
        (Some(c), Some(k), _) => (c, k),
    };
    let files = TlsFiles {
        cert: resolve(cx, cert.get_ref()),
        key: resolve(cx, key.get_ref()),
    };
    if let Err(e) = load_server_config(&files, ALPN_HTTP11) {
        let (at, field): (&Spanned<String>, &str) = if e.is_key_problem() {
            (key, "listen.key")
        } else {
            (cert, "listen.cert")
        };
        return cx.at(at, field, e.to_string());
    }
    Ok(Some(files))
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn pair(dir: &std::path::Path) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["gw.test".to_string()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let c = dir.join("gw.pem");
        let k = dir.join("gw.key");
        std::fs::write(&c, cert.pem()).unwrap();
        std::fs::write(&k, key.serialize_pem()).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    fn listen(protocol: &str, cert: Option<&str>, key: Option<&str>) -> String {
        let mut s = format!("[[listen]]\naddr = \"127.0.0.1:3128\"\nprotocol = \"{protocol}\"\n");
        if let Some(c) = cert {
            s.push_str(&format!("cert = \"{c}\"\n"));
        }
        if let Some(k) = key {
            s.push_str(&format!("key = \"{k}\"\n"));
        }
        s
    }

    #[test]
    fn https_needs_both_files_and_plain_protocols_refuse_them() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = pair(d.path());
        let ok = Config::from_toml(&listen("https", Some(&c), Some(&k)), "f.toml").unwrap();
        assert!(ok.listeners[0].tls.is_some());
        let mixed = Config::from_toml(&listen("mixed", Some(&c), Some(&k)), "f.toml").unwrap();
        assert!(mixed.listeners[0].tls.is_some());
        assert!(Config::from_toml(&listen("mixed", None, None), "f")
            .unwrap()
            .listeners[0]
            .tls
            .is_none());
        // The effective config keeps the files and loads again.
        Config::from_toml(&ok.effective_toml(), "again").unwrap();

        let e = Config::from_toml(&listen("https", None, None), "f.toml").unwrap_err();
        assert!(e.message.contains("needs `cert` and `key`"), "{e}");
        assert_eq!(e.line, Some(2));
        let e = Config::from_toml(&listen("socks5", Some(&c), Some(&k)), "f.toml").unwrap_err();
        assert!(
            e.message.contains("socks5 listener does not speak TLS"),
            "{e}"
        );
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(4), Some("listen.protocol"))
        );
        let e = Config::from_toml(&listen("http", Some(&c), Some(&k)), "f.toml").unwrap_err();
        assert!(e.message.contains("plaintext"), "{e}");
        let e = Config::from_toml(&listen("https", Some(&c), None), "f.toml").unwrap_err();
        assert!(e.message.contains("`key` is not"), "{e}");
    }

    #[test]
    fn bad_files_are_named_with_line_and_field() {
        let d = tempfile::tempdir().unwrap();
        let (c, k) = pair(d.path());
        let missing = d.path().join("nope.pem").display().to_string();
        let e =
            Config::from_toml(&listen("https", Some(&missing), Some(&k)), "f.toml").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(4), Some("listen.cert")));
        assert!(
            e.message.contains("cannot read the certificate file"),
            "{e}"
        );
        assert!(e.to_string().starts_with("f.toml:4:"), "{e}");
        // Certificate and key swapped.
        let e = Config::from_toml(&listen("https", Some(&k), Some(&c)), "f.toml").unwrap_err();
        assert!(e.message.contains("no certificate in the file"), "{e}");
        // A key of another certificate.
        let other = tempfile::tempdir().unwrap();
        let (_, k2) = pair(other.path());
        let e = Config::from_toml(&listen("https", Some(&c), Some(&k2)), "f.toml").unwrap_err();
        assert_eq!((e.line, e.field.as_deref()), (Some(5), Some("listen.key")));
        assert!(e.message.contains("does not match the certificate"), "{e}");
    }
}
