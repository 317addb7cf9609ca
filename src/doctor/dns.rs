//! The DNS step's notes: who resolves the target, and `--dns SERVER`
//! compared with the system resolver.

use std::net::SocketAddr;
use std::time::Duration;

use super::walk::Walk;
use super::{Options, Plan};
use crate::upstream::{Host, Resolver, Scheme, UpstreamSpec};

/// Notes for the dns step; a differing `--dns` answer is also a finding.
pub(super) async fn notes(
    w: &mut Walk,
    plan: &Plan,
    proxy: Option<&UpstreamSpec>,
    opts: &Options,
) -> Vec<String> {
    let mut notes = Vec::new();
    let Host::Name(name) = &plan.target.host else {
        return notes;
    };
    if matches!(
        proxy.map(|p| p.scheme),
        Some(Scheme::Http | Scheme::Https | Scheme::Socks5h)
    ) {
        notes.push(format!(
            "target {name} is resolved by the proxy (remote DNS)"
        ));
    }
    if let Some(server) = opts.dns {
        let c = compare(name, plan.target.port, server, &plan.resolver, opts.timeout).await;
        if !c.agree {
            w.findings.push(c.text.clone());
        }
        notes.push(c.text);
    }
    notes
}

struct Comparison {
    agree: bool,
    text: String,
}

async fn compare(
    name: &str,
    port: u16,
    server: SocketAddr,
    system: &Resolver,
    t: Duration,
) -> Comparison {
    use hickory_resolver::config::{NameServerConfig, Protocol, ResolverConfig, ResolverOpts};
    let local: Vec<String> = match system
        .resolve(&Host::Name(name.to_string()), port, t, false)
        .await
    {
        Ok(a) => a.iter().map(|s| s.ip().to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let mut cfg = ResolverConfig::new();
    cfg.add_name_server(NameServerConfig::new(server, Protocol::Udp));
    let mut o = ResolverOpts::default();
    o.timeout = t.min(Duration::from_secs(5));
    o.attempts = 1;
    // Answers of this server only: no hosts file, no cache shared with the system.
    o.use_hosts_file = false;
    let r = hickory_resolver::TokioAsyncResolver::tokio(cfg, o);
    let remote: Vec<String> = match r.lookup_ip(name).await {
        Ok(l) => l.iter().map(|ip| ip.to_string()).collect(),
        Err(e) => vec![format!("error: {e}")],
    };
    let mut a = local.clone();
    let mut b = remote.clone();
    a.sort();
    a.dedup();
    b.sort();
    b.dedup();
    if a == b {
        Comparison {
            agree: true,
            text: format!(
                "{name}: system resolver and {server} agree ({})",
                local.join(", ")
            ),
        }
    } else {
        Comparison {
            agree: false,
            text: format!(
                "{name}: system resolver says {} but {server} says {}: answers differ",
                local.join(", "),
                remote.join(", ")
            ),
        }
    }
}
