//! Load tool for fresh tunnels, which no standard tool measures: each worker
//! loops dial → CONNECT (or SOCKS5) → one GET → close, and reports the rate
//! and latency percentiles. `--hold N` instead opens N idle tunnels and keeps
//! them open (for per-tunnel memory).
//!
//! cargo run --release --example tunnel_rate -- --proxy 127.0.0.1:3128 \
//!     --mode connect --target 127.0.0.1:8080 --workers 50 --seconds 5

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Args {
    proxy: SocketAddr,
    mode: String,
    target: SocketAddr,
    path: String,
    workers: usize,
    seconds: f64,
    hold: usize,
    hold_seconds: f64,
    /// Keep one tunnel per worker and send keep-alive GETs over it.
    reuse: bool,
}

fn parse() -> Result<Args, String> {
    let mut a = Args {
        proxy: "127.0.0.1:3128".parse().map_err(|e| format!("{e}"))?,
        mode: "connect".into(),
        target: "127.0.0.1:80".parse().map_err(|e| format!("{e}"))?,
        path: "/small".into(),
        workers: 50,
        seconds: 5.0,
        hold: 0,
        hold_seconds: 10.0,
        reuse: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().ok_or(format!("{k} needs a value"));
        match k.as_str() {
            "--proxy" => a.proxy = v()?.parse().map_err(|e| format!("--proxy: {e}"))?,
            "--mode" => a.mode = v()?,
            "--target" => a.target = v()?.parse().map_err(|e| format!("--target: {e}"))?,
            "--path" => a.path = v()?,
            "--workers" => a.workers = v()?.parse().map_err(|e| format!("--workers: {e}"))?,
            "--seconds" => a.seconds = v()?.parse().map_err(|e| format!("--seconds: {e}"))?,
            "--hold" => a.hold = v()?.parse().map_err(|e| format!("--hold: {e}"))?,
            "--hold-seconds" => {
                a.hold_seconds = v()?.parse().map_err(|e| format!("--hold-seconds: {e}"))?
            }
            "--reuse" => a.reuse = true,
            "--bench" => {}
            other => return Err(format!("unknown argument {other}")),
        }
    }
    if a.mode != "connect" && a.mode != "socks5" && a.mode != "direct" {
        return Err("--mode is connect, socks5 or direct".into());
    }
    Ok(a)
}

async fn tunnel(a: &Args) -> std::io::Result<TcpStream> {
    if a.mode == "direct" {
        let s = TcpStream::connect(a.target).await?;
        s.set_nodelay(true)?;
        return Ok(s);
    }
    let mut s = TcpStream::connect(a.proxy).await?;
    s.set_nodelay(true)?;
    if a.mode == "connect" {
        let req = format!("CONNECT {t} HTTP/1.1\r\nHost: {t}\r\n\r\n", t = a.target);
        s.write_all(req.as_bytes()).await?;
        let mut buf = Vec::with_capacity(256);
        let mut b = [0u8; 256];
        while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await?;
            if n == 0 {
                return Err(std::io::Error::other("proxy closed during CONNECT"));
            }
            buf.extend_from_slice(&b[..n]);
        }
        if !buf.starts_with(b"HTTP/1.1 200") && !buf.starts_with(b"HTTP/1.0 200") {
            return Err(std::io::Error::other(format!(
                "CONNECT refused: {}",
                String::from_utf8_lossy(&buf[..buf.len().min(40)])
            )));
        }
    } else {
        s.write_all(&[5, 1, 0]).await?;
        let mut m = [0u8; 2];
        s.read_exact(&mut m).await?;
        let mut req = vec![5, 1, 0];
        match a.target {
            SocketAddr::V4(v4) => {
                req.push(1);
                req.extend_from_slice(&v4.ip().octets());
            }
            SocketAddr::V6(v6) => {
                req.push(4);
                req.extend_from_slice(&v6.ip().octets());
            }
        }
        req.extend_from_slice(&a.target.port().to_be_bytes());
        s.write_all(&req).await?;
        let mut head = [0u8; 10];
        s.read_exact(&mut head).await?;
        if head[1] != 0 {
            return Err(std::io::Error::other(format!("SOCKS5 reply {}", head[1])));
        }
    }
    Ok(s)
}

async fn one(a: &Args) -> std::io::Result<()> {
    let mut s = tunnel(a).await?;
    let req = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        a.path, a.target
    );
    s.write_all(req.as_bytes()).await?;
    let mut sink = Vec::with_capacity(1024);
    s.read_to_end(&mut sink).await?;
    if !sink.starts_with(b"HTTP/1.1 200") {
        return Err(std::io::Error::other("non-200 response"));
    }
    Ok(())
}

/// One keep-alive GET on an open tunnel: reads the head and Content-Length body.
async fn get_keepalive(s: &mut TcpStream, a: &Args, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let req = format!("GET {} HTTP/1.1\r\nHost: {}\r\n\r\n", a.path, a.target);
    s.write_all(req.as_bytes()).await?;
    buf.clear();
    let mut b = [0u8; 4096];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed"));
        }
        buf.extend_from_slice(&b[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).to_ascii_lowercase();
    if !head.starts_with("http/1.1 200") {
        return Err(std::io::Error::other("non-200"));
    }
    let len: usize = head
        .lines()
        .find_map(|l| {
            l.strip_prefix("content-length:")
                .map(|v| v.trim().parse().unwrap_or(0))
        })
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < len {
        let n = s.read(&mut b).await?;
        if n == 0 {
            return Err(std::io::Error::other("closed in body"));
        }
        have += n;
    }
    Ok(())
}

#[tokio::main]
async fn main() {
    let a = match parse() {
        Ok(a) => std::sync::Arc::new(a),
        Err(e) => {
            eprintln!("tunnel_rate: {e}");
            std::process::exit(2);
        }
    };
    if a.hold > 0 {
        let mut held = Vec::with_capacity(a.hold);
        let mut failed = 0usize;
        for _ in 0..a.hold {
            // Bounded: a proxy out of descriptors leaves us in its backlog.
            match tokio::time::timeout(Duration::from_secs(5), tunnel(&a)).await {
                Ok(Ok(s)) => held.push(s),
                _ => {
                    failed += 1;
                    if failed >= 3 {
                        break;
                    }
                }
            }
        }
        println!("held {} tunnels ({failed} failed)", held.len());
        tokio::time::sleep(Duration::from_secs_f64(a.hold_seconds)).await;
        return;
    }
    let deadline = Instant::now() + Duration::from_secs_f64(a.seconds);
    let mut tasks = Vec::new();
    for _ in 0..a.workers {
        let a = a.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = 0u64;
            if a.reuse {
                let mut buf = Vec::with_capacity(8192);
                while Instant::now() < deadline {
                    let Ok(mut s) = tunnel(&a).await else {
                        errors += 1;
                        continue;
                    };
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        match get_keepalive(&mut s, &a, &mut buf).await {
                            Ok(()) => lat.push(t.elapsed()),
                            Err(_) => {
                                errors += 1;
                                break;
                            }
                        }
                    }
                }
                return (lat, errors);
            }
            while Instant::now() < deadline {
                let t = Instant::now();
                match tokio::time::timeout(Duration::from_secs(10), one(&a)).await {
                    Ok(Ok(())) => lat.push(t.elapsed()),
                    _ => errors += 1,
                }
            }
            (lat, errors)
        }));
    }
    let start = Instant::now();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        if let Ok((l, e)) = t.await {
            all.extend(l);
            errors += e;
        }
    }
    let took = start.elapsed().as_secs_f64().max(a.seconds);
    all.sort();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "tunnels/s {:.0} ok {} errors {} p50_ms {:.2} p99_ms {:.2}",
        all.len() as f64 / took,
        all.len(),
        errors,
        pct(0.50),
        pct(0.99)
    );
}
