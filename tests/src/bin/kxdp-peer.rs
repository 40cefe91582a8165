//! Test peer for the namespace suites: a backend that answers HTTP and UDP
//! with its name and the client address it saw, and a UDP client.
//!
//!   kxdp-peer serve --name NAME --tcp PORT --udp PORT
//!   kxdp-peer udp-query ADDR:PORT PAYLOAD [TIMEOUT_MS]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream, UdpSocket},
    time::Duration,
};

use anyhow::{bail, Context as _};

fn answer_http(mut stream: TcpStream, name: &str) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    let peer = stream.peer_addr()?;
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
    )
}

fn serve(name: String, tcp: u16, udp: u16) -> anyhow::Result<()> {
    let listener = TcpListener::bind(("0.0.0.0", tcp)).context("bind tcp")?;
    let socket = UdpSocket::bind(("0.0.0.0", udp)).context("bind udp")?;
    let udp_name = name.clone();
    std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while let Ok((n, from)) = socket.recv_from(&mut buf) {
            let reply = format!(
                "backend={udp_name} client={from} payload={}",
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
    let socket = UdpSocket::bind("0.0.0.0:0")?;
    socket.set_read_timeout(Some(timeout))?;
    socket.send_to(payload.as_bytes(), target)?;
    let mut buf = [0u8; 2048];
    let (n, from) = socket.recv_from(&mut buf).context("no UDP reply")?;
    println!("from={from} {}", String::from_utf8_lossy(&buf[..n]));
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
        _ => bail!("usage: kxdp-peer serve --name NAME --tcp PORT --udp PORT | udp-query ADDR:PORT PAYLOAD [TIMEOUT_MS]"),
    }
}
