//! The tls step: TLS with the target through the tunnel, with the presented
//! certificate recorded and every failure explained in words.

use std::sync::Arc;
use std::time::Instant;

use super::walk::{Failure, Io, Walk};
use super::{interpret, probe, tlsinfo, Cause, Plan};

/// Runs the target TLS handshake over `io`.
pub(super) async fn run(
    w: &mut Walk,
    plan: &Plan,
    via_proxy: bool,
    io: Box<dyn Io>,
) -> Result<Box<dyn Io>, Failure> {
    let t = w.timeout;
    let tls_start = Instant::now();
    let label = match &plan.roots.target_file {
        Some(f) => format!("--cacert {f}"),
        None => String::new(),
    };
    let verifier = tlsinfo::Recording::new(&plan.roots.target, &label).map_err(|e| {
        Failure::new(
            Cause::TlsCertUntrusted,
            format!("The --cacert roots cannot be used: {e}."),
        )
    })?;
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Failure::new(Cause::TlsProtocolMismatch, e.to_string()))?
    .dangerous()
    .with_custom_certificate_verifier(verifier.clone())
    .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    let host = plan.target.host.bare();
    let name = rustls_pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Failure::new(Cause::TlsHostnameMismatch, e.to_string()))?;
    let (sniff, first) = probe::Sniff::new(io);
    let r = tokio::time::timeout(
        t,
        tokio_rustls::TlsConnector::from(Arc::new(cfg)).connect(name, sniff),
    )
    .await;
    let chain = verifier.chain.lock().map(|c| c.clone()).unwrap_or_default();
    w.cert = chain.first().and_then(tlsinfo::summarise);
    match r {
        Err(_) => {
            w.step(
                "tls",
                false,
                tls_start.elapsed(),
                format!("no TLS answer within {t:?}"),
            );
            let c = if via_proxy {
                Cause::ProxyTimeout
            } else {
                Cause::TargetTimeout
            };
            Err(Failure::new(c, "The TLS handshake timed out."))
        }
        Ok(Err(e)) => {
            let plaintext = probe::starts_with_http(&first);
            let f = interpret::tls_error(&e, plan, via_proxy, w.cert.as_ref(), plaintext);
            let mut detail = f.summary.clone();
            if let Some(cert) = &w.cert {
                detail.push_str(&format!(
                    " Certificate: subject {:?}, issuer {:?}, SANs {:?}, valid {} → {}.",
                    cert.subject, cert.issuer, cert.sans, cert.not_before, cert.not_after
                ));
            }
            w.step("tls", false, tls_start.elapsed(), detail);
            Err(f)
        }
        Ok(Ok(tls)) => {
            let (_, sess) = tls.get_ref();
            let version = sess
                .protocol_version()
                .and_then(|v| v.as_str())
                .unwrap_or("TLS");
            let cipher = sess
                .negotiated_cipher_suite()
                .and_then(|c| c.suite().as_str())
                .unwrap_or("unknown cipher");
            let alpn = sess
                .alpn_protocol()
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .unwrap_or_else(|| "none".into());
            let by = verifier
                .verified_by
                .lock()
                .ok()
                .and_then(|v| v.clone())
                .unwrap_or_else(|| "the platform roots".into());
            let mut d = format!("{version}, {cipher}, ALPN {alpn}, verified against {by}");
            if let Some(c) = &w.cert {
                d.push_str(&format!(
                    "; subject {:?}, issuer {:?}, SANs {:?}, valid until {}",
                    c.subject, c.issuer, c.sans, c.not_after
                ));
            }
            w.timings.appconnect = Some(w.at());
            w.step("tls", true, tls_start.elapsed(), d);
            Ok(Box::new(tls))
        }
    }
}
