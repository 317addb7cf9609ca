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
    /// Relay the first `n` response bytes, then close both ways.
    CutAfter(usize),
    /// Relay responses at about this many bytes per second.
    Drip(usize),
    /// Wait this long before connecting on (a slow path).
    Latency(Duration),
    /// Alternate between relaying and resetting every period.
    Flap(Duration),
}

pub struct FaultRelay {
    pub addr: SocketAddr,
    fault: Arc<Mutex<Fault>>,
    stop: Arc<AtomicBool>,
    accepted: Arc<AtomicUsize>,
}

impl FaultRelay {
    pub fn start(to: SocketAddr, fault: Fault) -> FaultRelay {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let addr = l.local_addr().unwrap();
        let fault = Arc::new(Mutex::new(fault));
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (f, st, acc) = (fault.clone(), stop.clone(), accepted.clone());
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
                std::thread::spawn(move || serve(c, to, now, &held, &st));
            }
        });
        FaultRelay {
            addr,
            fault,
            stop,
            accepted,
        }
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
