//! Connecting to a name with several addresses the Happy Eyeballs v2 way
//! (RFC 8305 §5): addresses interleaved by family, a new attempt started
//! every `stagger` (250 ms) while earlier ones are still pending, and at once
//! when one fails; the first connection wins and the rest are dropped. A
//! blackholed address therefore costs `stagger`, not the whole budget.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};

/// RFC 8305's recommended Connection Attempt Delay.
pub const STAGGER: Duration = Duration::from_millis(250);

/// Orders addresses by alternating families, keeping the resolver's order
/// within each family and starting with the family of the first address.
pub fn interleave(addrs: &[SocketAddr]) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return Vec::new();
    };
    let (a, b): (Vec<SocketAddr>, Vec<SocketAddr>) =
        addrs.iter().partition(|x| x.is_ipv6() == first.is_ipv6());
    let mut out = Vec::with_capacity(addrs.len());
    let (mut a, mut b) = (a.into_iter(), b.into_iter());
    loop {
        match (a.next(), b.next()) {
            (None, None) => return out,
            (x, y) => out.extend(x.into_iter().chain(y)),
        }
    }
}

/// Races connection attempts to `addrs` (already ordered) as RFC 8305 says.
/// Returns the first connection, or the last error when all failed; the
/// caller bounds the whole race with its own deadline.
pub async fn race<C, E, F, Fut>(
    addrs: &[SocketAddr],
    stagger: Duration,
    connect: F,
) -> Result<C, Option<E>>
where
    F: Fn(SocketAddr) -> Fut,
    Fut: Future<Output = Result<C, E>>,
{
    let mut pending = FuturesUnordered::new();
    let mut rest = addrs.iter();
    let mut last = None;
    if let Some(a) = rest.next() {
        pending.push(connect(*a));
    }
    while !pending.is_empty() {
        let more = rest.len() > 0;
        let timer = async {
            if more {
                tokio::time::sleep(stagger).await
            } else {
                std::future::pending::<()>().await
            }
        };
        tokio::select! {
            r = pending.next() => match r {
                Some(Ok(c)) => return Ok(c),
                Some(Err(e)) => {
                    last = Some(e);
                    if let Some(a) = rest.next() {
                        pending.push(connect(*a));
                    }
                }
                None => break,
            },
            _ = timer => {
                if let Some(a) = rest.next() {
                    pending.push(connect(*a));
                }
            }
        }
    }
    Err(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::time::Instant;

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn interleaves_families() {
        let v = [
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("127.0.0.1:1"),
            addr("[::3]:1"),
            addr("127.0.0.2:1"),
        ];
        assert_eq!(
            interleave(&v),
            vec![v[0], v[2], v[1], v[4], v[3]],
            "v6 first (as resolved), alternating"
        );
        assert!(interleave(&[]).is_empty());
    }

    /// The stub: `.1` hangs (blackhole), `.2` refuses, `.3` connects after 10 ms.
    async fn stub(a: SocketAddr) -> Result<SocketAddr, &'static str> {
        match a.ip().to_string().as_str() {
            "127.0.0.1" => std::future::pending().await,
            "127.0.0.2" => Err("refused"),
            _ => {
                tokio::time::sleep(Duration::from_millis(10)).await;
                Ok(a)
            }
        }
    }

    #[tokio::test(start_paused = true)]
    async fn blackholed_first_address_costs_one_stagger() {
        let t = Instant::now();
        let addrs = [addr("127.0.0.1:1"), addr("127.0.0.3:1")];
        let r = race(&addrs, STAGGER, stub).await;
        assert_eq!(r.unwrap(), addrs[1]);
        assert_eq!(t.elapsed(), STAGGER + Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn refused_address_moves_on_at_once() {
        let t = Instant::now();
        let addrs = [addr("127.0.0.2:1"), addr("127.0.0.3:1")];
        assert_eq!(race(&addrs, STAGGER, stub).await.unwrap(), addrs[1]);
        assert_eq!(t.elapsed(), Duration::from_millis(10));
    }

    #[tokio::test(start_paused = true)]
    async fn all_failing_returns_the_last_error() {
        let addrs = [addr("127.0.0.2:1"), addr("127.0.0.2:2")];
        assert_eq!(
            race(&addrs, STAGGER, stub).await.unwrap_err(),
            Some("refused")
        );
    }
}
