//! Test peer for the namespace suites: a backend that answers HTTP and UDP
//! with its name and the client address it saw, a UDP client, a short
//! TCP connection load generator and a bulk TCP stream with its sink for the
//! benchmarks, and a line echo server with a client that holds one
//! connection open for a while.
//!
//!   kxdp-peer serve --name NAME --tcp PORT --udp PORT
//!   kxdp-peer sink --tcp PORT
//!   kxdp-peer stream ADDR:PORT DURATION_MS
//!   kxdp-peer udp-query ADDR:PORT PAYLOAD [TIMEOUT_MS]
//!   kxdp-peer udp-probe ADDR:PORT TIMEOUT_MS
//!   kxdp-peer udp-session ADDR:PORT COUNT INTERVAL_MS
//!   kxdp-peer conn-rate ADDR:PORT DURATION_MS CONCURRENCY
//!   kxdp-peer echo-lines --name NAME --tcp PORT
//!   kxdp-peer chat ADDR:PORT COUNT INTERVAL_MS
//!   kxdp-peer sctp-serve --name NAME --sctp PORT
//!   kxdp-peer sctp-query ADDR:PORT TIMEOUT_MS

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{Ipv6Addr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    sync::atomic::{AtomicU64, Ordering},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _};

/// Servers listen on both families at once (a dual-stack socket on `::`);
/// where the node has no IPv6, on IPv4 alone.
fn listen_tcp(port: u16) -> anyhow::Result<TcpListener> {
    TcpListener::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| TcpListener::bind(("0.0.0.0", port)))
        .context("bind tcp")
}

fn bind_udp_server(port: u16) -> anyhow::Result<UdpSocket> {
    UdpSocket::bind((Ipv6Addr::UNSPECIFIED, port))
        .or_else(|_| UdpSocket::bind(("0.0.0.0", port)))
        .context("bind udp")
}

/// A client socket of `target`'s family.
fn bind_udp_client(target: SocketAddr) -> std::io::Result<UdpSocket> {
    if target.is_ipv4() {
        UdpSocket::bind("0.0.0.0:0")
    } else {
        UdpSocket::bind("[::]:0")
    }
}

/// An address as its family writes it: an IPv4 peer of a dual-stack socket
/// (`::ffff:a.b.c.d`) as IPv4.
fn canonical(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
            Some(v4) => SocketAddr::new(v4.into(), v6.port()),
            None => addr,
        },
        v4 => v4,
    }
}

fn answer_http(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = canonical(stream.peer_addr()?);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    // Read the request head (bounded), then answer and close.
    while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 16 * 1024 {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            break;
        }
        request.extend_from_slice(&buf[..n]);
    }
    let body = format!("backend={name} client={peer}\n");
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )?;
    // Let the client close first, so TIME_WAIT lands on the client's
    // (ephemeral) side and never on this server's tuple: tests reuse client
    // ports towards this server.
    while stream.read(&mut buf)? > 0 {}
    Ok(())
}

fn serve(name: String, tcp: u16, udp: u16) -> anyhow::Result<()> {
    let listener = listen_tcp(tcp)?;
    let socket = bind_udp_server(udp)?;
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let reply = format!(
                "backend={udp_name} client={} payload={}",
                canonical(from),
                String::from_utf8_lossy(&buf[..n])
            );
            let _ = socket.send_to(reply.as_bytes(), from);
        }
    });
    // Tells the spawner we are listening: no sleeping in tests.
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let name = name.clone();
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || answer_http(stream, &name));
    }
    Ok(())
}

fn udp_query(target: SocketAddr, payload: &str, timeout: Duration) -> anyhow::Result<()> {
    let socket = bind_udp_client(target)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(payload.as_bytes(), target)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).context("no UDP reply")?;
    println!("from={from} {}", String::from_utf8_lossy(&buf[..n]));
    Ok(())
}

/// Sends one datagram from a connected socket, on which Linux reports an
/// ICMP port unreachable as ECONNREFUSED: prints "answered" or "refused",
/// fails on silence.
fn udp_probe(target: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let socket = bind_udp_client(target)?;
    socket.set_read_timeout(Some(timeout))?;
    socket.connect(target)?;
    socket.send(b"probe")?;
    let mut buf = [0u8; 2048];
    match socket.recv(&mut buf) {
        Ok(_) => println!("answered"),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("refused"),
        Err(e) => return Err(e).context("no UDP reply and no ICMP error"),
    }
    Ok(())
}

/// Longest `udp-session` waits for one answer.
const SESSION_TIMEOUT: Duration = Duration::from_millis(500);

/// One connected UDP socket sending datagrams 1..=COUNT, one every
/// `interval`: prints `N backend=NAME` per answer, `N silent` where none
/// came (a connected socket takes answers from its peer's address only),
/// `N refused` on an ICMP error, and `done COUNT` at the end.
fn udp_session(target: SocketAddr, count: u32, interval: Duration) -> anyhow::Result<()> {
    let socket = bind_udp_client(target)?;
    socket.set_read_timeout(Some(SESSION_TIMEOUT))?;
    socket.connect(target)?;
    let mut buf = [0u8; 2048];
    for n in 1..=count {
        let answer = socket
            .send(n.to_string().as_bytes())
            .and_then(|_| socket.recv(&mut buf));
        match answer {
            Ok(len) => {
                let text = String::from_utf8_lossy(&buf[..len]);
                let backend = text.split_whitespace().next().unwrap_or_default();
                println!("{n} {backend}");
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => println!("{n} refused"),
            Err(_) => println!("{n} silent"),
        }
        std::io::stdout().flush()?;
        std::thread::sleep(interval);
    }
    println!("done {count}");
    Ok(())
}

/// Longest a single connect, read or write of `conn-rate` may block.
const CONN_TIMEOUT: Duration = Duration::from_secs(1);
/// Upper bound on connections per `conn-rate` thread, whatever the duration.
const MAX_CONNS_PER_THREAD: usize = 10_000_000;

/// Whether `response` holds a whole HTTP response (head and Content-Length body).
fn response_complete(response: &[u8]) -> bool {
    let Some(head_end) = response.windows(4).position(|w| w == b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..head_end]).to_ascii_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    length.is_some_and(|len| response.len() >= head_end + 4 + len)
}

/// One short HTTP exchange: connect, send a request, read the whole answer,
/// close (the client closes first, as `serve` expects). The whole exchange
/// is bounded by `deadline`.
fn one_connection(target: SocketAddr, deadline: Instant) -> std::io::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, CONN_TIMEOUT)?;
    stream.set_read_timeout(Some(CONN_TIMEOUT))?;
    stream.set_write_timeout(Some(CONN_TIMEOUT))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")?;
    let mut buf = [0u8; 1024];
    let mut response = Vec::new();
    while !response_complete(&response) {
        match stream.read(&mut buf)? {
            0 => return Err(std::io::Error::other("answer cut short")),
            n => response.extend_from_slice(&buf[..n]),
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other("answer did not end in time"));
        }
    }
    Ok(())
}

/// Connections back to back until `until`; the latency (µs) of each good one.
fn connection_loop(target: SocketAddr, until: Instant, errors: &AtomicU64) -> Vec<u32> {
    let mut latencies = Vec::new();
    for _ in 0..MAX_CONNS_PER_THREAD {
        let start = Instant::now();
        if start >= until {
            break;
        }
        match one_connection(target, start + 2 * CONN_TIMEOUT) {
            Ok(()) => latencies.push(start.elapsed().as_micros().min(u32::MAX as u128) as u32),
            Err(_) => {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    latencies
}

/// The value at quantile `q` of sorted `values` (nearest rank).
fn quantile(sorted: &[u32], q: f64) -> u32 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Short TCP connections from `concurrency` threads for `duration`; prints
/// one `key=value` line.
fn conn_rate(target: SocketAddr, duration: Duration, concurrency: usize) -> anyhow::Result<()> {
    let errors = AtomicU64::new(0);
    let start = Instant::now();
    let until = start + duration;
    let mut latencies: Vec<u32> = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..concurrency)
            .map(|_| scope.spawn(|| connection_loop(target, until, &errors)))
            .collect();
        workers
            .into_iter()
            .flat_map(|w| w.join().expect("conn-rate worker panicked"))
            .collect()
    });
    // Connections still open at `until` finish, so divide by the real time.
    let secs = start.elapsed().as_secs_f64();
    latencies.sort_unstable();
    println!(
        "conns={} secs={secs:.3} rate={:.1} p50_us={} p99_us={} errors={}",
        latencies.len(),
        latencies.len() as f64 / secs,
        quantile(&latencies, 0.50),
        quantile(&latencies, 0.99),
        errors.load(Ordering::Relaxed),
    );
    Ok(())
}

/// Counts what each connection sends until it closes its side, then answers
/// `bytes=N` and closes: the sender learns how much really arrived.
fn sink(tcp: u16) -> anyhow::Result<()> {
    let listener = listen_tcp(tcp)?;
    println!("ready");
    std::io::stdout().flush()?;
    for stream in listener.incoming() {
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || sink_connection(stream));
    }
    Ok(())
}

fn sink_connection(mut stream: TcpStream) -> std::io::Result<()> {
    stream.set_read_timeout(Some(STREAM_TIMEOUT))?;
    let mut buf = vec![0u8; 256 * 1024];
    let mut total: u64 = 0;
    loop {
        match stream.read(&mut buf)? {
            0 => break,
            n => total += n as u64,
        }
    }
    writeln!(stream, "bytes={total}")
}

/// Longest a `stream` write, or the wait for the sink's count, may block.
const STREAM_TIMEOUT: Duration = Duration::from_secs(5);

/// One TCP connection sending as fast as it can for `duration`, then the
/// sink's count of what arrived; prints `bytes=N secs=S gbps=G` (G counts
/// payload, over the time until the count came back).
fn stream(target: SocketAddr, duration: Duration) -> anyhow::Result<()> {
    let mut stream = TcpStream::connect_timeout(&target, STREAM_TIMEOUT).context("connect")?;
    stream.set_write_timeout(Some(STREAM_TIMEOUT))?;
    stream.set_read_timeout(Some(STREAM_TIMEOUT))?;
    let chunk = vec![0x5au8; 128 * 1024];
    let start = Instant::now();
    while start.elapsed() < duration {
        stream.write_all(&chunk).context("sending")?;
    }
    stream.shutdown(std::net::Shutdown::Write)?;
    let mut answer = String::new();
    stream
        .read_to_string(&mut answer)
        .context("waiting for the count")?;
    let secs = start.elapsed().as_secs_f64();
    let bytes: u64 = answer
        .trim()
        .strip_prefix("bytes=")
        .and_then(|n| n.parse().ok())
        .with_context(|| format!("sink answered {answer:?}"))?;
    println!(
        "bytes={bytes} secs={secs:.3} gbps={:.3}",
        bytes as f64 * 8.0 / secs / 1e9
    );
    Ok(())
}

/// Answers every line of every connection with `backend=NAME line=LINE`.
fn echo_lines(name: String, tcp: u16) -> anyhow::Result<()> {
    let listener = listen_tcp(tcp)?;
    println!("ready");
    for stream in listener.incoming() {
        let name = name.clone();
        let Ok(stream) = stream else { continue };
        std::thread::spawn(move || echo_connection(stream, &name));
    }
    Ok(())
}

fn echo_connection(stream: TcpStream, name: &str) -> std::io::Result<()> {
    let mut writer = stream.try_clone()?;
    for line in BufReader::new(stream).lines() {
        writeln!(writer, "backend={name} line={}", line?)?;
    }
    Ok(())
}

/// Longest `chat` waits to connect, send or get one answer.
const CHAT_TIMEOUT: Duration = Duration::from_secs(2);

/// One TCP connection to an `echo-lines` server: lines 1..=COUNT, one every
/// `interval`, each of which must come back. Prints `N backend=NAME` per
/// answer and `done COUNT` at the end; an error, a reset, a close or a wrong
/// answer ends it with an error instead, a reset also with a last line
/// `reset` (so a test tells it from a timeout without reading a clock).
fn chat(target: SocketAddr, count: u32, interval: Duration) -> anyhow::Result<()> {
    let ended = chat_lines(target, count, interval);
    if let Err(e) = &ended {
        let reset = e
            .chain()
            .filter_map(|cause| cause.downcast_ref::<std::io::Error>())
            .any(|io| io.kind() == std::io::ErrorKind::ConnectionReset);
        if reset {
            println!("reset");
        }
    }
    ended
}

fn chat_lines(target: SocketAddr, count: u32, interval: Duration) -> anyhow::Result<()> {
    let stream = TcpStream::connect_timeout(&target, CHAT_TIMEOUT).context("connect")?;
    stream.set_read_timeout(Some(CHAT_TIMEOUT))?;
    stream.set_write_timeout(Some(CHAT_TIMEOUT))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let mut answer = String::new();
    for n in 1..=count {
        writeln!(writer, "{n}").with_context(|| format!("sending line {n}"))?;
        answer.clear();
        if reader
            .read_line(&mut answer)
            .with_context(|| format!("waiting for answer {n}"))?
            == 0
        {
            bail!("connection closed after {} answers", n - 1);
        }
        let backend = answer
            .trim_end()
            .strip_suffix(&format!(" line={n}"))
            .and_then(|a| a.strip_prefix("backend="))
            .with_context(|| format!("answer {n} is {answer:?}"))?;
        println!("{n} backend={backend}");
        std::thread::sleep(interval);
    }
    println!("done {count}");
    Ok(())
}

/// Answers each SCTP association's first message with its name and the
/// client address it saw, then waits for the client to end it.
fn sctp_serve(name: String, port: u16) -> anyhow::Result<()> {
    let listener = kxdp_testbed::sctp_socket::listen(port).context("SCTP listen")?;
    println!("ready");
    for association in listener.incoming() {
        let name = name.clone();
        let Ok(association) = association else {
            continue;
        };
        std::thread::spawn(move || sctp_answer(association, &name));
    }
    Ok(())
}

fn sctp_answer(mut association: TcpStream, name: &str) -> std::io::Result<()> {
    association.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = canonical(association.peer_addr()?);
    let mut message = [0u8; 1024];
    // One message (SCTP keeps its boundaries); its contents do not matter.
    if association.read(&mut message)? == 0 {
        return Ok(());
    }
    association.write_all(format!("backend={name} client={peer}\n").as_bytes())?;
    // Until the client shuts the association down (or the timeout).
    while association.read(&mut message)? > 0 {}
    Ok(())
}

/// One SCTP association to `target`: a message out, the answer printed;
/// `refused` when an ABORT answers the INIT.
fn sctp_query(target: SocketAddr, timeout: Duration) -> anyhow::Result<()> {
    let mut association = match kxdp_testbed::sctp_socket::connect(target, timeout) {
        Ok(association) => association,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
            println!("refused");
            return Ok(());
        }
        Err(e) => return Err(e).context("SCTP connect"),
    };
    association.write_all(b"hello\n").context("send")?;
    let mut answer = [0u8; 1024];
    let n = association.read(&mut answer).context("no answer")?;
    print!("{}", String::from_utf8_lossy(&answer[..n]));
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize| args.get(i).map(String::as_str);
    match (arg(0), arg(1), arg(2), arg(3), arg(4), arg(5), arg(6)) {
        (Some("serve"), Some("--name"), Some(name), Some("--tcp"), Some(tcp), Some("--udp"), Some(udp)) => {
            serve(name.to_string(), tcp.parse()?, udp.parse()?)
        }
        (Some("udp-query"), Some(target), Some(payload), timeout, ..) => {
            let timeout = Duration::from_millis(timeout.unwrap_or("2000").parse()?);
            udp_query(target.parse()?, payload, timeout)
        }
        (Some("udp-probe"), Some(target), Some(timeout), ..) => {
            udp_probe(target.parse()?, Duration::from_millis(timeout.parse()?))
        }
        (Some("udp-session"), Some(target), Some(count), Some(interval_ms), ..) => {
            let interval = Duration::from_millis(interval_ms.parse()?);
            udp_session(target.parse()?, count.parse()?, interval)
        }
        (Some("conn-rate"), Some(target), Some(duration_ms), Some(concurrency), ..) => {
            let concurrency: usize = concurrency.parse()?;
            if !(1..=256).contains(&concurrency) {
                bail!("CONCURRENCY must be 1..=256");
            }
            let duration = Duration::from_millis(duration_ms.parse()?);
            conn_rate(target.parse()?, duration, concurrency)
        }
        (Some("sink"), Some("--tcp"), Some(tcp), ..) => sink(tcp.parse()?),
        (Some("stream"), Some(target), Some(duration_ms), ..) => {
            stream(target.parse()?, Duration::from_millis(duration_ms.parse()?))
        }
        (Some("echo-lines"), Some("--name"), Some(name), Some("--tcp"), Some(tcp), ..) => {
            echo_lines(name.to_string(), tcp.parse()?)
        }
        (Some("chat"), Some(target), Some(count), Some(interval_ms), ..) => {
            chat(target.parse()?, count.parse()?, Duration::from_millis(interval_ms.parse()?))
        }
        (Some("sctp-serve"), Some("--name"), Some(name), Some("--sctp"), Some(port), ..) => {
            sctp_serve(name.to_string(), port.parse()?)
        }
        (Some("sctp-query"), Some(target), Some(timeout_ms), ..) => {
            sctp_query(target.parse()?, Duration::from_millis(timeout_ms.parse()?))
        }
        _ => bail!("usage: kxdp-peer serve --name NAME --tcp PORT --udp PORT | sink --tcp PORT | stream ADDR:PORT DURATION_MS | udp-query ADDR:PORT PAYLOAD [TIMEOUT_MS] | udp-probe ADDR:PORT TIMEOUT_MS | udp-session ADDR:PORT COUNT INTERVAL_MS | conn-rate ADDR:PORT DURATION_MS CONCURRENCY | echo-lines --name NAME --tcp PORT | chat ADDR:PORT COUNT INTERVAL_MS | sctp-serve --name NAME --sctp PORT | sctp-query ADDR:PORT TIMEOUT_MS"),
    }
}
