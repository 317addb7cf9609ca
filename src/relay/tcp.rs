//! TCP-to-TCP relay, the common tunnel case (client socket ↔ direct target
//! or plain proxy upstream).
//!
//! Each direction starts with a 1 KiB buffer, so an idle tunnel costs almost
//! nothing. Once a read fills that buffer the direction is treated as bulk:
//! on Linux it switches to `splice(2)` through a pipe (bytes never enter user
//! space); elsewhere it grows the buffer. While the tunnel's messages are
//! followed (`Watch::body_idle`, see `framing`) the bytes must be seen, so
//! bulk goes through a 256 KiB buffer until the follower gives up — except
//! the far side's long opaque spans (the rest of a large HTTP body or
//! chunk, which the follower only counts): those are spliced on Linux too,
//! and reported to the follower by length. The two directions run on
//! `TcpStream::split` halves (borrowed, no locking).

use std::io;
use std::net::Shutdown;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use super::{cut_error, Dir, RelayEnd, RelayStats, Shared, Watch, LARGE, SMALL};

/// Relays between two TCP streams until both sides close, either errors,
/// `watch` ends the tunnel, or `cancel` resolves. `early`: bytes the far
/// side sent before the relay (already written to the client).
pub async fn relay_tcp(
    client: &mut TcpStream,
    upstream: &mut TcpStream,
    watch: Watch,
    early: &[u8],
    cancel: impl std::future::Future<Output = ()>,
) -> RelayStats {
    let shared = Shared::new(&watch);
    if !early.is_empty() {
        shared.seen(Dir::Down, early);
    }
    let mut up = 0u64;
    let mut down = early.len() as u64;
    let ended = AtomicBool::new(false);
    let (mut cr, mut cw) = client.split();
    let (mut ur, mut uw) = upstream.split();
    let end = {
        let copy = async {
            tokio::try_join!(
                pump(&mut cr, &mut uw, (&shared, Dir::Up), &ended, &mut up),
                pump(&mut ur, &mut cw, (&shared, Dir::Down), &ended, &mut down)
            )
        };
        tokio::select! {
            r = copy => if r.is_ok() { RelayEnd::Closed } else { RelayEnd::Error },
            end = shared.watch(&watch) => end,
            _ = cancel => RelayEnd::Cancelled,
        }
    };
    RelayStats {
        up,
        down,
        end: shared.end(end),
    }
}

/// Half-closes `w` once its source reached EOF, so the peer sees the end.
/// When the other direction has already ended, both sockets are closed
/// right after anyway (and close sends the FIN): skip the extra syscall.
fn finish(w: &TcpStream, ended: &AtomicBool) {
    if !ended.swap(true, Ordering::Relaxed) {
        let _ = socket2::SockRef::from(w).shutdown(Shutdown::Write);
    }
}

/// When a [`copy`] hands over to the next phase.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Until {
    /// EOF only.
    Eof,
    /// A read fills the buffer (time for the bulk path).
    Full,
    /// The framing no longer needs to see the bytes.
    Unfollowed,
    /// Like `Unfollowed`, or the far side's next [`SPLICE_SPAN`] bytes or
    /// more are opaque to the framing (time to splice them).
    #[cfg(target_os = "linux")]
    UnfollowedOrSpan,
}

/// Opaque far-side spans at least this long are spliced while following
/// (shorter ones, such as TLS records, are not worth the extra syscalls).
#[cfg(target_os = "linux")]
const SPLICE_SPAN: u64 = 64 * 1024;

/// One direction, `r` → `w`: a 1 KiB buffer while traffic is small; once a
/// read fills it, a 256 KiB buffer while the framing follows the tunnel
/// (it must see the bytes), then splice(2) on Linux, else (or without a
/// spare pipe) the 256 KiB buffer. Reads go through tokio's `AsyncRead`,
/// which skips the extra EAGAIN read after a short read.
async fn pump(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    side: (&Shared, Dir),
    ended: &AtomicBool,
    count: &mut u64,
) -> io::Result<()> {
    let mut small = [0u8; SMALL];
    if copy(r, w, &mut small, Until::Full, side, ended, count).await? {
        return Ok(());
    }
    let mut large = Vec::new();
    #[cfg(target_os = "linux")]
    let mut pipe = None;
    if side.0.following() {
        large = vec![0u8; LARGE];
        #[cfg(target_os = "linux")]
        if side.1 == Dir::Down {
            pipe = splice::Pipe::new().ok();
        }
        loop {
            #[cfg(target_os = "linux")]
            let until = match pipe {
                Some(_) => Until::UnfollowedOrSpan,
                None => Until::Unfollowed,
            };
            #[cfg(not(target_os = "linux"))]
            let until = Until::Unfollowed;
            if copy(r, w, &mut large, until, side, ended, count).await? {
                return Ok(());
            }
            if !side.0.following() {
                break;
            }
            #[cfg(target_os = "linux")]
            if let Some(pipe) = &pipe {
                if splice::span(pipe, r.as_ref(), w.as_ref(), side.0, ended, count).await? {
                    return Ok(());
                }
            }
        }
    }
    if side.1 == Dir::Up {
        side.0.client_unseen();
    }
    #[cfg(target_os = "linux")]
    if let Some(pipe) = pipe.or_else(|| splice::Pipe::new().ok()) {
        return splice::pump(&pipe, r.as_ref(), w.as_ref(), side, ended, count).await;
    }
    large.resize(LARGE, 0);
    copy(r, w, &mut large, Until::Eof, side, ended, count)
        .await
        .map(drop)
}

/// Copies through `buf` until EOF (`Ok(true)`) or `until` hands over to the
/// next phase (`Ok(false)`). The far side ending inside a message (see
/// [`Shared::far_ended`]) half-closes `w` and fails the copy.
async fn copy(
    r: &mut ReadHalf<'_>,
    w: &mut WriteHalf<'_>,
    buf: &mut [u8],
    until: Until,
    (shared, dir): (&Shared, Dir),
    ended: &AtomicBool,
    count: &mut u64,
) -> io::Result<bool> {
    let far = dir == Dir::Down && shared.framing.is_some();
    loop {
        if far {
            shared.waiting_far.store(true, Ordering::Relaxed);
        }
        let read = r.read(buf).await;
        if far {
            shared.waiting_far.store(false, Ordering::Relaxed);
        }
        let n = match read {
            Ok(n) => n,
            Err(e) => {
                if far {
                    shared.far_ended();
                }
                return Err(e);
            }
        };
        if n == 0 {
            finish(w.as_ref(), ended);
            if far && shared.far_ended() {
                return Err(cut_error());
            }
            return Ok(true);
        }
        *count += n as u64;
        shared.seen(dir, &buf[..n]);
        w.write_all(&buf[..n]).await?;
        match until {
            Until::Full if n == buf.len() => return Ok(false),
            Until::Unfollowed if !shared.following() => return Ok(false),
            #[cfg(target_os = "linux")]
            Until::UnfollowedOrSpan
                if !shared.following() || shared.far_opaque() >= SPLICE_SPAN =>
            {
                return Ok(false)
            }
            _ => {}
        }
    }
}

#[cfg(target_os = "linux")]
mod splice {
    use super::*;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
    use tokio::io::Interest;

    /// How much one splice moves at most; the pipe is sized to match.
    const CHUNK: usize = 256 * 1024;

    pub struct Pipe {
        r: OwnedFd,
        w: OwnedFd,
    }

    impl Pipe {
        pub fn new() -> io::Result<Pipe> {
            let mut fds = [0 as libc::c_int; 2];
            // SAFETY: `fds` is a valid two-element array for pipe2 to fill.
            if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: pipe2 succeeded, so both descriptors are open and ours.
            let pipe = unsafe {
                Pipe {
                    r: OwnedFd::from_raw_fd(fds[0]),
                    w: OwnedFd::from_raw_fd(fds[1]),
                }
            };
            // A bigger pipe means fewer syscalls per MB; the kernel may refuse
            // (pipe-max-size, per-user limits), then the default 64 KiB stays.
            // SAFETY: plain fcntl on a descriptor we own.
            unsafe { libc::fcntl(pipe.w.as_raw_fd(), libc::F_SETPIPE_SZ, CHUNK as libc::c_int) };
            Ok(pipe)
        }
    }

    fn splice(from: RawFd, to: RawFd, len: usize) -> io::Result<usize> {
        // SAFETY: null offsets are allowed for sockets and pipes; the
        // descriptors stay open for the call (borrowed from live owners).
        let n = unsafe {
            libc::splice(
                from,
                std::ptr::null_mut(),
                to,
                std::ptr::null_mut(),
                len,
                libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK,
            )
        };
        if n < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }

    /// Socket → pipe → socket. The pipe is always drained before the next
    /// fill, so EAGAIN on the fill means the socket is empty (never a full
    /// pipe) and readiness bookkeeping stays right.
    pub async fn pump(
        pipe: &Pipe,
        r: &TcpStream,
        w: &TcpStream,
        (shared, dir): (&Shared, Dir),
        ended: &AtomicBool,
        count: &mut u64,
    ) -> io::Result<()> {
        loop {
            let n = when_ready(
                r,
                Interest::READABLE,
                r.as_raw_fd(),
                pipe.w.as_raw_fd(),
                CHUNK,
            )
            .await?;
            if n == 0 {
                finish(w, ended);
                return Ok(());
            }
            *count += n as u64;
            shared.seen(dir, &[]);
            drain(pipe, w, n).await?;
        }
    }

    /// The far side's opaque span (bytes the framing only counts), spliced
    /// and reported to the framing by length, until less than
    /// [`SPLICE_SPAN`] of it is left (`Ok(false)`: back to showing bytes).
    /// The far side ending inside it is a cut; `Ok(true)` is an EOF the
    /// framing no longer calls one (it cannot be, while a span is owed).
    pub async fn span(
        pipe: &Pipe,
        r: &TcpStream,
        w: &TcpStream,
        shared: &Shared,
        ended: &AtomicBool,
        count: &mut u64,
    ) -> io::Result<bool> {
        loop {
            let opaque = shared.far_opaque();
            if opaque < SPLICE_SPAN {
                return Ok(false);
            }
            let len = usize::try_from(opaque).map_or(CHUNK, |o| o.min(CHUNK));
            shared.waiting_far.store(true, Ordering::Relaxed);
            let filled = when_ready(
                r,
                Interest::READABLE,
                r.as_raw_fd(),
                pipe.w.as_raw_fd(),
                len,
            )
            .await;
            shared.waiting_far.store(false, Ordering::Relaxed);
            let n = match filled {
                Ok(n) => n,
                Err(e) => {
                    shared.far_ended();
                    return Err(e);
                }
            };
            if n == 0 {
                finish(w, ended);
                if shared.far_ended() {
                    return Err(cut_error());
                }
                return Ok(true);
            }
            *count += n as u64;
            shared.far_skipped(n as u64);
            #[cfg(test)]
            tests::SPLICED.with(|s| s.set(s.get() + n as u64));
            drain(pipe, w, n).await?;
        }
    }

    /// Writes the `n` bytes in the pipe to `w`.
    async fn drain(pipe: &Pipe, w: &TcpStream, n: usize) -> io::Result<()> {
        let mut left = n;
        while left > 0 {
            match when_ready(
                w,
                Interest::WRITABLE,
                pipe.r.as_raw_fd(),
                w.as_raw_fd(),
                left,
            )
            .await?
            {
                0 => return Err(io::ErrorKind::WriteZero.into()),
                m => left -= m,
            }
        }
        Ok(())
    }

    /// Splices `from` → `to` once `s` is ready for `interest`, retrying
    /// after a spurious wake-up (EAGAIN clears tokio's readiness).
    async fn when_ready(
        s: &TcpStream,
        interest: Interest,
        from: RawFd,
        to: RawFd,
        len: usize,
    ) -> io::Result<usize> {
        loop {
            s.ready(interest).await?;
            match s.try_io(interest, || splice(from, to, len)) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                r => return r,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::net::TcpListener;

    thread_local! {
        /// Far bytes spliced as opaque spans on this thread's relays.
        pub static SPLICED: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let (b, _) = l.accept().await.unwrap();
        (a, b)
    }

    /// Bulk in both directions at once, past the small-buffer phase and
    /// through the splice path; every byte arrives in order and is counted.
    #[tokio::test]
    async fn bulk_both_ways_with_counts_and_half_close() {
        let (mut client, mut client_srv) = pair().await;
        let (mut upstream_cli, mut origin) = pair().await;
        let relay = tokio::spawn(async move {
            relay_tcp(
                &mut client_srv,
                &mut upstream_cli,
                Watch::idle(Duration::from_secs(10)),
                &[],
                std::future::pending(),
            )
            .await
        });
        let up: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        let down: Vec<u8> = (0..2_000_000u32).map(|i| (i % 241) as u8).collect();
        let (up2, down2) = (up.clone(), down.clone());
        let (mut cr, mut cw) = client.split();
        let (mut or, mut ow) = origin.split();
        let send_up = async {
            cw.write_all(&up2).await.unwrap();
            cw.shutdown().await.unwrap();
        };
        let send_down = async {
            ow.write_all(&down2).await.unwrap();
            ow.shutdown().await.unwrap();
        };
        let mut got_up = Vec::new();
        let mut got_down = Vec::new();
        let recv_up = or.read_to_end(&mut got_up);
        let recv_down = cr.read_to_end(&mut got_down);
        let (_, _, a, b) = tokio::join!(send_up, send_down, recv_up, recv_down);
        a.unwrap();
        b.unwrap();
        assert!(got_up == up, "client→upstream bytes differ");
        assert!(got_down == down, "upstream→client bytes differ");
        let stats = relay.await.unwrap();
        assert_eq!(stats.up, up.len() as u64);
        assert_eq!(stats.down, down.len() as u64);
        assert_eq!(stats.end, RelayEnd::Closed);
    }

    #[tokio::test]
    async fn idle_tunnel_times_out() {
        let (_client, mut client_srv) = pair().await;
        let (mut upstream_cli, _origin) = pair().await;
        let stats = relay_tcp(
            &mut client_srv,
            &mut upstream_cli,
            Watch::idle(Duration::from_millis(200)),
            &[],
            std::future::pending(),
        )
        .await;
        assert_eq!(stats.end, RelayEnd::Idle);
        assert_eq!(stats.up + stats.down, 0);
    }

    /// A client, an origin, and a followed relay between them (on a task).
    async fn followed() -> (TcpStream, TcpStream, tokio::task::JoinHandle<RelayStats>) {
        let (client, mut client_srv) = pair().await;
        let (mut upstream_cli, origin) = pair().await;
        let watch = Watch {
            body_idle: Some(Duration::from_secs(30)),
            ..Watch::idle(Duration::from_secs(30))
        };
        let relay = tokio::spawn(async move {
            relay_tcp(
                &mut client_srv,
                &mut upstream_cli,
                watch,
                &[],
                std::future::pending(),
            )
            .await
        });
        (client, origin, relay)
    }

    /// The bulk path keeps following while the far side's messages can be
    /// followed: a far side that closes 100 KB into a 200 KB HTTP body
    /// (past the small buffer) is a cut; a whole body is not.
    #[tokio::test]
    async fn a_cut_past_the_small_buffer_is_seen_on_real_sockets() {
        for whole in [false, true] {
            let (mut client, mut origin, relay) = followed().await;
            let head = b"HTTP/1.1 200 OK\r\nContent-Length: 200000\r\n\r\n".to_vec();
            client
                .write_all(b"GET / HTTP/1.1\r\nHost: o\r\n\r\n")
                .await
                .unwrap();
            let mut req = [0u8; 64];
            let _ = origin.read(&mut req).await.unwrap();
            let body = vec![7u8; if whole { 200_000 } else { 100_000 }];
            origin.write_all(&head).await.unwrap();
            origin.write_all(&body).await.unwrap();
            drop(origin);
            let mut got = Vec::new();
            let _ = client.read_to_end(&mut got).await;
            let _ = client.shutdown().await;
            let stats = relay.await.unwrap();
            assert_eq!(stats.down, (head.len() + body.len()) as u64);
            let want = if whole {
                RelayEnd::Closed
            } else {
                RelayEnd::Cut
            };
            assert_eq!(stats.end, want, "whole: {whole}");
        }
    }

    /// Reads one request head from `s`.
    async fn read_head(s: &mut TcpStream) {
        let mut got = Vec::new();
        let mut b = [0u8; 256];
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = s.read(&mut b).await.unwrap();
            assert!(n > 0, "closed before a whole head");
            got.extend_from_slice(&b[..n]);
        }
    }

    /// A long body inside a followed tunnel goes through splice (the
    /// follower only counts it) and every byte still arrives in order; the
    /// follower stays in step across it: the next response on the same
    /// connection, cut halfway through its body, is a cut, and whole it is
    /// not.
    #[tokio::test]
    async fn long_bodies_are_spliced_and_still_followed() {
        for whole in [false, true] {
            SPLICED.with(|s| s.set(0));
            let (mut client, mut origin, relay) = followed().await;
            let first: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
            let second: Vec<u8> = (0..1_000_000u32).map(|i| (i % 239) as u8).collect();
            let head = |n: usize| format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\n\r\n");
            let mut want = head(first.len()).into_bytes();
            want.extend_from_slice(&first);
            let sent_second = if whole {
                second.len()
            } else {
                second.len() / 2
            };
            let mut want2 = head(second.len()).into_bytes();
            want2.extend_from_slice(&second[..sent_second]);

            let req = b"GET / HTTP/1.1\r\nHost: o\r\n\r\n";
            client.write_all(req).await.unwrap();
            read_head(&mut origin).await;
            let (w1, w2) = (want.clone(), want2.clone());
            let serve = async move {
                origin.write_all(&w1).await.unwrap();
                read_head(&mut origin).await;
                origin.write_all(&w2).await.unwrap();
                drop(origin);
            };
            let fetch = async {
                let mut got = vec![0u8; want.len()];
                client.read_exact(&mut got).await.unwrap();
                client.write_all(req).await.unwrap();
                let mut rest = Vec::new();
                let _ = client.read_to_end(&mut rest).await;
                let _ = client.shutdown().await;
                (got, rest)
            };
            let (_, (got, rest)) = tokio::join!(serve, fetch);
            assert!(got == want, "the first response differs");
            assert!(rest == want2, "the second response differs");
            let stats = relay.await.unwrap();
            assert_eq!(stats.down, (want.len() + want2.len()) as u64);
            let end = if whole {
                RelayEnd::Closed
            } else {
                RelayEnd::Cut
            };
            assert_eq!(stats.end, end, "whole: {whole}");
            let spliced = SPLICED.with(|s| s.get());
            assert!(
                spliced >= 2_000_000,
                "only {spliced} bytes went through splice"
            );
        }
    }
}
