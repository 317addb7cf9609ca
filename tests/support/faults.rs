//! A fault-injecting TCP relay for the gray-failure matrix: it sits in front
//! of a real peer (tinyproxy, microsocks, nginx) and shows, on demand, the
//! faults real proxies show but no peer does on request. The fault can be
//! changed while it runs; each new connection takes the fault current at
//! accept time.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Fault {
    /// Relay both ways untouched.
    Pass,
    /// Accept and never answer (a hung proxy, a full accept queue behind an SLB).
    Silent,
    /// Accept, then close at once (FIN).
    AcceptClose,
    /// Accept, then reset (RST).
    Reset,
    /// Relay the request and the response head, then stall forever.
    StallAfterHead,
    /// Like `StallAfterHead`, but the first `n` response bytes pass first
    /// (a SOCKS5 upstream's method and connect replies, which hold no
    /// `\r\n\r\n`): the stall comes after the HTTP head inside the tunnel.
    StallAfterHeadPast(usize),
    /// Relay the first `n` response bytes, then close both ways.
    CutAfter(usize),
    /// Relay responses at about this many bytes per second.
    Drip(usize),
    /// Wait this long before connecting on (a slow path).
    Latency(Duration),
    /// Alternate between relaying and resetting every period.
    Flap(Duration),
    /// Relay, but forget a connection idle (no byte either way) for
    /// `after`, as an SLB or NAT gateway does: the client's next bytes are
    /// answered with a reset (`reset`) or swallowed for ever (silent).
    IdleCut { after: Duration, reset: bool },
}

pub struct FaultRelay {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
    cuts: Arc<AtomicUsize>,
}

impl FaultRelay {
    pub fn start(to: SocketAddr, fault: Fault) -> FaultRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(fault));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let cuts = Arc::new(AtomicUsize::new(0));
        let (f, st, acc, cu) = (fault.clone(), stop.clone(), accepted.clone(), cuts.clone());
        let born = Instant::now();
        std::thread::spawn(move || {
            // Sockets held open by `Silent` and `StallAfterHead` live here
            // until the relay is dropped.
            let held: Arc<Mutex<Vec<TcpStream>>> = Arc::default();
            while !st.load(Ordering::Relaxed) {
                let Ok((c, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(2));
                    continue;
                };
                acc.fetch_add(1, Ordering::Relaxed);
                let _ = c.set_nonblocking(false);
                let mut now = *f.lock().unwrap();
                if let Fault::Flap(p) = now {
                    let phase = born.elapsed().as_millis() / p.as_millis().max(1);
                    now = if phase % 2 == 0 {
                        Fault::Pass
                    } else {
                        Fault::Reset
                    };
                }
                let (held, st) = (held.clone(), st.clone());
                if let Fault::IdleCut { after, reset } = now {
                    let cu = cu.clone();
                    std::thread::spawn(move || serve_idle_cut(c, to, after, reset, &held, &cu));
                    continue;
                }
                std::thread::spawn(move || serve(c, to, now, &held, &st));
            }
        });
        FaultRelay {
            addr,
            fault,
            stop,
            accepted,
            cuts,
        }
    }

    /// Connections forgotten by `IdleCut` and then used by the client.
    pub fn cuts(&self) -> usize {
        self.cuts.load(Ordering::SeqCst)
    }

    pub fn set(&self, fault: Fault) {
        *self.fault.lock().unwrap() = fault;
    }

    pub fn url(&self, scheme: &str) -> String {
        format!("{scheme}://{}", self.addr)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> usize {
        self.accepted.load(Ordering::Relaxed)
    }
}

impl Drop for FaultRelay {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn serve(
    c: TcpStream,
    to: SocketAddr,
    fault: Fault,
    held: &Mutex<Vec<TcpStream>>,
    stop: &AtomicBool,
) {
    match fault {
        Fault::Silent => {
            // Keep it open, read nothing, answer nothing.
            held.lock().unwrap().push(c);
            return;
        }
        Fault::AcceptClose => {
            let _ = c.shutdown(Shutdown::Both);
            return;
        }
        Fault::Reset => {
            let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
            drop(c);
            return;
        }
        Fault::Latency(d) => std::thread::sleep(d),
        _ => {}
    }
    let Ok(up) = TcpStream::connect(to) else {
        let _ = socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO));
        return;
    };
    let _ = up.set_nodelay(true);
    let _ = c.set_nodelay(true);
    // Client → upstream: plain copy.
    let (mut c2, mut up2) = (c.try_clone().unwrap(), up.try_clone().unwrap());
    let fwd = std::thread::spawn(move || {
        let _ = std::io::copy(&mut c2, &mut up2);
        let _ = up2.shutdown(Shutdown::Write);
    });
    // Upstream → client: where the faults apply.
    let (mut up, mut c) = (up, c);
    let mut buf = [0u8; 16 * 1024];
    let mut sent = 0usize;
    let mut head = Vec::new();
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = match up.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let chunk = &buf[..n];
        match fault {
            Fault::StallAfterHead => {
                head.extend_from_slice(chunk);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let _ = c.write_all(&head[..i + 4]);
                    // Stall: hold both sockets open, send nothing more.
                    held.lock().unwrap().push(c);
                    held.lock().unwrap().push(up);
                    return;
                }
            }
            Fault::StallAfterHeadPast(skip) => {
                let pass = n.min(skip.saturating_sub(sent));
                sent += pass;
                if pass > 0 && c.write_all(&chunk[..pass]).is_err() {
                    break;
                }
                head.extend_from_slice(&chunk[pass..]);
                if let Some(i) = head.windows(4).position(|w| w == b"\r\n\r\n") {
                    let _ = c.write_all(&head[..i + 4]);
                    held.lock().unwrap().push(c);
                    held.lock().unwrap().push(up);
                    return;
                }
            }
            Fault::CutAfter(limit) => {
                let take = n.min(limit.saturating_sub(sent));
                if c.write_all(&chunk[..take]).is_err() {
                    break;
                }
                sent += take;
                if sent >= limit {
                    let _ = c.shutdown(Shutdown::Both);
                    let _ = up.shutdown(Shutdown::Both);
                    break;
                }
            }
            Fault::Drip(rate) => {
                for piece in chunk.chunks(64.max(rate / 20)) {
                    if c.write_all(piece).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_secs_f64(piece.len() as f64 / rate as f64));
                }
            }
            _ => {
                if c.write_all(chunk).is_err() {
                    break;
                }
            }
        }
    }
    let _ = c.shutdown(Shutdown::Write);
    let _ = fwd.join();
}

/// `Fault::IdleCut`: relays both ways while tracking the last byte either
/// way; client bytes arriving after `after` of silence find the connection
/// forgotten.
fn serve_idle_cut(
    c: TcpStream,
    to: SocketAddr,
    after: Duration,
    reset: bool,
    held: &Mutex<Vec<TcpStream>>,
    cuts: &AtomicUsize,
) {
    let Ok(up) = TcpStream::connect(to) else {
        return;
    };
    let last = Arc::new(Mutex::new(Instant::now()));
    // Once forgotten, the client side gets no FIN: silence or a reset only.
    let forgotten = Arc::new(AtomicBool::new(false));
    let (mut up_r, mut c_w, l2, f2) = (
        up.try_clone().unwrap(),
        c.try_clone().unwrap(),
        last.clone(),
        forgotten.clone(),
    );
    let back = std::thread::spawn(move || {
        let mut buf = [0u8; 16 * 1024];
        loop {
            match up_r.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    *l2.lock().unwrap() = Instant::now();
                    if c_w.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            }
        }
        if !f2.load(Ordering::SeqCst) {
            let _ = c_w.shutdown(Shutdown::Write);
        }
    });
    let (mut c_r, mut up_w) = (c, up);
    let mut buf = [0u8; 16 * 1024];
    loop {
        let n = match c_r.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let idle = {
            let mut g = last.lock().unwrap();
            let idle = g.elapsed();
            *g = Instant::now();
            idle
        };
        if idle >= after {
            cuts.fetch_add(1, Ordering::SeqCst);
            forgotten.store(true, Ordering::SeqCst);
            let _ = up_w.shutdown(Shutdown::Both);
            if reset {
                let _ = socket2::SockRef::from(&c_r).set_linger(Some(Duration::ZERO));
                drop(c_r);
            } else {
                held.lock().unwrap().push(c_r);
            }
            let _ = back.join();
            return;
        }
        if up_w.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = up_w.shutdown(Shutdown::Write);
    let _ = back.join();
}
