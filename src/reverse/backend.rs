//! Talking to one backend: the connection (direct or through the pool,
//! TLS with ALPN), the protocol (HTTP/1.1 or HTTP/2, with the fallback),
//! the shared client (`http_client`: idle HTTP/1.1 pool, shared h2
//! connections), and one exchange of a request for a response head.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use http::header::HeaderValue;
use http::Response;
use hyper::body::Incoming;

use super::{Io, ReqBody, ReverseRoute};
use crate::config::route_protocols::BackendProtocol;
use crate::http_client::{handshake, handshake_h2, handshake_with_upgrades, Sender};
use crate::pool::Member;
use crate::upstream::{tcp_connect, ConnectError, NoopObserver, Phase, Target};

/// ALPN offers by what the route wants from a TLS backend.
pub(super) struct TlsConfigs {
    /// No ALPN: HTTP/1.1.
    pub h1: Arc<rustls::ClientConfig>,
    /// `h2` preferred, `http/1.1` accepted.
    pub h2_or_h1: Arc<rustls::ClientConfig>,
    /// `h2` only (an `h2://` backend without protocol fallback).
    pub h2_only: Arc<rustls::ClientConfig>,
}

impl TlsConfigs {
    pub fn new(base: Arc<rustls::ClientConfig>) -> Self {
        let with = |protos: &[&[u8]]| {
            let mut c = (*base).clone();
            c.alpn_protocols = protos.iter().map(|p| p.to_vec()).collect();
            Arc::new(c)
        };
        TlsConfigs {
            h2_or_h1: with(&[b"h2", b"http/1.1"]),
            h2_only: with(&[b"h2"]),
            h1: base,
        }
    }

    /// What a connect-only health check offers.
    pub fn for_check(&self, proto: BackendProtocol) -> &Arc<rustls::ClientConfig> {
        if proto.may_speak_h2() {
            &self.h2_or_h1
        } else {
            &self.h1
        }
    }
}

/// Why one exchange with one backend failed.
#[derive(Debug, thiserror::Error)]
pub(super) enum AttemptError {
    /// No request was sent: always safe to try another backend.
    #[error("{0}")]
    Connect(ConnectError),
    /// The request was (maybe partly) sent and no response head came.
    #[error("{0}")]
    Sent(hyper::Error),
    /// No response head within the route's `timeout` (or the call's deadline).
    #[error("no response head within {}ms", .0.as_millis())]
    TimedOut(std::time::Duration),
}

fn handshake_err(e: hyper::Error) -> ConnectError {
    ConnectError::Io {
        phase: Phase::FirstByte,
        detail: e.to_string(),
        proxy: true,
    }
}

impl ReverseRoute {
    /// A transport to `m`; for TLS backends also whether ALPN chose `h2`.
    pub(super) async fn connect(
        &self,
        m: &Member,
        tls: &Arc<rustls::ClientConfig>,
    ) -> Result<(Box<dyn Io>, bool), ConnectError> {
        let spec = m.spec();
        let target = Target::new(spec.host.clone(), spec.port);
        let tcp: Box<dyn Io> = if self.via_pool {
            Box::new(self.router.tunnel(&target).await?.0)
        } else {
            Box::new(tcp_connect(&self.ctx, &spec.host, spec.port, false, &mut NoopObserver).await?)
        };
        if !self.proto(m).proto.tls() {
            return Ok((tcp, false));
        }
        let name = self.cfg.sni.clone().unwrap_or_else(|| spec.host.bare());
        let server_name = rustls_pki_types::ServerName::try_from(name.clone()).map_err(|e| {
            ConnectError::ProxyProtocol {
                detail: format!("bad TLS name {name}: {e}"),
            }
        })?;
        let tls = tokio::time::timeout(
            self.ctx.timeouts.tls,
            tokio_rustls::TlsConnector::from(tls.clone()).connect(server_name, tcp),
        )
        .await
        .map_err(|_| ConnectError::timeout(Phase::Tls, self.ctx.timeouts.tls, false))?
        .map_err(|e| crate::upstream::tls::classify(&e, &name, false))?;
        let h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        Ok((Box::new(tls), h2))
    }

    /// A connection to send on: a shared h2 one, an idle HTTP/1.1 one, or a
    /// new one (see [`ReverseRoute::dial`]). The flag is true for a reused
    /// connection.
    pub(super) async fn sender(
        &self,
        m: &Member,
        h1_only: bool,
    ) -> Result<(Sender<ReqBody>, bool), ConnectError> {
        if let Some(tx) = self.reusable(m, h1_only) {
            return Ok((tx, true));
        }
        self.dial(m, h1_only).await.map(|tx| (tx, false))
    }

    /// `m`'s shared h2 connection or an idle HTTP/1.1 one, if it has one.
    pub(super) fn reusable(&self, m: &Member, h1_only: bool) -> Option<Sender<ReqBody>> {
        let st = self.proto(m);
        let want_h2 = !h1_only && st.wants_h2();
        if want_h2 {
            if let Some(tx) = self.h2.get(&m.id) {
                return Some(Sender::H2(tx));
            }
        }
        let h1_pooled = !want_h2 || st.proto == BackendProtocol::Https;
        if h1_pooled {
            if let Some(tx) = self.idle.checkout(&m.id) {
                return Some(Sender::H1(tx));
            }
        }
        None
    }

    /// A new connection to `m`: HTTP/2 when the backend's URL and fallback
    /// state ask for it, unless `h1_only`.
    pub(super) async fn dial(
        &self,
        m: &Member,
        h1_only: bool,
    ) -> Result<Sender<ReqBody>, ConnectError> {
        let st = self.proto(m);
        let want_h2 = !h1_only && st.wants_h2();
        use BackendProtocol as P;
        let tls = match (st.proto, want_h2) {
            (P::Https, true) => &self.tls.h2_or_h1,
            (P::H2, true) if st.enabled => &self.tls.h2_or_h1,
            (P::H2, true) => &self.tls.h2_only,
            _ => &self.tls.h1,
        };
        let (io, alpn_h2) = self.connect(m, tls).await?;
        let h2 = match st.proto {
            P::H2c => want_h2,
            P::H2 if want_h2 && !alpn_h2 => {
                // A server without ALPN (or one that ignores ours) does not
                // fail the handshake: the connection is there, not on h2.
                if !st.enabled {
                    return Err(ConnectError::ProxyProtocol {
                        detail: "the backend did not agree to HTTP/2 (ALPN h2)".into(),
                    });
                }
                st.downgrade(m.name(), "ALPN did not choose h2");
                false
            }
            _ => want_h2 && alpn_h2,
        };
        st.spoke(h2);
        if h2 {
            let tx = handshake_h2::<_, ReqBody>(io)
                .await
                .map_err(handshake_err)?;
            self.h2.put(m.id, tx.clone());
            Ok(Sender::H2(tx))
        } else {
            let tx = handshake::<_, ReqBody>(io).await.map_err(handshake_err)?;
            Ok(Sender::H1(tx))
        }
    }

    /// A new HTTP/1.1 connection for a request that may be answered `101`
    /// (never pooled: the socket is handed over on an upgrade).
    pub(super) async fn upgrade_sender(&self, m: &Member) -> Result<Sender<ReqBody>, ConnectError> {
        let (io, _) = self.connect(m, &self.tls.h1).await?;
        let tx = handshake_with_upgrades::<_, ReqBody>(io)
            .await
            .map_err(handshake_err)?;
        Ok(Sender::H1(tx))
    }

    /// Keeps an HTTP/1.1 connection for reuse once it is ready again (an
    /// h2 one stays shared by itself).
    pub(super) fn keep(&self, m: &Member, tx: Sender<ReqBody>) {
        let Sender::H1(mut tx) = tx else { return };
        let (idle, id) = (self.idle.clone(), m.id);
        tokio::spawn(async move {
            if tx.ready().await.is_ok() {
                idle.checkin(id, tx);
            }
        });
    }

    /// Sends one request to `m` on `tx` and waits for the response head.
    /// `body` makes the request body; it is asked again (and may say None:
    /// not replayable) only for the HTTP/1.1 retry of the protocol
    /// fallback, when a new h2 connection failed before any response.
    pub(super) async fn exchange(
        &self,
        m: &Member,
        mut tx: Sender<ReqBody>,
        reused: bool,
        parts: &http::request::Parts,
        client_host: Option<&HeaderValue>,
        body: &mut (dyn FnMut() -> Option<ReqBody> + Send),
    ) -> Result<Response<Incoming>, AttemptError> {
        let Some(first) = body() else {
            return Err(AttemptError::Connect(ConnectError::NoRoute(
                "request body already consumed".into(),
            )));
        };
        let req = self.backend_request(m, parts, client_host, first, tx.is_h2());
        let st = self.proto(m);
        st.inflight.fetch_add(1, Ordering::Relaxed);
        let r = tx.send(req).await;
        st.inflight.fetch_sub(1, Ordering::Relaxed);
        let e = match r {
            Ok(resp) => {
                self.keep(m, tx);
                return Ok(resp);
            }
            Err(e) => e,
        };
        if !(tx.is_h2() && !reused && st.enabled) {
            return Err(AttemptError::Sent(e));
        }
        // A new h2 connection failed before any response: does HTTP/1.1 work?
        let Some(again) = body() else {
            return Err(AttemptError::Sent(e));
        };
        let (mut h1, _) = self.sender(m, true).await.map_err(AttemptError::Connect)?;
        let req = self.backend_request(m, parts, client_host, again, false);
        st.inflight.fetch_add(1, Ordering::Relaxed);
        let r = h1.send(req).await;
        st.inflight.fetch_sub(1, Ordering::Relaxed);
        match r {
            Ok(resp) => {
                st.downgrade(m.name(), &e.to_string());
                self.h2.remove(&m.id);
                self.keep(m, h1);
                Ok(resp)
            }
            Err(e2) => Err(AttemptError::Sent(e2)),
        }
    }
}
