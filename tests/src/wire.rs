//! Packet-capture checks: what crossed the wire.
//!
//! Reads pcap files written by `tcpdump -w` (Ethernet link type, IPv4 or
//! IPv6), reassembles their TCP connections, and tells whether a byte stream
//! is TLS and what its hellos say. The netns tests use it to prove that
//! agents talk TLS 1.3 with ALPN `mesh/1` and that no plaintext leaks.

use std::{
    collections::HashMap,
    fs,
    io::BufReader,
    net::{IpAddr, SocketAddr},
    path::Path,
};

use etherparse::{IpNumber, NetSlice, SlicedPacket, TransportSlice};
use pcap_file::{DataLink, pcap::PcapReader};

/// The certificate chains sent in the TLS handshakes of `pcap` that
/// `keylog` (an NSS key log, as `openssl s_client -keylogfile` writes it)
/// decrypts, in order, each as DER certificates. Wireshark's TLS dissector
/// (tshark) does the decrypting and reading.
pub fn decrypted_chains(pcap: &Path, keylog: &Path) -> Result<Vec<Vec<Vec<u8>>>, String> {
    let out = std::process::Command::new("tshark")
        .arg("-n")
        .arg("-r")
        .arg(pcap)
        .arg("-o")
        .arg(format!("tls.keylog_file:{}", keylog.display()))
        .args(["-Y", "tls.handshake.type == 11", "-T", "fields"])
        .args(["-e", "tls.handshake.certificate"])
        .output()
        .map_err(|e| format!("tshark: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "tshark failed: {}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            line.split(',')
                .map(|cert| {
                    let hex: String = cert.chars().filter(char::is_ascii_hexdigit).collect();
                    (0..hex.len())
                        .step_by(2)
                        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                        .collect::<Result<Vec<u8>, _>>()
                        .map_err(|e| format!("tshark printed {cert:?}: {e}"))
                })
                .collect()
        })
        .collect()
}

/// Whether `needle` occurs anywhere in the capture file's bytes (headers,
/// payloads, everything). A needle split across two packets is not found:
/// search [`tcp_conns`]' streams for that. An empty needle is always found.
pub fn file_contains(pcap: &Path, needle: &[u8]) -> std::io::Result<bool> {
    let bytes = fs::read(pcap)?;
    Ok(needle.is_empty() || bytes.windows(needle.len()).any(|w| w == needle))
}

/// One TCP connection seen in a capture, both directions reassembled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TcpConn {
    /// The side that sent the SYN (or, without SYN, the side with the higher port).
    pub client: SocketAddr,
    pub server: SocketAddr,
    /// Payload bytes client->server, reassembled in sequence order,
    /// retransmissions removed.
    pub to_server: Vec<u8>,
    /// Payload bytes server->client, likewise.
    pub to_client: Vec<u8>,
}

/// Every TCP connection in the capture, in order of first packet.
///
/// Fails on an unreadable or non-Ethernet capture, on a packet that is cut
/// short (snap length) or IP-fragmented, and on a stream missing data: a gap
/// between captured segments, a FIN past the captured data, or bytes the peer
/// acknowledged that the capture does not hold.
pub fn tcp_conns(pcap: &Path) -> Result<Vec<TcpConn>, String> {
    let name = pcap.display();
    let file = fs::File::open(pcap).map_err(|e| format!("failed to open {name}: {e}"))?;
    let mut reader = PcapReader::new(BufReader::new(file))
        .map_err(|e| format!("{name} is not a pcap file: {e}"))?;
    let datalink = reader.header().datalink;
    if datalink != DataLink::ETHERNET {
        return Err(format!(
            "{name}: link type {datalink:?}, only Ethernet is supported"
        ));
    }
    let mut conns: Vec<ConnState> = Vec::new();
    // Unordered endpoint pair -> index of the latest connection between them.
    let mut latest: HashMap<(SocketAddr, SocketAddr), usize> = HashMap::new();
    let mut number = 0usize;
    while let Some(packet) = reader.next_packet() {
        number += 1;
        let packet = packet.map_err(|e| format!("{name}: packet {number}: {e}"))?;
        let (captured, len) = (packet.data.len(), packet.orig_len);
        if u32::try_from(captured).unwrap_or(u32::MAX) < len {
            return Err(format!(
                "{name}: packet {number} is cut short ({captured} of {len} bytes captured)"
            ));
        }
        let sliced = SlicedPacket::from_ethernet(&packet.data)
            .map_err(|e| format!("{name}: packet {number}: {e}"))?;
        let Some(seg) =
            Segment::from_sliced(&sliced).map_err(|e| format!("{name}: packet {number}: {e}"))?
        else {
            continue;
        };
        let key = if seg.src <= seg.dst {
            (seg.src, seg.dst)
        } else {
            (seg.dst, seg.src)
        };
        let index = match latest.get(&key) {
            Some(&i) if !conns[i].is_new_connection(&seg) => i,
            _ => {
                conns.push(ConnState::new(seg.src, seg.dst));
                latest.insert(key, conns.len() - 1);
                conns.len() - 1
            }
        };
        conns[index].add(&seg);
    }
    conns.into_iter().map(ConnState::finish).collect()
}

/// What a TLS byte stream (one direction) looks like.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsStream {
    pub records: usize,
    /// Content type of each record, in order.
    pub content_types: Vec<u8>,
    pub client_hello: Option<ClientHello>,
    pub server_hello: Option<ServerHello>,
}

/// The parts of a ClientHello the tests check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientHello {
    /// Protocols offered in the ALPN extension, in order.
    pub alpn: Vec<String>,
    /// Versions offered in the supported_versions extension, in order.
    pub supported_versions: Vec<u16>,
    /// The first host_name of the server_name extension.
    pub sni: Option<String>,
}

/// The parts of a ServerHello the tests check.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ServerHello {
    /// From the supported_versions extension; `None` if absent.
    pub selected_version: Option<u16>,
    pub cipher_suite: u16,
}

/// The largest record length allowed (TLSCiphertext: 2^14 + 256).
const MAX_RECORD_LEN: usize = 16384 + 256;
const HANDSHAKE: u8 = 22;

/// Parses `bytes` as a sequence of TLS records that must tile it exactly:
/// each record has content type 20..=23, legacy version 0x0301..=0x0303,
/// length 1..=16384+256; no trailing partial record. Empty input is zero
/// records.
///
/// Parses the ClientHello / ServerHello if the first handshake message (in
/// the first run of handshake records) is one. In TLS 1.3 they are in clear;
/// everything after the ServerHello is application_data records (type 23),
/// plus possibly a change_cipher_spec record (type 20) for middlebox
/// compatibility.
///
/// Fails with a message saying where (offset) and why (value) the bytes are
/// not TLS.
pub fn parse_tls(bytes: &[u8]) -> Result<TlsStream, String> {
    let mut stream = TlsStream::default();
    // Offset of the first handshake record and the payload of the run of
    // handshake records it starts (a hello may be fragmented over several).
    let mut handshake: Option<(usize, Vec<u8>)> = None;
    let mut handshake_run_over = false;
    let mut off = 0;
    while off < bytes.len() {
        let rest = &bytes[off..];
        let Some((header, after)) = rest.split_first_chunk::<5>() else {
            return Err(format!(
                "truncated record header at offset {off}: {} byte(s) left, a header needs 5 ({})",
                rest.len(),
                show(rest)
            ));
        };
        let [content_type, v0, v1, l0, l1] = *header;
        let version = u16::from_be_bytes([v0, v1]);
        let len = usize::from(u16::from_be_bytes([l0, l1]));
        if !(20..=23).contains(&content_type) {
            return Err(format!(
                "not TLS at offset {off}: content type {content_type} (0x{content_type:02x}) \
                 is not 20..=23 ({})",
                show(rest)
            ));
        }
        if !(0x0301..=0x0303).contains(&version) {
            return Err(format!(
                "not TLS at offset {off}: record version 0x{version:04x} is not \
                 0x0301..=0x0303 ({})",
                show(rest)
            ));
        }
        if len == 0 || len > MAX_RECORD_LEN {
            return Err(format!(
                "not TLS at offset {off}: record length {len} is not 1..={MAX_RECORD_LEN} ({})",
                show(rest)
            ));
        }
        let Some(body) = after.get(..len) else {
            return Err(format!(
                "truncated record at offset {off}: length {len} declared, only {} byte(s) follow \
                 the header",
                after.len()
            ));
        };
        match (&mut handshake, content_type == HANDSHAKE) {
            (None, true) => handshake = Some((off, body.to_vec())),
            (Some((_, payload)), true) if !handshake_run_over => payload.extend_from_slice(body),
            (Some(_), false) => handshake_run_over = true,
            _ => {}
        }
        stream.records += 1;
        stream.content_types.push(content_type);
        off += 5 + len;
    }
    if let Some((at, payload)) = handshake {
        parse_first_handshake(&mut stream, at, &payload)?;
    }
    Ok(stream)
}

// ---- TCP reassembly ----

/// The parts of one captured TCP segment that reassembly needs.
struct Segment<'a> {
    src: SocketAddr,
    dst: SocketAddr,
    seq: u32,
    /// The acknowledgment number, if the ACK flag is set (and not RST).
    ack: Option<u32>,
    syn: bool,
    fin: bool,
    rst: bool,
    payload: &'a [u8],
}

impl<'a> Segment<'a> {
    /// The TCP segment in `packet`; `None` if it is not TCP over IP.
    fn from_sliced(packet: &SlicedPacket<'a>) -> Result<Option<Self>, String> {
        let (src_ip, dst_ip, fragmented_tcp) = match &packet.net {
            Some(NetSlice::Ipv4(ip)) => (
                IpAddr::V4(ip.header().source_addr()),
                IpAddr::V4(ip.header().destination_addr()),
                ip.is_payload_fragmented() && ip.payload().ip_number == IpNumber::TCP,
            ),
            Some(NetSlice::Ipv6(ip)) => (
                IpAddr::V6(ip.header().source_addr()),
                IpAddr::V6(ip.header().destination_addr()),
                ip.is_payload_fragmented() && ip.payload().ip_number == IpNumber::TCP,
            ),
            _ => return Ok(None),
        };
        if fragmented_tcp {
            return Err(format!(
                "IP fragment of a TCP segment {src_ip} -> {dst_ip}; fragments are not reassembled"
            ));
        }
        let Some(TransportSlice::Tcp(tcp)) = &packet.transport else {
            return Ok(None);
        };
        Ok(Some(Segment {
            src: SocketAddr::new(src_ip, tcp.source_port()),
            dst: SocketAddr::new(dst_ip, tcp.destination_port()),
            seq: tcp.sequence_number(),
            ack: (tcp.ack() && !tcp.rst()).then(|| tcp.acknowledgment_number()),
            syn: tcp.syn(),
            fin: tcp.fin(),
            rst: tcp.rst(),
            payload: tcp.payload(),
        }))
    }
}

/// A connection being collected: `a` sent its first packet, to `b`.
struct ConnState {
    a: SocketAddr,
    b: SocketAddr,
    /// Decided by a SYN (its sender) or a SYN-ACK (its receiver).
    client: Option<SocketAddr>,
    /// `[a -> b, b -> a]`.
    dirs: [Direction; 2],
}

impl ConnState {
    fn new(a: SocketAddr, b: SocketAddr) -> Self {
        Self {
            a,
            b,
            client: None,
            dirs: [Direction::default(), Direction::default()],
        }
    }

    fn dir_index(&self, seg: &Segment) -> usize {
        usize::from(seg.src != self.a)
    }

    /// Whether `seg` is a SYN opening a new connection on a reused 4-tuple
    /// (not a retransmission of the SYN already seen).
    fn is_new_connection(&self, seg: &Segment) -> bool {
        let dir = &self.dirs[self.dir_index(seg)];
        seg.syn && seg.ack.is_none() && dir.first.is_some() && dir.syn_seq != Some(seg.seq)
    }

    fn add(&mut self, seg: &Segment) {
        let d = self.dir_index(seg);
        if seg.syn {
            if seg.ack.is_none() {
                self.client = Some(seg.src);
            } else if self.client.is_none() {
                self.client = Some(seg.dst);
            }
        }
        self.dirs[d].add(seg);
        if let Some(ack) = seg.ack {
            let peer = &mut self.dirs[1 - d];
            let acked = peer.unwrap(ack);
            peer.max_ack = Some(peer.max_ack.map_or(acked, |m| m.max(acked)));
        }
    }

    fn finish(self) -> Result<TcpConn, String> {
        let client = self.client.unwrap_or(if self.b.port() > self.a.port() {
            self.b
        } else {
            self.a
        });
        let server = if client == self.a { self.b } else { self.a };
        let [from_a, from_b] = self.dirs;
        let (up, down) = if client == self.a {
            (from_a, from_b)
        } else {
            (from_b, from_a)
        };
        Ok(TcpConn {
            client,
            server,
            to_server: up.reassemble(&format!("{client} -> {server}"))?,
            to_client: down.reassemble(&format!("{server} -> {client}"))?,
        })
    }
}

/// One direction of a connection. Sequence numbers are unwrapped into
/// offsets (`i64`) relative to the first one this direction met, so streams
/// past 4 GiB and reordering before the first packet both work.
#[derive(Default)]
struct Direction {
    /// The raw sequence number at offset 0.
    origin: Option<u32>,
    /// The highest offset met so far: the anchor for unwrapping.
    high: i64,
    /// Offset of the first data byte, from the SYN (ISN + 1).
    data_start: Option<i64>,
    syn_seq: Option<u32>,
    /// Offset of this direction's first own packet (not RST).
    first: Option<i64>,
    /// (offset, payload) in capture order.
    segments: Vec<(i64, Vec<u8>)>,
    /// Offset of the FIN, i.e. the end of the data.
    fin: Option<i64>,
    /// The highest acknowledgment from the peer, as an offset.
    max_ack: Option<i64>,
}

impl Direction {
    /// The offset of raw sequence number `seq`: the one nearest the highest
    /// offset met so far.
    fn unwrap(&mut self, seq: u32) -> i64 {
        let origin = *self.origin.get_or_insert(seq);
        // Truncation intended: the sequence space wraps at 2^32.
        let high_seq = origin.wrapping_add(self.high as u32);
        let off = self.high + i64::from(seq.wrapping_sub(high_seq) as i32);
        self.high = self.high.max(off);
        off
    }

    fn add(&mut self, seg: &Segment) {
        if seg.rst {
            return; // carries no data; its seq may be anything (e.g. 0)
        }
        let off = self.unwrap(seg.seq);
        self.first = Some(self.first.map_or(off, |f| f.min(off)));
        // The SYN occupies one sequence number; data (TFO) follows it.
        let data = off + i64::from(seg.syn);
        if seg.syn {
            self.syn_seq = Some(seg.seq);
            self.data_start = Some(data);
        }
        if !seg.payload.is_empty() {
            self.segments.push((data, seg.payload.to_vec()));
            self.unwrap(seg.seq.wrapping_add(seg.payload.len() as u32));
        }
        if seg.fin {
            let fin = data + seg.payload.len() as i64;
            self.fin = Some(self.fin.map_or(fin, |f| f.max(fin)));
        }
    }

    /// The payload bytes in sequence order; `what` names the direction in
    /// errors.
    fn reassemble(mut self, what: &str) -> Result<Vec<u8>, String> {
        // Without a SYN, `first` is the lowest offset of any own packet,
        // hence at or below every segment.
        let start = self.data_start.or(self.first).unwrap_or(0);
        // Stable: at equal offsets the segment captured first wins.
        self.segments.sort_by_key(|s| s.0);
        let mut out = Vec::new();
        for (off, data) in &self.segments {
            let (rel, end) = (off - start, out.len() as i64);
            if rel > end {
                return Err(format!(
                    "{what}: bytes {end}..{rel} of the stream are missing from the capture"
                ));
            }
            let seg_end = rel + data.len() as i64;
            if seg_end > end {
                // In range: rel <= end < seg_end, so 0 <= end - rel < data.len().
                out.extend_from_slice(&data[(end - rel) as usize..]);
            }
        }
        let end = out.len() as i64;
        let fin = self.fin.map(|f| f - start);
        if let Some(fin) = fin.filter(|&f| f > end) {
            return Err(format!(
                "{what}: FIN at stream offset {fin}, but the capture holds only {end} byte(s)"
            ));
        }
        // The FIN, once acknowledged, counts one sequence number.
        let fin_len = i64::from(fin == Some(end));
        if let Some(acked) = self
            .max_ack
            .map(|a| a - start - fin_len)
            .filter(|&a| a > end)
        {
            return Err(format!(
                "{what}: the peer acknowledged {acked} byte(s), but the capture holds only {end}"
            ));
        }
        Ok(out)
    }
}

// ---- TLS handshake ----

/// Fills in the hello from the first handshake message, which starts the
/// handshake records' `payload` (the first of them at stream offset `at`).
fn parse_first_handshake(stream: &mut TlsStream, at: usize, payload: &[u8]) -> Result<(), String> {
    let context = |e: String| format!("handshake message in the record at offset {at}: {e}");
    let mut msg = Reader::new(payload);
    let msg_type = msg.u8("msg_type").map_err(context)?;
    let len = msg.take(3, "length").map_err(context)?;
    let len = u32::from_be_bytes([0, len[0], len[1], len[2]]);
    let mut body = msg.sub(len as usize, "body").map_err(context)?;
    match msg_type {
        1 => {
            let hello = parse_client_hello(&mut body)
                .map_err(|e| format!("ClientHello in the record at offset {at}: {e}"))?;
            stream.client_hello = Some(hello);
        }
        2 => {
            let hello = parse_server_hello(&mut body)
                .map_err(|e| format!("ServerHello in the record at offset {at}: {e}"))?;
            stream.server_hello = Some(hello);
        }
        _ => {}
    }
    Ok(())
}

const EXT_SERVER_NAME: u16 = 0;
const EXT_ALPN: u16 = 16;
const EXT_SUPPORTED_VERSIONS: u16 = 43;

fn parse_client_hello(r: &mut Reader) -> Result<ClientHello, String> {
    r.u16("legacy_version")?;
    r.take(32, "random")?;
    r.vec8("legacy_session_id")?;
    r.vec16("cipher_suites")?;
    r.vec8("legacy_compression_methods")?;
    let mut hello = ClientHello::default();
    if r.is_empty() {
        return Ok(hello); // no extensions (pre-TLS 1.2 style)
    }
    let mut exts = r.vec16("extensions")?;
    while !exts.is_empty() {
        let ext_type = exts.u16("extension_type")?;
        let mut data = exts.vec16("extension_data")?;
        match ext_type {
            EXT_SERVER_NAME => {
                let mut names = data.vec16("server_name_list")?;
                while !names.is_empty() {
                    let name_type = names.u8("name_type")?;
                    let name = names.vec16("host_name")?;
                    if name_type == 0 && hello.sni.is_none() {
                        hello.sni = Some(String::from_utf8_lossy(name.rest()).into_owned());
                    }
                }
            }
            EXT_ALPN => {
                let mut protocols = data.vec16("protocol_name_list")?;
                while !protocols.is_empty() {
                    let protocol = protocols.vec8("protocol_name")?;
                    hello
                        .alpn
                        .push(String::from_utf8_lossy(protocol.rest()).into_owned());
                }
            }
            EXT_SUPPORTED_VERSIONS => {
                let mut versions = data.vec8("supported_versions")?;
                while !versions.is_empty() {
                    hello.supported_versions.push(versions.u16("version")?);
                }
            }
            _ => {}
        }
    }
    Ok(hello)
}

fn parse_server_hello(r: &mut Reader) -> Result<ServerHello, String> {
    r.u16("legacy_version")?;
    r.take(32, "random")?;
    r.vec8("legacy_session_id_echo")?;
    let mut hello = ServerHello {
        selected_version: None,
        cipher_suite: r.u16("cipher_suite")?,
    };
    r.u8("legacy_compression_method")?;
    if r.is_empty() {
        return Ok(hello);
    }
    let mut exts = r.vec16("extensions")?;
    while !exts.is_empty() {
        let ext_type = exts.u16("extension_type")?;
        let mut data = exts.vec16("extension_data")?;
        if ext_type == EXT_SUPPORTED_VERSIONS {
            hello.selected_version = Some(data.u16("selected_version")?);
        }
    }
    Ok(hello)
}

/// A cursor over a handshake message; errors give the byte position within
/// the message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    /// Position of `buf[0]` within the whole message.
    base: usize,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self {
            buf,
            pos: 0,
            base: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.pos >= self.buf.len()
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or_default()
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], String> {
        let Some(bytes) = self.rest().get(..n) else {
            return Err(format!(
                "{what} at message byte {} needs {n} byte(s), only {} left",
                self.base + self.pos,
                self.rest().len()
            ));
        };
        self.pos += n;
        Ok(bytes)
    }

    fn u8(&mut self, what: &str) -> Result<u8, String> {
        Ok(self.take(1, what)?[0])
    }

    fn u16(&mut self, what: &str) -> Result<u16, String> {
        let b = self.take(2, what)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    /// The next `len` bytes as their own reader.
    fn sub(&mut self, len: usize, what: &str) -> Result<Reader<'a>, String> {
        let base = self.base + self.pos;
        let buf = self.take(len, what)?;
        Ok(Reader { buf, pos: 0, base })
    }

    /// A vector with a one-byte length prefix.
    fn vec8(&mut self, what: &str) -> Result<Reader<'a>, String> {
        let len = self.u8(what)?;
        self.sub(usize::from(len), what)
    }

    /// A vector with a two-byte length prefix.
    fn vec16(&mut self, what: &str) -> Result<Reader<'a>, String> {
        let len = self.u16(what)?;
        self.sub(usize::from(len), what)
    }
}

/// The first bytes of `b`, escaped, for error messages: plaintext shows up
/// as text.
fn show(b: &[u8]) -> String {
    let head = &b[..b.len().min(24)];
    let more = if b.len() > head.len() { "..." } else { "" };
    format!("bytes there: \"{}\"{more}", head.escape_ascii())
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::{
        io::{BufRead as _, BufReader as StdBufReader, Write as _},
        net::TcpListener,
        path::PathBuf,
        process::{Child, Command, Stdio},
        sync::mpsc,
        thread,
        time::{Duration, Instant},
    };

    use etherparse::PacketBuilder;
    use pcap_file::pcap::{PcapPacket, PcapWriter};

    // ---- synthetic TLS ----

    fn v8(b: &[u8]) -> Vec<u8> {
        let mut v = vec![u8::try_from(b.len()).unwrap()];
        v.extend_from_slice(b);
        v
    }

    fn v16(b: &[u8]) -> Vec<u8> {
        let mut v = u16::try_from(b.len()).unwrap().to_be_bytes().to_vec();
        v.extend_from_slice(b);
        v
    }

    fn ext(ext_type: u16, data: &[u8]) -> Vec<u8> {
        [ext_type.to_be_bytes().to_vec(), v16(data)].concat()
    }

    fn handshake(msg_type: u8, body: &[u8]) -> Vec<u8> {
        let len = u32::try_from(body.len()).unwrap().to_be_bytes();
        [&[msg_type], &len[1..], body].concat()
    }

    fn record(content_type: u8, body: &[u8]) -> Vec<u8> {
        [&[content_type, 3, 3][..], &v16(body)].concat()
    }

    fn client_hello(sni: &str, alpn: &[&str], versions: &[u16]) -> Vec<u8> {
        let names = [&[0u8][..], &v16(sni.as_bytes())].concat();
        let protocols: Vec<u8> = alpn.iter().flat_map(|p| v8(p.as_bytes())).collect();
        let versions: Vec<u8> = versions.iter().flat_map(|v| v.to_be_bytes()).collect();
        let exts = [
            ext(EXT_SERVER_NAME, &v16(&names)),
            ext(EXT_ALPN, &v16(&protocols)),
            ext(EXT_SUPPORTED_VERSIONS, &v8(&versions)),
            ext(51, &[0, 0]), // key_share, empty: ignored
        ]
        .concat();
        let body = [
            &[3, 3][..],
            &[7; 32],
            &v8(&[9; 32]),
            &v16(&[0x13, 0x01, 0x13, 0x02]),
            &v8(&[0]),
            &v16(&exts),
        ]
        .concat();
        handshake(1, &body)
    }

    fn server_hello(version: Option<u16>) -> Vec<u8> {
        let exts = version.map_or_else(Vec::new, |v| ext(EXT_SUPPORTED_VERSIONS, &v.to_be_bytes()));
        let body = [
            &[3, 3][..],
            &[5; 32],
            &v8(&[9; 32]),
            &[0x13, 0x01],
            &[0],
            &v16(&exts),
        ]
        .concat();
        handshake(2, &body)
    }

    fn client_stream() -> Vec<u8> {
        [
            record(
                22,
                &client_hello("api.svc.mesh.local", &["mesh/1"], &[0x0304]),
            ),
            record(20, &[1]),
            record(23, &[0xaa; 100]),
        ]
        .concat()
    }

    #[test]
    fn parses_client_hello() {
        let tls = parse_tls(&client_stream()).unwrap();
        assert_eq!(tls.records, 3);
        assert_eq!(tls.content_types, [22, 20, 23]);
        assert_eq!(
            tls.client_hello,
            Some(ClientHello {
                alpn: vec!["mesh/1".into()],
                supported_versions: vec![0x0304],
                sni: Some("api.svc.mesh.local".into()),
            })
        );
        assert_eq!(tls.server_hello, None);
    }

    #[test]
    fn parses_server_hello() {
        let bytes = [
            record(22, &server_hello(Some(0x0304))),
            record(20, &[1]),
            record(23, &[0xbb; 300]),
            record(23, &[0xcc; 20]),
        ]
        .concat();
        let tls = parse_tls(&bytes).unwrap();
        assert_eq!(tls.content_types, [22, 20, 23, 23]);
        assert_eq!(
            tls.server_hello,
            Some(ServerHello {
                selected_version: Some(0x0304),
                cipher_suite: 0x1301,
            })
        );
        let tls12 = parse_tls(&record(22, &server_hello(None))).unwrap();
        assert_eq!(tls12.server_hello.unwrap().selected_version, None);
    }

    #[test]
    fn parses_hello_fragmented_over_records() {
        let hello = client_hello("x", &["mesh/1", "h2"], &[0x0304, 0x0303]);
        let (a, b) = hello.split_at(10);
        let bytes = [record(22, a), record(22, b), record(23, &[1])].concat();
        let tls = parse_tls(&bytes).unwrap();
        let hello = tls.client_hello.unwrap();
        assert_eq!(hello.alpn, ["mesh/1", "h2"]);
        assert_eq!(hello.supported_versions, [0x0304, 0x0303]);
    }

    #[test]
    fn empty_is_zero_records() {
        assert_eq!(parse_tls(&[]).unwrap(), TlsStream::default());
    }

    #[test]
    fn rejects_plaintext() {
        let err = parse_tls(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap_err();
        assert!(err.contains("offset 0"), "{err}");
        assert!(err.contains("content type 71 (0x47)"), "{err}");
        assert!(err.contains("GET / HTTP/1.1\\r\\n"), "{err}");
    }

    #[test]
    fn rejects_truncated_record() {
        let bytes = client_stream();
        let last = bytes.len() - (5 + 100);
        let err = parse_tls(&bytes[..bytes.len() - 3]).unwrap_err();
        assert!(
            err.contains(&format!("truncated record at offset {last}")),
            "{err}"
        );
        assert!(err.contains("length 100 declared, only 97"), "{err}");

        let mut partial = bytes.clone();
        partial.extend_from_slice(&[23, 3]);
        let err = parse_tls(&partial).unwrap_err();
        assert!(
            err.contains(&format!(
                "truncated record header at offset {}",
                bytes.len()
            )),
            "{err}"
        );
    }

    #[test]
    fn rejects_bad_version_and_length() {
        let err = parse_tls(&[23, 3, 4, 0, 1, 0]).unwrap_err();
        assert!(err.contains("record version 0x0304"), "{err}");
        let err = parse_tls(&[23, 3, 3, 0, 0]).unwrap_err();
        assert!(err.contains("record length 0"), "{err}");
        let err = parse_tls(&[23, 3, 3, 0x41, 1]).unwrap_err();
        assert!(err.contains("record length 16641"), "{err}");
    }

    #[test]
    fn rejects_malformed_hello() {
        let mut hello = client_hello("x", &["mesh/1"], &[0x0304]);
        hello.truncate(hello.len() - 4);
        // Fix the handshake length so only the extensions are short.
        let len = u32::try_from(hello.len() - 4).unwrap().to_be_bytes();
        hello[1..4].copy_from_slice(&len[1..]);
        let err = parse_tls(&record(22, &hello)).unwrap_err();
        assert!(
            err.starts_with("ClientHello in the record at offset 0: "),
            "{err}"
        );
        assert!(err.contains("extensions"), "{err}");
    }

    // ---- synthetic captures ----

    const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];

    /// A TCP packet: `(from client, seq, ack, flags "S"/"F"/"R", payload)`.
    type Pkt<'a> = (bool, u32, Option<u32>, &'a str, &'a [u8]);

    fn write_pcap(path: &Path, client: SocketAddr, server: SocketAddr, pkts: &[Pkt]) {
        let mut writer = PcapWriter::new(fs::File::create(path).unwrap()).unwrap();
        for &(up, seq, ack, flags, payload) in pkts {
            let (src, dst) = if up {
                (client, server)
            } else {
                (server, client)
            };
            let ip = match (src.ip(), dst.ip()) {
                (IpAddr::V4(s), IpAddr::V4(d)) => {
                    PacketBuilder::ethernet2(MAC, MAC).ipv4(s.octets(), d.octets(), 64)
                }
                (IpAddr::V6(s), IpAddr::V6(d)) => {
                    PacketBuilder::ethernet2(MAC, MAC).ipv6(s.octets(), d.octets(), 64)
                }
                _ => unreachable!(),
            };
            let mut tcp = ip.tcp(src.port(), dst.port(), seq, 1000);
            if let Some(ack) = ack {
                tcp = tcp.ack(ack);
            }
            for flag in flags.chars() {
                tcp = match flag {
                    'S' => tcp.syn(),
                    'F' => tcp.fin(),
                    'R' => tcp.rst(),
                    _ => unreachable!(),
                };
            }
            let mut data = Vec::new();
            tcp.write(&mut data, payload).unwrap();
            let len = u32::try_from(data.len()).unwrap();
            writer
                .write_packet(&PcapPacket::new(Duration::ZERO, len, &data))
                .unwrap();
        }
    }

    fn conns_of(client: &str, server: &str, pkts: &[Pkt]) -> Result<Vec<TcpConn>, String> {
        let dir = TempDir::new("synth");
        let path = dir.0.join("c.pcap");
        write_pcap(
            &path,
            client.parse().unwrap(),
            server.parse().unwrap(),
            pkts,
        );
        tcp_conns(&path)
    }

    const C4: &str = "10.0.0.1:40000";
    const S4: &str = "10.0.0.2:443";

    #[test]
    fn reassembles_out_of_order_and_retransmitted() {
        let isn = u32::MAX - 3; // data crosses the 2^32 wrap
        let sisn = 1000;
        let c = isn.wrapping_add(1);
        let s = sisn + 1;
        let conns = conns_of(
            C4,
            S4,
            &[
                (true, isn, None, "S", b""),
                (false, sisn, Some(c), "S", b""),
                (true, c, Some(s), "", b""),
                (true, c.wrapping_add(5), Some(s), "", b"world"),
                (true, c, Some(s), "", b"hello"),
                (true, c.wrapping_add(5), Some(s), "", b"world"), // retransmission
                (true, c.wrapping_add(3), Some(s), "", b"lowor"), // overlapping
                (false, s, Some(c.wrapping_add(10)), "", b"ok"),
                (true, c.wrapping_add(10), Some(s + 2), "F", b"!"),
                (false, s + 2, Some(c.wrapping_add(12)), "F", b""),
                (true, c.wrapping_add(12), Some(s + 3), "", b""),
            ],
        )
        .unwrap();
        assert_eq!(
            conns,
            [TcpConn {
                client: C4.parse().unwrap(),
                server: S4.parse().unwrap(),
                to_server: b"helloworld!".to_vec(),
                to_client: b"ok".to_vec(),
            }]
        );
    }

    #[test]
    fn without_syn_client_is_higher_port_ipv6() {
        let (c, s) = ("[fd00::1]:50000", "[fd00::2]:8080");
        // The server speaks first in the capture.
        let conns = conns_of(
            c,
            s,
            &[
                (false, 7000, Some(100), "", b"abc"),
                (true, 100, Some(7003), "", b"xyz"),
                (false, 7003, Some(103), "", b"def"),
            ],
        )
        .unwrap();
        assert_eq!(conns.len(), 1);
        assert_eq!(conns[0].client, c.parse().unwrap());
        assert_eq!(conns[0].to_server, b"xyz");
        assert_eq!(conns[0].to_client, b"abcdef");
    }

    #[test]
    fn reused_tuple_is_a_new_connection() {
        let conns = conns_of(
            C4,
            S4,
            &[
                (true, 10, None, "S", b""),
                (false, 50, Some(11), "S", b""),
                (true, 11, Some(51), "", b"one"),
                (true, 14, Some(51), "R", b""),
                (true, 900, None, "S", b""),
                (true, 900, None, "S", b""), // SYN retransmission
                (false, 70, Some(901), "S", b""),
                (true, 901, Some(71), "", b"two"),
            ],
        )
        .unwrap();
        let streams: Vec<_> = conns.iter().map(|c| c.to_server.as_slice()).collect();
        assert_eq!(streams, [b"one", b"two"]);
    }

    #[test]
    fn gap_is_an_error() {
        let err = conns_of(
            C4,
            S4,
            &[
                (true, 10, None, "S", b""),
                (true, 11, None, "", b"abc"),
                (true, 20, None, "", b"xyz"),
            ],
        )
        .unwrap_err();
        assert!(
            err.contains("bytes 3..9 of the stream are missing"),
            "{err}"
        );
        assert!(err.contains(&format!("{C4} -> {S4}")), "{err}");
    }

    #[test]
    fn missing_tail_is_an_error() {
        // The server acknowledged 6 bytes; only 3 were captured.
        let err = conns_of(
            C4,
            S4,
            &[
                (true, 10, None, "S", b""),
                (false, 50, Some(11), "S", b""),
                (true, 11, Some(51), "", b"abc"),
                (false, 51, Some(17), "", b""),
            ],
        )
        .unwrap_err();
        assert!(
            err.contains("acknowledged 6 byte(s), but the capture holds only 3"),
            "{err}"
        );
        let err = conns_of(
            C4,
            S4,
            &[(true, 10, None, "S", b""), (true, 15, None, "F", b"")],
        )
        .unwrap_err();
        assert!(err.contains("FIN at stream offset 4"), "{err}");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = TempDir::new("bad");
        let path = dir.0.join("x.pcap");
        fs::write(&path, b"not a capture at all").unwrap();
        let err = tcp_conns(&path).unwrap_err();
        assert!(err.contains("is not a pcap file"), "{err}");
        assert!(tcp_conns(&dir.0.join("missing")).is_err());
        assert!(file_contains(&path, b"capture").unwrap());
        assert!(!file_contains(&path, b"mesh").unwrap());
    }

    // ---- a real capture on loopback ----

    /// A scratch directory, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let n = N.fetch_add(1, Ordering::SeqCst);
            let dir = std::env::temp_dir().join(format!("wire-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            Self(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Child processes, killed on drop (also when the test panics).
    #[derive(Default)]
    struct Procs(Vec<Child>);

    impl Procs {
        fn spawn(&mut self, cmd: &mut Command) -> &mut Child {
            let child = cmd
                .spawn()
                .unwrap_or_else(|e| panic!("failed to spawn {cmd:?}: {e}"));
            self.0.push(child);
            self.0.last_mut().unwrap()
        }
    }

    impl Drop for Procs {
        fn drop(&mut self) {
            for child in &mut self.0 {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }

    fn wait_exit(child: &mut Child, timeout: Duration, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not exit within {timeout:?}"
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn run(cmd: &mut Command) {
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{cmd:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    #[test]
    fn real_tls13_capture_on_loopback() {
        crate::require_root();
        let dir = TempDir::new("lo");
        let (cert, key) = (dir.0.join("cert.pem"), dir.0.join("key.pem"));
        run(Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
            ])
            .args(["-nodes", "-subj", "/CN=x", "-days", "1", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert));
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let accept = format!("127.0.0.1:{port}");
        let mut procs = Procs::default();

        // The server; its stdin stays open (at EOF s_server drops the client).
        let server_out = dir.0.join("server.out");
        procs.spawn(
            Command::new("openssl")
                .args(["s_server", "-accept", &accept, "-tls1_3", "-alpn", "mesh/1"])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .stdin(Stdio::piped())
                .stdout(fs::File::create(&server_out).unwrap())
                .stderr(Stdio::null()),
        );
        let server_said = |s: &str| {
            fs::read_to_string(&server_out)
                .unwrap_or_default()
                .contains(s)
        };
        assert!(
            crate::wait_until(Duration::from_secs(10), || server_said("ACCEPT")),
            "s_server did not start"
        );

        let pcap = dir.0.join("lo.pcap");
        let tcpdump = procs.spawn(
            Command::new("tcpdump")
                .args(["-i", "lo", "-U", "--immediate-mode", "-w"])
                .arg(&pcap)
                .arg(format!("tcp port {port}"))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped()),
        );
        let tcpdump_pid = tcpdump.id();
        let stderr = tcpdump.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        // Reads all of tcpdump's stderr, so it never blocks on a full pipe.
        let reader = thread::spawn(move || {
            let mut all = String::new();
            for line in StdBufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = tx.send(());
                }
                all.push_str(&line);
                all.push('\n');
            }
            all
        });
        assert!(
            rx.recv_timeout(Duration::from_secs(10)).is_ok(),
            "tcpdump did not start listening"
        );

        let marker = format!("wire-marker-{}-{port}", std::process::id());
        let client = procs.spawn(
            Command::new("openssl")
                .args([
                    "s_client", "-connect", &accept, "-tls1_3", "-alpn", "mesh/1",
                ])
                .args(["-servername", "api.svc.mesh.local"])
                .stdin(Stdio::piped())
                .stdout(Stdio::null())
                .stderr(Stdio::null()),
        );
        // At EOF on stdin s_client sends close_notify and exits.
        let mut stdin = client.stdin.take().unwrap();
        writeln!(stdin, "{marker}").unwrap();
        drop(stdin);
        wait_exit(client, Duration::from_secs(10), "s_client");
        assert!(
            crate::wait_until(Duration::from_secs(5), || server_said(&marker)),
            "the marker did not reach s_server"
        );

        // Let the last packets reach the capture, then stop tcpdump.
        thread::sleep(Duration::from_millis(200));
        run(Command::new("kill").args(["-INT", &tcpdump_pid.to_string()]));
        let tcpdump = procs.0.iter_mut().find(|c| c.id() == tcpdump_pid).unwrap();
        wait_exit(tcpdump, Duration::from_secs(5), "tcpdump");
        let stats = reader.join().unwrap();
        assert!(
            stats
                .lines()
                .any(|l| l.trim() == "0 packets dropped by kernel"),
            "{stats}"
        );

        let conns = tcp_conns(&pcap).unwrap();
        assert_eq!(conns.len(), 1, "{conns:?}");
        let conn = &conns[0];
        assert_eq!(conn.server, accept.parse().unwrap());
        let up = parse_tls(&conn.to_server).unwrap();
        let down = parse_tls(&conn.to_client).unwrap();
        let hello = up.client_hello.clone().unwrap();
        assert!(hello.alpn.iter().any(|p| p == "mesh/1"), "{hello:?}");
        assert!(hello.supported_versions.contains(&0x0304), "{hello:?}");
        assert_eq!(hello.sni.as_deref(), Some("api.svc.mesh.local"));
        assert_eq!(
            down.server_hello.clone().unwrap().selected_version,
            Some(0x0304)
        );
        assert!(
            up.content_types[1..].iter().all(|&t| t == 20 || t == 23),
            "{up:?}"
        );
        assert!(
            down.content_types[1..].iter().all(|&t| t == 20 || t == 23),
            "{down:?}"
        );
        assert!(!file_contains(&pcap, marker.as_bytes()).unwrap());
        assert!(file_contains(&pcap, b"api.svc.mesh.local").unwrap());
    }
}
