//! Active health checks of direct backends: a connection (TCP, TLS), or
//! with `check = "grpc"` the standard gRPC health service
//! (`grpc.health.v1.Health/Check`, SERVING = healthy) over the same client
//! and shared HTTP/2 connection that calls use.

use std::sync::Arc;

use bytes::Bytes;
use http::header::HeaderValue;
use http_body_util::BodyExt;

use super::{full_body, ReverseRoute};
use crate::config::route_protocols::BackendCheck;
use crate::config::schema::HealthConfig;
use crate::pool::outcome::Check;
use crate::pool::{Member, Outcome};
use crate::shutdown::Shutdown;

/// `grpc.health.v1.HealthCheckResponse.ServingStatus`.
const SERVING: u64 = 1;

/// The gRPC frame of a `HealthCheckRequest` for `service` ("" = the server).
pub fn health_request(service: &str) -> Bytes {
    let mut msg = Vec::new();
    if !service.is_empty() {
        msg.push(0x0a); // field 1, length-delimited
        put_varint(&mut msg, service.len() as u64);
        msg.extend_from_slice(service.as_bytes());
    }
    let mut out = vec![0u8];
    out.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    out.extend_from_slice(&msg);
    Bytes::from(out)
}

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn varint(b: &[u8], i: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *b.get(*i)?;
        *i += 1;
        v |= u64::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// The `status` (field 1) of a `HealthCheckResponse` gRPC frame.
pub fn health_status(frame: &[u8]) -> Result<u64, String> {
    if frame.len() < 5 || frame[0] != 0 {
        return Err("not an uncompressed gRPC message".into());
    }
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    let msg = frame.get(5..5 + len).ok_or("truncated gRPC message")?;
    let (mut i, mut status) = (0, 0);
    while i < msg.len() {
        let tag = varint(msg, &mut i).ok_or("bad protobuf tag")?;
        match (tag >> 3, tag & 7) {
            (1, 0) => status = varint(msg, &mut i).ok_or("bad status")?,
            (_, 0) => {
                varint(msg, &mut i).ok_or("bad varint")?;
            }
            (_, 2) => {
                let n = varint(msg, &mut i).ok_or("bad length")? as usize;
                i = i
                    .checked_add(n)
                    .filter(|&e| e <= msg.len())
                    .ok_or("bad length")?;
            }
            (_, 1) => i += 8,
            (_, 5) => i += 4,
            _ => return Err("unsupported protobuf wire type".into()),
        }
    }
    Ok(status)
}

impl ReverseRoute {
    async fn grpc_health(&self, m: &Member) -> Result<(), String> {
        let (mut tx, _) = self.sender(m, false).await.map_err(|e| e.to_string())?;
        if !tx.is_h2() {
            return Err("backend did not speak HTTP/2".into());
        }
        let mut parts = http::Request::new(()).into_parts().0;
        parts.method = http::Method::POST;
        parts.uri = http::Uri::from_static("/grpc.health.v1.Health/Check");
        let h = &mut parts.headers;
        h.insert("content-type", HeaderValue::from_static("application/grpc"));
        h.insert("te", HeaderValue::from_static("trailers"));
        let body = full_body(health_request(""));
        let req = self.backend_request(m, &parts, None, body, true);
        let resp = tx.send(req).await.map_err(|e| e.to_string())?;
        if resp.status() != http::StatusCode::OK {
            return Err(format!("health answered HTTP {}", resp.status()));
        }
        let head_status = resp.headers().get("grpc-status").cloned();
        let all = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?;
        let code = all
            .trailers()
            .and_then(|t| t.get("grpc-status").cloned())
            .or(head_status);
        match code.as_ref().and_then(|v| v.to_str().ok()) {
            Some("0") => {}
            other => return Err(format!("health call failed: grpc-status {other:?}")),
        }
        match health_status(&all.to_bytes())? {
            SERVING => Ok(()),
            s => Err(format!("health status {s} (not SERVING)")),
        }
    }

    async fn check_one(&self, m: &Member) -> Result<(), String> {
        match self.proto(m).check {
            BackendCheck::Grpc => self.grpc_health(m).await,
            BackendCheck::Connect => self
                .connect(m, self.tls.for_check(self.proto(m).proto))
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
        }
    }

    /// Probes direct backends on the health interval.
    pub(super) fn spawn_checks(self: &Arc<Self>, cfg: HealthConfig, shutdown: Shutdown) {
        if !cfg.enabled || self.via_pool {
            return;
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(cfg.interval.0) => {}
                    _ = shutdown.triggered() => return,
                }
                for m in me.pool.members().iter() {
                    let r = tokio::time::timeout(cfg.timeout.0, me.check_one(m)).await;
                    let (ok, detail) = match r {
                        Ok(Ok(())) => (true, "ok".to_string()),
                        Ok(Err(e)) => (false, e),
                        Err(_) => (false, "timed out".to_string()),
                    };
                    let check = Check {
                        ok,
                        deep: false,
                        detail,
                        rise: cfg.rise,
                        fall: cfg.fall,
                    };
                    me.pool.report(m, Outcome::Checked(check));
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_messages_by_hand() {
        assert_eq!(&health_request("")[..], &[0, 0, 0, 0, 0]);
        assert_eq!(&health_request("a")[..], &[0, 0, 0, 0, 3, 0x0a, 1, b'a']);
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 1]), Ok(1));
        assert_eq!(health_status(&[0, 0, 0, 0, 2, 0x08, 2]), Ok(2));
        assert_eq!(
            health_status(&[0, 0, 0, 0, 0]),
            Ok(0),
            "UNKNOWN is the default"
        );
        assert!(health_status(&[0, 0, 0, 0, 9, 0x08]).is_err());
        assert!(health_status(&[1, 0, 0, 0, 0]).is_err());
    }
}
