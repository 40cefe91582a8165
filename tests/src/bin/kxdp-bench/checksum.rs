//! Part 1: the SCTP checksum's arithmetic on the host. The datapath updates
//! the CRC32c of a packet whose port it rewrites from the ports and the
//! length alone; taking it afresh would be a pass over the whole packet,
//! which a BPF program could only make a byte at a time.

use std::hint::black_box;

use proxy_common::crc32c::update_ports;

use super::*;

/// An SCTP packet near the largest a 1,500-byte MTU carries.
const SCTP_PACKET_LEN: usize = 1_400;
/// The common header and the DATA chunk's header, before its value.
const SCTP_HEADERS_LEN: usize = 16;
/// Operations per timed run: milliseconds, long beside the clock's resolution.
const UPDATE_OPS: u32 = 200_000;
const FULL_OPS: u32 = 20_000;
/// Timed runs per computation, of which the median is kept.
const RUNS: usize = 5;

pub(crate) struct ChecksumRow {
    pub(crate) label: String,
    pub(crate) ops: u32,
    /// Median over `RUNS` runs of the mean per operation.
    pub(crate) ns_per_op: f64,
}

/// The CRC32c table a byte-at-a-time loop indexes: entry `n` is byte `n`
/// through a zero register.
const BYTE_TABLE: [u32; 256] = {
    let mut table = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut crc = n as u32;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
            bit += 1;
        }
        table[n] = crc;
        n += 1;
    }
    table
};

/// A CRC32c as a BPF program would have to take it: one table lookup per
/// byte (no CRC instruction, no wider tables within its stack and loops).
fn crc32c_by_byte(data: &[u8]) -> u32 {
    let crc = data.iter().fold(!0u32, |crc, byte| {
        BYTE_TABLE[((crc ^ u32::from(*byte)) & 0xff) as usize] ^ (crc >> 8)
    });
    !crc
}

/// How the `crc32c` crate computes on this CPU: it picks the CRC
/// instruction at run time where there is one.
fn crate_method() -> &'static str {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("sse4.2") {
        return "hardware-accelerated: SSE4.2 `crc32` instruction";
    }
    #[cfg(target_arch = "aarch64")]
    if std::arch::is_aarch64_feature_detected!("crc") {
        return "hardware-accelerated: ARMv8 CRC instructions";
    }
    "software: 8 bytes a step, no CRC instruction on this CPU"
}

/// The mean nanoseconds per call of `op` over `ops` calls, median of `RUNS`.
fn ns_per_op(ops: u32, mut op: impl FnMut() -> u32) -> f64 {
    let runs = (0..RUNS)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..ops {
                black_box(op());
            }
            started.elapsed().as_nanos() as f64 / f64::from(ops)
        })
        .collect();
    median_of(runs)
}

/// The ports of an SCTP packet as it holds them (network order).
fn ports_of(packet: &[u8]) -> [u16; 2] {
    [
        u16::from_ne_bytes([packet[0], packet[1]]),
        u16::from_ne_bytes([packet[2], packet[3]]),
    ]
}

/// Times the update of a 1,400-byte SCTP packet's CRC32c for its
/// destination port rewritten (VIP:80 → BACKEND:8080) next to full CRC32cs
/// of it, after checking that the update gives the rewritten packet's CRC.
pub(crate) fn measure_checksums() -> anyhow::Result<Vec<ChecksumRow>> {
    let frame = sctp_data(client(40_000), VIP, SCTP_PACKET_LEN - SCTP_HEADERS_LEN);
    let headers = kxdp_testbed::packet::parse(&frame).map_err(anyhow::Error::msg)?;
    // The CRC is taken over the packet with its checksum field zero.
    let mut packet = frame[headers.l4_off..headers.end].to_vec();
    ensure!(
        packet.len() == SCTP_PACKET_LEN,
        "the SCTP packet is {} bytes",
        packet.len()
    );
    let crc = u32::from_le_bytes(packet[8..12].try_into()?);
    packet[8..12].fill(0);
    let old = ports_of(&packet);
    let new = [old[0], port_to_net(BACKEND.port())];
    let len = SCTP_PACKET_LEN as u32;

    let mut rewritten = packet.clone();
    rewritten[2..4].copy_from_slice(&new[1].to_ne_bytes());
    let updated = update_ports(crc, old, new, len);
    let (by_crate, by_byte) = (crc32c::crc32c(&rewritten), crc32c_by_byte(&rewritten));
    if updated != by_crate || by_byte != by_crate {
        bail!(
            "CRC32c of the rewritten packet: update {updated:#010x}, \
             byte at a time {by_byte:#010x}, crc32c crate {by_crate:#010x}"
        );
    }

    let update_ns = ns_per_op(UPDATE_OPS, || {
        update_ports(
            black_box(crc),
            black_box(old),
            black_box(new),
            black_box(len),
        )
    });
    let by_byte_ns = ns_per_op(FULL_OPS, || crc32c_by_byte(black_box(&packet)));
    let by_crate_ns = ns_per_op(FULL_OPS, || crc32c::crc32c(black_box(&packet)));
    let row = |label: &str, ops, ns_per_op| ChecksumRow {
        label: label.to_string(),
        ops,
        ns_per_op,
    };
    Ok(vec![
        row(
            "update for a rewritten port (`proxy_common::crc32c::update_ports`: 8 products of 4 table lookups)",
            UPDATE_OPS,
            update_ns,
        ),
        row(
            "full CRC32c, a byte at a time (256-entry table, as a BPF program would take it)",
            FULL_OPS,
            by_byte_ns,
        ),
        row(
            &format!("full CRC32c, `crc32c` crate ({})", crate_method()),
            FULL_OPS,
            by_crate_ns,
        ),
    ])
}

/// The first row is the update, which the others are compared with.
pub(crate) fn checksum_table(rows: &[ChecksumRow]) -> String {
    let mut t = format!(
        "| CRC32c of a {SCTP_PACKET_LEN}-byte SCTP packet | operations per run | ns/operation (median of {RUNS} runs) | × the update |\n\
         |---|---:|---:|---:|\n"
    );
    let update = rows[0].ns_per_op;
    for r in rows {
        t.push_str(&format!(
            "| {} | {} | {:.1} | {:.1} |\n",
            r.label,
            r.ops,
            r.ns_per_op,
            r.ns_per_op / update,
        ));
    }
    t
}
