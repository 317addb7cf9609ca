//! Real gRPC peers for reverse-route tests: Python `grpcio` servers with a
//! generic handler (raw bytes, no generated stubs) and a `grpcio` client.
//! Python is Debian's `/usr/bin/python3` with `python3-grpcio`
//! (scripts/test installs it); a missing module fails the test loudly.

use super::*;

/// The Debian interpreter that has `grpc` (not a pyenv shim).
pub const PYTHON: &str = "/usr/bin/python3";

const SERVER: &str = r#"
import sys, time, os, grpc
from concurrent import futures

port, name, workdir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
mode_file = os.path.join(workdir, name + ".mode")
health_file = os.path.join(workdir, name + ".health")

def mode():
    try:
        return open(mode_file).read().strip()
    except OSError:
        return "ok"

def log(method, ctx):
    remaining = ctx.time_remaining()
    print("CALL %s remaining=%s" % (method, "none" if remaining is None else "%.3f" % remaining), flush=True)

def gate(ctx):
    if mode() == "unavailable":
        ctx.abort(grpc.StatusCode.UNAVAILABLE, name + " is draining")

def unary(req, ctx):
    log("Unary", ctx)
    gate(ctx)
    return name.encode() + b":" + req

def stream(req, ctx):
    log("Stream", ctx)
    gate(ctx)
    for i in range(3):
        yield ("%s:%d" % (name, i)).encode()

def stream_then_fail(req, ctx):
    log("StreamThenFail", ctx)
    gate(ctx)
    yield (name + ":first").encode()
    ctx.abort(grpc.StatusCode.UNAVAILABLE, "gone after one message")

def slow(req, ctx):
    log("Slow", ctx)
    for _ in range(200):
        if not ctx.is_active():
            break
        time.sleep(0.05)
    return name.encode()

def health(req, ctx):
    try:
        text = open(health_file).read().strip()
    except OSError:
        text = "SERVING"
    print("CALL Health %s" % text, flush=True)
    return bytes([0x08, 1 if text == "SERVING" else 2])

ident = lambda b: b
handlers = {
    "Unary": grpc.unary_unary_rpc_method_handler(unary, ident, ident),
    "Stream": grpc.unary_stream_rpc_method_handler(stream, ident, ident),
    "StreamThenFail": grpc.unary_stream_rpc_method_handler(stream_then_fail, ident, ident),
    "Slow": grpc.unary_unary_rpc_method_handler(slow, ident, ident),
}
server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((
    grpc.method_handlers_generic_handler("test.Echo", handlers),
    grpc.method_handlers_generic_handler("grpc.health.v1.Health", {
        "Check": grpc.unary_unary_rpc_method_handler(health, ident, ident)}),
))
server.add_insecure_port("127.0.0.1:%d" % port)
server.start()
print("READY", flush=True)
server.wait_for_termination()
"#;

const CLIENT: &str = r#"
import sys, time, grpc
target = sys.argv[1]
timeout = None if sys.argv[2] == "none" else float(sys.argv[2])
opts = [("grpc.enable_http_proxy", 0), ("grpc.enable_retries", 0)]
ch = grpc.insecure_channel(target, options=opts)
ok = failed = 0
for cmd in sys.argv[3:]:
    kind, _, n = cmd.partition("*")
    for i in range(int(n or 1)):
        t0 = time.time()
        try:
            if kind in ("Unary", "Slow"):
                r = ch.unary_unary("/test.Echo/" + kind)(b"ping%d" % i, timeout=timeout)
                print("OK %s %s" % (kind, r.decode()), flush=True)
            else:
                got = []
                try:
                    for m in ch.unary_stream("/test.Echo/" + kind)(b"s", timeout=timeout):
                        got.append(m.decode())
                finally:
                    print("MSGS %s %s" % (kind, ",".join(got)), flush=True)
                print("OK %s %s" % (kind, ",".join(got)), flush=True)
            ok += 1
        except grpc.RpcError as e:
            failed += 1
            print("FAIL %s %s %.3fs %s" % (kind, e.code().name, time.time() - t0, e.details()), flush=True)
print("calls ok=%d failed=%d" % (ok, failed), flush=True)
"#;

/// One Python gRPC backend (`test.Echo` + `grpc.health.v1.Health`).
pub struct GrpcBackend {
    pub name: String,
    pub port: u16,
    pub child: Child,
    dir: tempfile::TempDir,
}

impl GrpcBackend {
    pub fn start(name: &str) -> GrpcBackend {
        let dir = temp_dir(&format!("grpc-{name}"), false);
        let script = dir.path().join("server.py");
        write_file(&script, SERVER, 0o644);
        let port = free_port();
        let mut cmd = Command::new(PYTHON);
        cmd.arg(&script)
            .arg(port.to_string())
            .arg(name)
            .arg(dir.path());
        let mut child = Child::spawn_env(&format!("grpc-{name}"), cmd, dir.path(), &[]);
        let ready = wait_until(Duration::from_secs(20), || {
            child.stdout().contains("READY") || !child.alive()
        });
        assert!(
            ready && child.alive(),
            "gRPC backend {name} did not start (is python3-grpcio installed?)\n{}",
            child.log()
        );
        assert!(wait_port(
            SocketAddr::from(([127, 0, 0, 1], port)),
            Duration::from_secs(10)
        ));
        GrpcBackend {
            name: name.to_string(),
            port,
            child,
            dir,
        }
    }

    /// `h2c://127.0.0.1:P`.
    pub fn url(&self) -> String {
        format!("h2c://127.0.0.1:{}", self.port)
    }

    /// `ok` or `unavailable` (every call answers UNAVAILABLE before any message).
    pub fn set_mode(&self, mode: &str) {
        write_file(
            &self.dir.path().join(format!("{}.mode", self.name)),
            mode,
            0o644,
        );
    }

    /// `SERVING` or `NOT_SERVING` for grpc.health.v1.
    pub fn set_health(&self, status: &str) {
        write_file(
            &self.dir.path().join(format!("{}.health", self.name)),
            status,
            0o644,
        );
    }

    /// Calls of `method` this backend received.
    pub fn calls(&self, method: &str) -> usize {
        let needle = format!("CALL {method} ");
        self.child
            .stdout()
            .lines()
            .filter(|l| l.starts_with(&needle))
            .count()
    }

    /// The `remaining=` deadline values logged for `method` (None = no deadline).
    pub fn remaining(&self, method: &str) -> Vec<Option<f64>> {
        let needle = format!("CALL {method} remaining=");
        self.child
            .stdout()
            .lines()
            .filter_map(|l| l.strip_prefix(&needle))
            .map(|v| v.parse().ok())
            .collect()
    }
}

/// What a client run saw.
#[derive(Debug)]
pub struct GrpcCalls {
    pub ok: usize,
    pub failed: usize,
    pub out: String,
}

impl GrpcCalls {
    /// Lines starting with `prefix`.
    pub fn lines(&self, prefix: &str) -> Vec<String> {
        self.out
            .lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_string)
            .collect()
    }
}

/// Runs the grpcio client against `target` (`127.0.0.1:P`): `calls` like
/// `["Unary*10", "Stream*3"]`; `timeout_s` = per-call deadline.
pub fn grpc_client(target: &str, timeout_s: Option<f64>, calls: &[&str]) -> GrpcCalls {
    let dir = temp_dir("grpc-client", false);
    let script = dir.path().join("client.py");
    write_file(&script, CLIENT, 0o644);
    let mut cmd = Command::new(PYTHON);
    cmd.arg(&script)
        .arg(target)
        .arg(timeout_s.map_or("none".to_string(), |t| t.to_string()));
    cmd.args(calls);
    for v in PROXY_ENV_VARS {
        cmd.env_remove(v);
    }
    let out = run_cmd(cmd, Duration::from_secs(120));
    let summary = out
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("calls ok="))
        .unwrap_or_else(|| panic!("gRPC client did not finish: {out:?}"))
        .to_string();
    let (ok, failed) = summary.split_once(" failed=").expect("summary");
    GrpcCalls {
        ok: ok.parse().unwrap(),
        failed: failed.trim().parse().unwrap(),
        out: out.stdout,
    }
}
