//! `meshbench`: a small, bounded TCP load generator for the mesh benchmark.
//!
//! Runs inside network namespaces (`ip netns exec ...`) and depends on
//! nothing but argv. Every client mode prints exactly one line of JSON on
//! stdout (`idle` a second once its connections passed the hold) and fails
//! (exit status 1) on any error of any connection (`connrate`: more than
//! `--max-errors`), never reporting over the successes alone. Every socket
//! has `TCP_NODELAY` and 10 s read/write timeouts, and every client loop is
//! bounded by a count and/or a time limit.
//!
//! ```text
//! meshbench serve    --bind ADDR:PORT
//! meshbench bulk     --to HOST:PORT --secs S
//! meshbench rr       --to HOST:PORT --size B --count N [--warmup W]
//! meshbench connrate --to HOST:PORT --count N [--secs MAX] [--parallel P] [--max-errors E]
//! meshbench idle     --to HOST:PORT --count N --hold-secs H
//! ```
//!
//! Protocol: the client's first byte picks the server behaviour: `S` (sink:
//! count bytes until EOF, reply with the count as 8 bytes big-endian) or `E`
//! (echo every byte until EOF).
//!
//! File descriptors: `idle` with a large `--count` (and the server facing it)
//! needs a high `RLIMIT_NOFILE`; this binary cannot raise it without unsafe
//! code, so the orchestrator does, e.g.
//! `sh -c 'ulimit -n 65536; exec meshbench idle ...'` or `prlimit`.
#![forbid(unsafe_code)]

use std::{
    io::{self, Read, Write},
    net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

/// Timeout of every blocking socket read, write and connect.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Buffer size for bulk writes and server reads.
const BUF_SIZE: usize = 64 * 1024;
/// How long the echo server keeps a silent connection (the `idle` mode holds
/// connections for `--hold-secs`, which may exceed [`IO_TIMEOUT`]).
const ECHO_MAX_IDLE: Duration = Duration::from_secs(3600);
/// Stack size of the server's per-connection threads (they hold no large
/// stack data; buffers are on the heap).
const SERVER_THREAD_STACK: usize = 256 * 1024;
/// Upper bound for any seconds argument, to keep loops bounded sanely.
const MAX_SECS: f64 = 86_400.0;

const USAGE: &str = "usage:
  meshbench serve    --bind ADDR:PORT
  meshbench bulk     --to HOST:PORT --secs S
  meshbench rr       --to HOST:PORT --size B --count N [--warmup W]
  meshbench connrate --to HOST:PORT --count N [--secs MAX] [--parallel P] [--max-errors E]
  meshbench idle     --to HOST:PORT --count N --hold-secs H";

enum Error {
    /// Bad command line: exit status 2.
    Usage(String),
    /// Runtime failure: exit status 1.
    Run(String),
}

fn run_err(context: &str, e: impl std::fmt::Display) -> Error {
    Error::Run(format!("{context}: {e}"))
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(Error::Usage(msg)) => {
            eprintln!("meshbench: {msg}\n{USAGE}");
            ExitCode::from(2)
        }
        Err(Error::Run(msg)) => {
            eprintln!("meshbench: {msg}");
            ExitCode::from(1)
        }
    }
}

fn run(args: &[String]) -> Result<(), Error> {
    let Some((mode, rest)) = args.split_first() else {
        return Err(Error::Usage("missing mode".into()));
    };
    match mode.as_str() {
        "serve" => {
            let opts = Opts::parse(rest, &["bind"])?;
            serve(opts.required("bind")?)
        }
        "bulk" => {
            let opts = Opts::parse(rest, &["to", "secs"])?;
            let to = opts.required("to")?;
            let secs = opts.secs("secs", None)?;
            bulk(to, secs)
        }
        "rr" => {
            let opts = Opts::parse(rest, &["to", "size", "count", "warmup"])?;
            let to = opts.required("to")?;
            let size = opts.count("size", None)?;
            let count = opts.count("count", None)?;
            let warmup = opts.number("warmup", Some(100))?;
            rr(to, size, count, warmup)
        }
        "connrate" => {
            let opts = Opts::parse(rest, &["to", "count", "secs", "parallel", "max-errors"])?;
            let to = opts.required("to")?;
            let count = opts.count("count", None)?;
            let max = opts.secs("secs", Some(30.0))?;
            let parallel = opts.count("parallel", Some(1))?.max(1);
            let max_errors = opts.number("max-errors", Some(0))?;
            connrate(to, count, max, parallel, max_errors)
        }
        "idle" => {
            let opts = Opts::parse(rest, &["to", "count", "hold-secs"])?;
            let to = opts.required("to")?;
            let count = opts.count("count", None)?;
            let hold = opts.secs("hold-secs", None)?;
            idle(to, count, hold)
        }
        other => Err(Error::Usage(format!("unknown mode {other:?}"))),
    }
}

// ---------------------------------------------------------------------------
// Argument parsing

/// `--key value` pairs, restricted to the keys a mode accepts.
struct Opts {
    pairs: Vec<(String, String)>,
}

impl Opts {
    fn parse(args: &[String], allowed: &[&str]) -> Result<Self, Error> {
        let mut pairs: Vec<(String, String)> = Vec::new();
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let key = arg
                .strip_prefix("--")
                .filter(|k| allowed.contains(k))
                .ok_or_else(|| Error::Usage(format!("unknown argument {arg:?}")))?;
            let value = it
                .next()
                .ok_or_else(|| Error::Usage(format!("{arg} needs a value")))?;
            if pairs.iter().any(|(k, _)| k == key) {
                return Err(Error::Usage(format!("{arg} given twice")));
            }
            pairs.push((key.to_owned(), value.clone()));
        }
        Ok(Self { pairs })
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    fn required(&self, key: &str) -> Result<&str, Error> {
        self.get(key)
            .ok_or_else(|| Error::Usage(format!("missing --{key}")))
    }

    /// A non-negative integer.
    fn number(&self, key: &str, default: Option<usize>) -> Result<usize, Error> {
        match (self.get(key), default) {
            (Some(v), _) => v
                .parse()
                .map_err(|_| Error::Usage(format!("--{key}: not a number: {v:?}"))),
            (None, Some(d)) => Ok(d),
            (None, None) => Err(Error::Usage(format!("missing --{key}"))),
        }
    }

    /// A positive integer.
    fn count(&self, key: &str, default: Option<usize>) -> Result<usize, Error> {
        let n = self.number(key, default)?;
        if n == 0 {
            return Err(Error::Usage(format!("--{key} must be at least 1")));
        }
        Ok(n)
    }

    /// A positive, finite number of seconds (fractions allowed).
    fn secs(&self, key: &str, default: Option<f64>) -> Result<Duration, Error> {
        let s = match (self.get(key), default) {
            (Some(v), _) => v
                .parse::<f64>()
                .map_err(|_| Error::Usage(format!("--{key}: not a number: {v:?}")))?,
            (None, Some(d)) => d,
            (None, None) => return Err(Error::Usage(format!("missing --{key}"))),
        };
        if !(s > 0.0 && s <= MAX_SECS) {
            return Err(Error::Usage(format!("--{key} must be in (0, {MAX_SECS}]")));
        }
        Ok(Duration::from_secs_f64(s))
    }
}

// ---------------------------------------------------------------------------
// Sockets

fn configure(stream: &TcpStream) -> io::Result<()> {
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))
}

fn resolve(to: &str) -> Result<Vec<SocketAddr>, Error> {
    let addrs: Vec<SocketAddr> = to
        .to_socket_addrs()
        .map_err(|e| run_err(&format!("resolving {to}"), e))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Run(format!("resolving {to}: no addresses")));
    }
    Ok(addrs)
}

/// Connects to the first address that accepts, with a timeout per attempt.
fn connect(addrs: &[SocketAddr]) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::InvalidInput, "no addresses");
    for addr in addrs {
        match TcpStream::connect_timeout(addr, IO_TIMEOUT) {
            Ok(stream) => {
                configure(&stream)?;
                return Ok(stream);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Prints one line on stdout and flushes it.
fn emit(line: &str) -> Result<(), Error> {
    let mut out = io::stdout().lock();
    writeln!(out, "{line}")
        .and_then(|()| out.flush())
        .map_err(|e| run_err("writing stdout", e))
}

/// Formats a float for JSON (which has no NaN or infinities).
fn num(x: f64) -> String {
    if x.is_finite() {
        format!("{x:.3}")
    } else {
        "null".into()
    }
}

// ---------------------------------------------------------------------------
// Statistics

/// Sample at `pct` percent of a sorted slice: `sorted[min(len*pct/100,
/// len-1)]`; 0 for an empty slice.
fn percentile(sorted: &[f64], pct: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    sorted[(sorted.len() * pct / 100).min(sorted.len() - 1)]
}

/// Sorts the samples and returns (p50, p99, mean).
fn summarize(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(f64::total_cmp);
    let mean = if samples.is_empty() {
        0.0
    } else {
        samples.iter().sum::<f64>() / samples.len() as f64
    };
    (percentile(samples, 50), percentile(samples, 99), mean)
}

fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------
// Server

fn serve(bind: &str) -> Result<(), Error> {
    let listener = TcpListener::bind(bind).map_err(|e| run_err(&format!("binding {bind}"), e))?;
    let local = listener
        .local_addr()
        .map_err(|e| run_err("local address", e))?;
    emit(&format!("listening {local}"))?;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off briefly and keep serving.
                eprintln!("meshbench: accept: {e}");
                thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        let spawned = thread::Builder::new()
            .stack_size(SERVER_THREAD_STACK)
            .spawn(move || {
                // Per-connection failures (peers resetting, timeouts) are
                // normal under load; the connection is just dropped.
                let _ = handle(stream);
            });
        if let Err(e) = spawned {
            eprintln!("meshbench: spawning connection thread: {e}");
            thread::sleep(Duration::from_millis(10));
        }
    }
}

fn handle(mut stream: TcpStream) -> io::Result<()> {
    configure(&stream)?;
    let mut mode = [0u8; 1];
    stream.read_exact(&mut mode)?;
    match mode[0] {
        b'S' => sink(stream),
        b'E' => echo(stream),
        other => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("unknown mode byte {other:#04x}"),
        )),
    }
}

fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => total += n as u64,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    stream.write_all(&total.to_be_bytes())?;
    stream.flush()
}

fn echo(mut stream: TcpStream) -> io::Result<()> {
    let mut buf = vec![0u8; BUF_SIZE];
    let mut last_data = Instant::now();
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(n) => {
                stream.write_all(&buf[..n])?;
                last_data = Instant::now();
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A read timeout: idle connections are legitimate (`idle` mode),
            // so keep waiting, but not forever.
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) && last_data.elapsed() < ECHO_MAX_IDLE => {}
            Err(e) => return Err(e),
        }
    }
}

// ---------------------------------------------------------------------------
// Clients

fn bulk(to: &str, secs: Duration) -> Result<(), Error> {
    let addrs = resolve(to)?;
    let mut stream = connect(&addrs).map_err(|e| run_err(&format!("connecting to {to}"), e))?;
    let buf = vec![0x5au8; BUF_SIZE];
    let start = Instant::now();
    stream
        .write_all(b"S")
        .map_err(|e| run_err("writing mode", e))?;
    let mut sent: u64 = 0;
    while start.elapsed() < secs {
        stream
            .write_all(&buf)
            .map_err(|e| run_err("writing data", e))?;
        sent += BUF_SIZE as u64;
    }
    stream
        .shutdown(Shutdown::Write)
        .map_err(|e| run_err("shutting down", e))?;
    let mut count = [0u8; 8];
    stream
        .read_exact(&mut count)
        .map_err(|e| run_err("reading byte count", e))?;
    let elapsed = start.elapsed().as_secs_f64();
    let received = u64::from_be_bytes(count);
    if received != sent {
        return Err(Error::Run(format!(
            "server counted {received} bytes, sent {sent}"
        )));
    }
    let gbit = sent as f64 * 8.0 / elapsed / 1e9;
    emit(&format!(
        r#"{{"mode":"bulk","bytes":{sent},"secs":{},"gbit_per_s":{}}}"#,
        num(elapsed),
        num(gbit)
    ))
}

fn rr(to: &str, size: usize, count: usize, warmup: usize) -> Result<(), Error> {
    let addrs = resolve(to)?;
    let mut stream = connect(&addrs).map_err(|e| run_err(&format!("connecting to {to}"), e))?;
    stream
        .write_all(b"E")
        .map_err(|e| run_err("writing mode", e))?;
    let out = vec![0xa5u8; size];
    let mut back = vec![0u8; size];
    let mut samples = Vec::with_capacity(count);
    for i in 0..warmup + count {
        let start = Instant::now();
        stream
            .write_all(&out)
            .map_err(|e| run_err(&format!("round {i}: writing"), e))?;
        stream
            .read_exact(&mut back)
            .map_err(|e| run_err(&format!("round {i}: reading"), e))?;
        let took = start.elapsed();
        if back != out {
            return Err(Error::Run(format!(
                "round {i}: echoed data differs from data sent"
            )));
        }
        if i >= warmup {
            samples.push(micros(took));
        }
    }
    drop(stream);
    let (p50, p99, mean) = summarize(&mut samples);
    emit(&format!(
        r#"{{"mode":"rr","size":{size},"count":{count},"p50_us":{},"p99_us":{},"mean_us":{}}}"#,
        num(p50),
        num(p99),
        num(mean)
    ))
}

/// One whole connect -> echo one byte -> close cycle.
fn one_connection(addrs: &[SocketAddr]) -> io::Result<()> {
    let mut stream = connect(addrs)?;
    stream.write_all(b"Ex")?;
    read_back(&mut stream, b'x')
}

/// `count` connections in all, `parallel` at a time (each client thread
/// runs its share one after another), within `max`. Fails (after printing
/// its figures, errors counted) if more than `max_errors` failed: a rate
/// over the successes alone would hide them.
fn connrate(
    to: &str,
    count: usize,
    max: Duration,
    parallel: usize,
    max_errors: usize,
) -> Result<(), Error> {
    let addrs = resolve(to)?;
    let start = Instant::now();
    let share = count.div_ceil(parallel);
    let clients: Vec<_> = (0..parallel)
        .map(|_| {
            let addrs = addrs.clone();
            std::thread::spawn(move || {
                let mut samples = Vec::with_capacity(share);
                let mut errors: usize = 0;
                let mut first_error: Option<io::Error> = None;
                for _ in 0..share {
                    if start.elapsed() >= max {
                        break;
                    }
                    let t = Instant::now();
                    match one_connection(&addrs) {
                        Ok(()) => samples.push(micros(t.elapsed())),
                        Err(e) => {
                            errors += 1;
                            first_error.get_or_insert(e);
                        }
                    }
                }
                (samples, errors, first_error)
            })
        })
        .collect();
    let mut samples = Vec::with_capacity(count);
    let mut errors: usize = 0;
    let mut first_error: Option<io::Error> = None;
    for client in clients {
        let (s, e, first) = client
            .join()
            .map_err(|_| Error::Run("a client thread panicked".into()))?;
        samples.extend(s);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let done = samples.len();
    let per_s = done as f64 / elapsed;
    let (p50, p99, _) = summarize(&mut samples);
    emit(&format!(
        r#"{{"mode":"connrate","count":{done},"per_s":{},"p50_us":{},"p99_us":{},"errors":{errors}}}"#,
        num(per_s),
        num(p50),
        num(p99)
    ))?;
    let attempts = done + errors;
    if errors > max_errors {
        let first = first_error.map_or_else(String::new, |e| format!(" (first: {e})"));
        return Err(Error::Run(format!(
            "{errors} of {attempts} connections failed{first}"
        )));
    }
    Ok(())
}

/// Opens `count` connections (each echoes one byte), prints `open`, holds
/// them `hold`, then checks each still echoes and prints `alive`. Any
/// connection that fails, at any step, fails the run.
fn idle(to: &str, count: usize, hold: Duration) -> Result<(), Error> {
    let addrs = resolve(to)?;
    let mut conns = Vec::with_capacity(count);
    for i in 0..count {
        let mut stream =
            connect(&addrs).map_err(|e| run_err(&format!("connection {i}: connecting"), e))?;
        stream
            .write_all(b"Ex")
            .and_then(|()| read_back(&mut stream, b'x'))
            .map_err(|e| run_err(&format!("connection {i}"), e))?;
        conns.push(stream);
    }
    emit(&format!(r#"{{"mode":"idle","open":{}}}"#, conns.len()))?;
    thread::sleep(hold);
    for (i, stream) in conns.iter_mut().enumerate() {
        stream
            .write_all(b"y")
            .and_then(|()| read_back(stream, b'y'))
            .map_err(|e| run_err(&format!("connection {i} after {hold:?} idle"), e))?;
    }
    emit(&format!(r#"{{"mode":"idle","alive":{}}}"#, conns.len()))
}

/// Reads one byte, which must be `byte` (the echo of what was sent).
fn read_back(stream: &mut TcpStream, byte: u8) -> io::Result<()> {
    let mut b = [0u8; 1];
    stream.read_exact(&mut b)?;
    if b[0] != byte {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "bad echo"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{percentile, summarize};

    #[test]
    fn percentile_indexes_sorted_samples() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50), 51.0);
        assert_eq!(percentile(&sorted, 99), 100.0);
        assert_eq!(percentile(&sorted, 100), 100.0);
        assert_eq!(percentile(&[7.0], 50), 7.0);
        assert_eq!(percentile(&[7.0], 99), 7.0);
        assert_eq!(percentile(&[1.0, 2.0], 50), 2.0);
        assert_eq!(percentile(&[1.0, 2.0], 99), 2.0);
        assert_eq!(percentile(&[], 50), 0.0);
    }

    #[test]
    fn summarize_sorts_and_averages() {
        let mut samples = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        let (p50, p99, mean) = summarize(&mut samples);
        assert_eq!(samples, vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(p50, 3.0);
        assert_eq!(p99, 5.0);
        assert_eq!(mean, 3.0);
    }
}
