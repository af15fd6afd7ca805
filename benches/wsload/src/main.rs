//! WebSocket echo load generator for `benches/run.py`.
//!
//! Opens C connections to an echo endpoint; once all of them are open (or have failed),
//! each keeps W messages of S bytes in flight for D seconds: it sends W, then sends one
//! more for every echo it gets back (W = 1 is ping-pong). Every echo is checked against
//! what was sent. At the end it prints one JSON line on stdout: the echoes received within
//! the D seconds, messages/s, latency percentiles (send to echo, µs) and errors by kind.
//!
//! wrk's report (benches/wrk_report.lua) uses the same key names for the same things
//! (`requests`, `duration_us`, `latency_us`, `errors`), so the harness reads both alike.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::sync::Barrier;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Bytes, Message};
use tokio_tungstenite::{client_async_with_config, WebSocketStream};

const USAGE: &str = "\
usage: wsload --url ws://HOST:PORT/PATH [-c CONNECTIONS] [-d SECONDS] [-s BYTES]
              [-w WINDOW] [--text] [-t THREADS] [--timeout SECONDS]

  -c, --connections  WebSocket connections (default 64)
  -d, --duration     seconds of load, counted once every connection is open (default 10)
  -s, --size         message payload in bytes (default 64)
  -w, --window       messages in flight per connection; 1 is ping-pong (default 1)
      --text         text frames instead of binary ones
  -t, --threads      client runtime threads (default: the CPUs this process may use)
      --timeout      seconds to wait for one echo before counting a timeout (default 10)";

struct Opts {
    host: String,
    port: u16,
    url: String,
    connections: usize,
    duration: Duration,
    size: usize,
    window: usize,
    text: bool,
    threads: usize,
    timeout: Duration,
}

fn parse_args(args: &[String]) -> Result<Opts, String> {
    let mut url = None;
    let mut connections = 64usize;
    let mut duration = 10.0f64;
    let mut size = 64usize;
    let mut window = 1usize;
    let mut text = false;
    let mut threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut timeout_s = 10.0f64;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_string())),
            _ => (arg.as_str(), None),
        };
        if flag == "--text" {
            text = true;
            continue;
        }
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = match inline {
            Some(v) => v,
            None => it
                .next()
                .cloned()
                .ok_or_else(|| format!("{flag} needs a value"))?,
        };
        let bad = |what: &str| format!("{flag}: {what}, got {value:?}");
        match flag {
            "--url" => url = Some(value.clone()),
            "-c" | "--connections" => {
                connections = value.parse().map_err(|_| bad("a count of connections"))?
            }
            "-d" | "--duration" => duration = value.parse().map_err(|_| bad("seconds"))?,
            "-s" | "--size" => size = value.parse().map_err(|_| bad("a size in bytes"))?,
            "-w" | "--window" => window = value.parse().map_err(|_| bad("a message count"))?,
            "-t" | "--threads" => threads = value.parse().map_err(|_| bad("a thread count"))?,
            "--timeout" => timeout_s = value.parse().map_err(|_| bad("seconds"))?,
            _ => return Err(format!("unknown option {flag}")),
        }
    }
    let url = url.ok_or("--url is required")?;
    let rest = url
        .strip_prefix("ws://")
        .ok_or_else(|| format!("--url: only ws:// URLs are supported, got {url:?}"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let (host, port) = match authority.rsplit_once(':') {
        Some((h, p)) => (
            h,
            p.parse()
                .map_err(|_| format!("--url: bad port in {url:?}"))?,
        ),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(format!("--url: no host in {url:?}"));
    }
    if connections == 0 || window == 0 || threads == 0 {
        return Err("--connections, --window and --threads must be at least 1".into());
    }
    if !(duration > 0.0 && duration.is_finite() && timeout_s > 0.0 && timeout_s.is_finite()) {
        return Err("--duration and --timeout must be positive".into());
    }
    Ok(Opts {
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        url,
        connections,
        duration: Duration::from_secs_f64(duration),
        size,
        window,
        text,
        threads,
        timeout: Duration::from_secs_f64(timeout_s),
    })
}

/// What one connection did.
#[derive(Default)]
struct ConnStats {
    /// Send-to-echo time of every echo received before the deadline, µs.
    latencies_us: Vec<u32>,
    bytes: u64,
    connect: u64,
    read: u64,
    write: u64,
    timeout: u64,
    mismatch: u64,
    first_error: Option<String>,
}

impl ConnStats {
    fn fail(&mut self, kind: &str, detail: String) {
        match kind {
            "connect" => self.connect += 1,
            "read" => self.read += 1,
            "write" => self.write += 1,
            "timeout" => self.timeout += 1,
            _ => self.mismatch += 1,
        }
        self.first_error.get_or_insert(format!("{kind}: {detail}"));
    }
}

type Ws = WebSocketStream<TcpStream>;

async fn open(opts: &Opts) -> Result<Ws, String> {
    let tcp = TcpStream::connect((opts.host.as_str(), opts.port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.set_nodelay(true).map_err(|e| e.to_string())?;
    // tungstenite zero-fills its read buffer up to `read_buffer_size` before every
    // read: at the default 128 KiB, memset was 36% of this client's CPU (perf, 512
    // connections of 64-byte echoes), which left the server less of the machine. A
    // buffer sized to the messages reads the same frames.
    let config =
        WebSocketConfig::default().read_buffer_size((opts.size + 64).clamp(4096, 128 * 1024));
    let (ws, _response) = client_async_with_config(opts.url.as_str(), tcp, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

fn same_payload(got: &Message, sent: &Message) -> bool {
    match (got, sent) {
        (Message::Binary(a), Message::Binary(b)) => a == b,
        (Message::Text(a), Message::Text(b)) => a == b,
        _ => false,
    }
}

/// One connection: open, wait for the others, then keep `window` messages in flight
/// until `deadline` (which the barrier's leader fixes once everyone is ready).
async fn connection(
    opts: Arc<Opts>,
    payload: Message,
    barrier: Arc<Barrier>,
    start: Arc<std::sync::OnceLock<Instant>>,
) -> ConnStats {
    let mut st = ConnStats::default();
    let opened = match timeout(opts.timeout, open(&opts)).await {
        Ok(r) => r,
        Err(_) => Err(format!("not open within {:?}", opts.timeout)),
    };
    if barrier.wait().await.is_leader() {
        let _ = start.set(Instant::now());
    }
    barrier.wait().await; // the start time is set
    let mut ws = match opened {
        Ok(ws) => ws,
        Err(e) => {
            st.fail("connect", e);
            return st;
        }
    };
    let Some(&t0) = start.get() else {
        return st;
    };
    let deadline = t0 + opts.duration;
    let mut in_flight = std::collections::VecDeque::with_capacity(opts.window);
    for _ in 0..opts.window {
        if let Err(e) = ws.feed(payload.clone()).await {
            st.fail("write", e.to_string());
            return st;
        }
        in_flight.push_back(Instant::now());
    }
    if let Err(e) = ws.flush().await {
        st.fail("write", e.to_string());
        return st;
    }
    while let Some(sent_at) = in_flight.front().copied() {
        let msg = match timeout(opts.timeout, ws.next()).await {
            Err(_) => {
                st.fail("timeout", format!("no echo within {:?}", opts.timeout));
                return st;
            }
            Ok(None) => {
                st.fail("read", "connection closed by the server".into());
                return st;
            }
            Ok(Some(Err(e))) => {
                st.fail("read", e.to_string());
                return st;
            }
            Ok(Some(Ok(msg))) => msg,
        };
        if matches!(msg, Message::Ping(_) | Message::Pong(_) | Message::Frame(_)) {
            continue; // tungstenite answers pings itself
        }
        if let Message::Close(frame) = msg {
            st.fail("read", format!("server closed the WebSocket: {frame:?}"));
            return st;
        }
        let now = Instant::now();
        in_flight.pop_front();
        if !same_payload(&msg, &payload) {
            st.fail("mismatch", format!("echo of {} bytes differs", msg.len()));
            return st;
        }
        if now <= deadline {
            let us = now.saturating_duration_since(sent_at).as_micros();
            st.latencies_us.push(u32::try_from(us).unwrap_or(u32::MAX));
            st.bytes += msg.len() as u64;
            if let Err(e) = ws.send(payload.clone()).await {
                st.fail("write", e.to_string());
                return st;
            }
            in_flight.push_back(Instant::now());
        }
        // Past the deadline: send nothing more, drain what is in flight (not counted).
    }
    // Close handshake, so servers see a normal close rather than a reset.
    let _ = timeout(Duration::from_secs(2), async {
        if ws.close(None).await.is_ok() {
            while let Some(Ok(_)) = ws.next().await {}
        }
    })
    .await;
    st
}

fn percentile(sorted: &[u32], p: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (p / 100.0 * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn report(opts: &Opts, stats: Vec<ConnStats>, elapsed: Duration) -> String {
    let mut lat: Vec<u32> = Vec::new();
    let (mut bytes, mut connect, mut read, mut write, mut tmo, mut mismatch) = (0, 0, 0, 0, 0, 0);
    let mut first_error = None;
    for s in stats {
        lat.extend_from_slice(&s.latencies_us);
        bytes += s.bytes;
        connect += s.connect;
        read += s.read;
        write += s.write;
        tmo += s.timeout;
        mismatch += s.mismatch;
        if first_error.is_none() {
            first_error = s.first_error;
        }
    }
    lat.sort_unstable();
    let n = lat.len() as u64;
    let secs = elapsed.as_secs_f64();
    let mean = if n > 0 {
        lat.iter().map(|&x| f64::from(x)).sum::<f64>() / n as f64
    } else {
        0.0
    };
    format!(
        "{{\"url\": {}, \"connections\": {}, \"window\": {}, \"size\": {}, \"text\": {}, \
         \"duration_us\": {}, \"requests\": {n}, \"messages\": {n}, \"msg_per_s\": {:.1}, \
         \"bytes\": {bytes}, \"errors\": {{\"connect\": {connect}, \"read\": {read}, \
         \"write\": {write}, \"timeout\": {tmo}, \"mismatch\": {mismatch}}}, \
         \"latency_us\": {{\"mean\": {mean:.2}, \"max\": {}, \"p50\": {}, \"p75\": {}, \
         \"p90\": {}, \"p99\": {}, \"p99_9\": {}}}, \"first_error\": {}}}",
        json_string(&opts.url),
        opts.connections,
        opts.window,
        opts.size,
        opts.text,
        elapsed.as_micros(),
        if secs > 0.0 { n as f64 / secs } else { 0.0 },
        lat.last().copied().unwrap_or(0),
        percentile(&lat, 50.0),
        percentile(&lat, 75.0),
        percentile(&lat, 90.0),
        percentile(&lat, 99.0),
        percentile(&lat, 99.9),
        first_error
            .as_deref()
            .map_or("null".to_string(), json_string),
    )
}

async fn run(opts: Arc<Opts>) -> String {
    let payload = if opts.text {
        Message::text("x".repeat(opts.size))
    } else {
        Message::Binary(Bytes::from(vec![b'x'; opts.size]))
    };
    let barrier = Arc::new(Barrier::new(opts.connections));
    let start = Arc::new(std::sync::OnceLock::new());
    let tasks: Vec<_> = (0..opts.connections)
        .map(|_| {
            tokio::spawn(connection(
                opts.clone(),
                payload.clone(),
                barrier.clone(),
                start.clone(),
            ))
        })
        .collect();
    let mut stats = Vec::with_capacity(tasks.len());
    for t in tasks {
        match t.await {
            Ok(s) => stats.push(s),
            Err(e) => {
                let mut s = ConnStats::default();
                s.fail("read", format!("connection task failed: {e}"));
                stats.push(s);
            }
        }
    }
    // The measured window is the configured duration: echoes are counted only up to
    // the deadline, whatever the drain and close that follow take.
    let elapsed = match start.get() {
        Some(t0) => opts.duration.min(t0.elapsed()),
        None => Duration::ZERO,
    };
    report(&opts, stats, elapsed)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let opts = match parse_args(&args) {
        Ok(o) => Arc::new(o),
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("wsload: {e} (wsload --help lists the options)");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(opts.threads)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wsload: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let out = runtime.block_on(run(opts));
    println!("{out}");
    ExitCode::SUCCESS
}
