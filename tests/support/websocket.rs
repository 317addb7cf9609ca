//! WebSocket peers for upgrade tests: a Python `websockets` echo server
//! (Debian python3-websockets), a `websockets` client that reaches it
//! through a CONNECT tunnel, a raw RFC 6455 client for absolute-form
//! upgrades, and squid configured to pass upgrades. Loopback only.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use super::{free_port, run_cmd, spawn_squid, temp_dir, wait_started, write_file, Child, CmdOut};

/// The system interpreter: python3-websockets is a Debian package.
pub const PYTHON: &str = "/usr/bin/python3";

const ECHO_SERVER: &str = r#"
import asyncio, sys, websockets

async def echo(ws, path=None):
    async for msg in ws:
        await ws.send(msg)

async def main():
    async with websockets.serve(echo, "127.0.0.1", int(sys.argv[1])):
        print("ready", flush=True)
        await asyncio.Future()

asyncio.run(main())
"#;

const CONNECT_CLIENT: &str = r#"
import asyncio, socket, sys, websockets

async def main():
    proxy_port, target = int(sys.argv[1]), sys.argv[2]
    s = socket.create_connection(("127.0.0.1", proxy_port), timeout=10)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        b = s.recv(1)
        if not b:
            sys.exit("proxy closed before answering CONNECT")
        head += b
    if head.split(b" ")[1] != b"200":
        sys.exit("CONNECT answered: " + head.decode(errors="replace"))
    async with websockets.connect(f"ws://{target}/chat", sock=s, open_timeout=10) as ws:
        for m in ["hello", "a second message", "x" * 70000]:
            await ws.send(m)
            got = await asyncio.wait_for(ws.recv(), 10)
            if got != m:
                sys.exit(f"echo mismatch: sent {len(m)} got {len(got)}")
            print(f"echoed {len(m)}", flush=True)
        await ws.send(b"\x00\x01binary")
        if await asyncio.wait_for(ws.recv(), 10) != b"\x00\x01binary":
            sys.exit("binary echo mismatch")
    print(f"closed {ws.close_code}", flush=True)

asyncio.run(main())
"#;

fn python_present() {
    assert!(
        std::path::Path::new(PYTHON).exists(),
        "{PYTHON} is missing: install python3 and python3-websockets (scripts/test does)"
    );
}

/// `websockets` echo server on a free loopback port.
pub struct WsEcho {
    pub child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl WsEcho {
    pub fn start() -> WsEcho {
        python_present();
        let dir = temp_dir("wsecho", false);
        let script = dir.path().join("ws_echo.py");
        write_file(&script, ECHO_SERVER, 0o644);
        let port = free_port();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script).arg(port.to_string());
        let mut child = Child::spawn("ws-echo", cmd, dir.path());
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        wait_started(&mut child, addr, "websockets echo server");
        WsEcho {
            child,
            addr,
            _dir: dir,
        }
    }
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

/// Runs the `websockets` client through a CONNECT tunnel of the proxy at
/// `proxy` to `target` (`host:port`): three text messages (one 70 kB), one
/// binary, each echoed, then the close handshake. Prints `closed 1000`.
pub fn ws_client_via_connect(proxy: SocketAddr, target: SocketAddr) -> CmdOut {
    python_present();
    let dir = temp_dir("wsclient", false);
    let script: PathBuf = dir.path().join("ws_client.py");
    write_file(&script, CONNECT_CLIENT, 0o644);
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script)
        .arg(proxy.port().to_string())
        .arg(target.to_string());
    run_cmd(cmd, Duration::from_secs(40))
}

/// The RFC 6455 example key and its `Sec-WebSocket-Accept`.
pub const WS_KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
pub const WS_ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Sends an absolute-form WebSocket upgrade for `http://origin/path` on a
/// new connection to `proxy`; returns the stream and the response head.
pub fn raw_upgrade(proxy: SocketAddr, origin: SocketAddr, path: &str) -> (TcpStream, String) {
    let mut s = TcpStream::connect(proxy).expect("connect to the proxy");
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    let h = upgrade_on(&mut s, origin, path);
    (s, h)
}

/// Writes the absolute-form upgrade request on `s`; returns the response head.
pub fn upgrade_on<S: Read + Write>(s: &mut S, origin: SocketAddr, path: &str) -> String {
    let head = format!(
        "GET http://{origin}{path} HTTP/1.1\r\nHost: {origin}\r\nConnection: Upgrade\r\n\
         Upgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {WS_KEY}\r\n\r\n"
    );
    s.write_all(head.as_bytes()).unwrap();
    super::rawclient::read_head(s)
}

/// Writes one final frame, masked as a client must.
pub fn send_frame<S: Write>(s: &mut S, opcode: u8, payload: &[u8]) {
    let mask = [0x37u8, 0xfa, 0x21, 0x3d];
    let mut f = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= 0xffff => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&f).unwrap();
}

/// Reads one unmasked frame from the server: (opcode, payload).
pub fn read_frame<S: Read>(s: &mut S) -> std::io::Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h)?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b)?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b)?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload)?;
    Ok((h[0] & 0x0f, payload))
}

/// squid with `http_upgrade_request_protocols websocket allow all` (squid
/// refuses upgrades by default).
pub struct SquidUpgrades {
    pub child: Child,
    addr: SocketAddr,
    _dir: tempfile::TempDir,
}

impl SquidUpgrades {
    pub fn start() -> SquidUpgrades {
        // squid drops to user `proxy`: its directory must be writable by it.
        let dir = temp_dir("squid-ws", true);
        let d = dir.path();
        let port = free_port();
        let conf = format!(
            "http_port 127.0.0.1:{port}\n\
             cache deny all\ncache_mem 0 MB\n\
             cache_log {d}/cache.log\npid_filename {d}/squid.pid\n\
             pinger_enable off\nshutdown_lifetime 1 second\n\
             coredump_dir {d}\nnetdb_filename none\nlogfile_rotate 0\n\
             dns_nameservers 127.0.0.1\nvisible_hostname proxyguard-test\n\
             access_log none\n\
             http_upgrade_request_protocols websocket allow all\n\
             http_access allow localhost\nhttp_access deny all\n",
            d = d.display()
        );
        let (child, addr) = spawn_squid(d, &conf, port);
        SquidUpgrades {
            child,
            addr,
            _dir: dir,
        }
    }
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}
