//! Forwarding of every name outside the cluster domain to upstream resolvers (the node's
//! `/etc/resolv.conf` by default, as CoreDNS's `forward . /etc/resolv.conf`): over UDP,
//! again over TCP when the answer is truncated, each upstream in turn, under timeouts so
//! that a dead upstream costs a client a SERVFAIL, never a hang.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::serialize::binary::DecodeError;
use hickory_proto::ProtoError;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::debug;

/// Where the node's resolvers are listed.
pub const RESOLV_CONF: &str = "/etc/resolv.conf";
/// The upstream list of systemd-resolved, used when `/etc/resolv.conf` only points at its
/// local stub (which would not be reachable from a pod's network namespace).
pub const SYSTEMD_RESOLV_CONF: &str = "/run/systemd/resolve/resolv.conf";
const SYSTEMD_STUB: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53));

/// How long one upstream gets to answer.
pub const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a forwarded query may take in all, below the 5 s a stub resolver waits.
pub const TOTAL_TIMEOUT: Duration = Duration::from_secs(4);

/// The EDNS payload size advertised upstream (the DNS flag day 2020 value).
const UPSTREAM_PAYLOAD: u16 = 1232;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolver is configured")]
    NoUpstreams,
    #[error("no upstream answered within {0:?}")]
    Timeout(Duration),
    #[error("upstream {upstream} failed")]
    Exchange {
        upstream: SocketAddr,
        #[source]
        source: ExchangeError,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum ExchangeError {
    #[error("encoding the query")]
    Encode(#[source] ProtoError),
    #[error("exchanging over UDP")]
    Udp(#[source] io::Error),
    #[error("exchanging over TCP")]
    Tcp(#[source] io::Error),
    #[error("decoding the TCP answer")]
    Decode(#[source] DecodeError),
    #[error("the TCP answer does not match the query")]
    Mismatch,
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

#[derive(Debug, thiserror::Error)]
pub enum ResolvConfError {
    #[error("reading {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// The `nameserver` lines of a resolv.conf, on port 53. Addresses with a zone
/// (`fe80::1%eth0`) are skipped.
pub fn parse_resolv_conf(text: &str) -> Vec<SocketAddr> {
    text.lines()
        .filter_map(|line| {
            let mut words = line.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|addr| addr.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

/// The node's upstream resolvers: `/etc/resolv.conf`, or systemd-resolved's own list when
/// that only names the 127.0.0.53 stub.
pub fn system_upstreams() -> Result<Vec<SocketAddr>, ResolvConfError> {
    upstreams_from(Path::new(RESOLV_CONF), Path::new(SYSTEMD_RESOLV_CONF))
}

/// [`system_upstreams`] from other files.
pub fn upstreams_from(resolv_conf: &Path, systemd_resolv_conf: &Path) -> Result<Vec<SocketAddr>, ResolvConfError> {
    let read = |path: &Path| {
        std::fs::read_to_string(path).map_err(|source| ResolvConfError::Read { path: path.to_path_buf(), source })
    };
    let listed = parse_resolv_conf(&read(resolv_conf)?);
    if !listed.is_empty() && listed.iter().all(|a| a.ip() == SYSTEMD_STUB) {
        return Ok(parse_resolv_conf(&read(systemd_resolv_conf)?));
    }
    Ok(listed)
}

/// An `--upstream` value: `IP` (port 53) or `IP:PORT` (`[IPv6]:PORT`).
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    let s = s.trim();
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.trim_start_matches('[')
        .trim_end_matches(']')
        .parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is neither an IP address nor IP:PORT"))
}

/// Sends queries to upstream resolvers.
#[derive(Debug, Clone)]
pub struct Forwarder {
    upstreams: Vec<SocketAddr>,
    attempt_timeout: Duration,
    total_timeout: Duration,
}

impl Forwarder {
    pub fn new(upstreams: Vec<SocketAddr>) -> Forwarder {
        Forwarder { upstreams, attempt_timeout: ATTEMPT_TIMEOUT, total_timeout: TOTAL_TIMEOUT }
    }

    /// Other timeouts than [`ATTEMPT_TIMEOUT`] and [`TOTAL_TIMEOUT`].
    pub fn with_timeouts(mut self, attempt: Duration, total: Duration) -> Forwarder {
        self.attempt_timeout = attempt;
        self.total_timeout = total;
        self
    }

    pub fn upstreams(&self) -> &[SocketAddr] {
        &self.upstreams
    }

    /// Asks the upstreams in turn until one answers with something other than SERVFAIL or
    /// REFUSED; such an answer is returned when no upstream does better.
    pub async fn forward(&self, query: &Query, recursion_desired: bool) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let attempts = async {
            let mut last: Result<Message, ForwardError> = Err(ForwardError::Timeout(self.total_timeout));
            for &upstream in &self.upstreams {
                let result = match tokio::time::timeout(self.attempt_timeout, exchange(upstream, query, recursion_desired)).await {
                    Ok(result) => result,
                    Err(_) => Err(ExchangeError::Timeout(self.attempt_timeout)),
                };
                match result {
                    Ok(answer)
                        if !matches!(answer.metadata.response_code, ResponseCode::ServFail | ResponseCode::Refused) =>
                    {
                        return Ok(answer);
                    }
                    Ok(answer) => {
                        debug!(%upstream, rcode = %answer.metadata.response_code, "upstream failed the query");
                        last = Ok(answer);
                    }
                    Err(source) => {
                        debug!(%upstream, error = %source, "upstream exchange failed");
                        if last.is_err() {
                            last = Err(ForwardError::Exchange { upstream, source });
                        }
                    }
                }
            }
            last
        };
        tokio::time::timeout(self.total_timeout, attempts).await.unwrap_or(Err(ForwardError::Timeout(self.total_timeout)))
    }
}

/// One query to one upstream: UDP, then TCP if the answer came back truncated.
async fn exchange(upstream: SocketAddr, query: &Query, recursion_desired: bool) -> Result<Message, ExchangeError> {
    let id: u16 = rand::random();
    let mut message = Message::query();
    message.metadata.id = id;
    message.metadata.recursion_desired = recursion_desired;
    message.add_query(query.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(UPSTREAM_PAYLOAD);
    message.set_edns(edns);
    let bytes = message.to_vec().map_err(ExchangeError::Encode)?;

    let answer = exchange_udp(upstream, &bytes, id, query).await?;
    if !answer.metadata.truncation {
        return Ok(answer);
    }
    debug!(%upstream, "truncated over UDP, asking again over TCP");
    exchange_tcp(upstream, &bytes, id, query).await
}

fn answers(message: &Message, id: u16, query: &Query) -> bool {
    message.metadata.id == id
        && message.metadata.message_type == MessageType::Response
        && message.queries.len() == 1
        && message.queries[0].name() == query.name()
        && message.queries[0].query_type() == query.query_type()
}

async fn exchange_udp(upstream: SocketAddr, bytes: &[u8], id: u16, query: &Query) -> Result<Message, ExchangeError> {
    let local: SocketAddr = match upstream {
        SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let socket = UdpSocket::bind(local).await.map_err(ExchangeError::Udp)?;
    // Connected, so that only the upstream's datagrams arrive and an ICMP refusal fails fast.
    socket.connect(upstream).await.map_err(ExchangeError::Udp)?;
    socket.send(bytes).await.map_err(ExchangeError::Udp)?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await.map_err(ExchangeError::Udp)?;
        // Anything that does not answer this query (late, spoofed, garbage) is ignored.
        match Message::from_vec(&buf[..n]) {
            Ok(message) if answers(&message, id, query) => return Ok(message),
            Ok(_) => debug!(%upstream, "ignoring a datagram that does not answer the query"),
            Err(error) => debug!(%upstream, %error, "ignoring an undecodable datagram"),
        }
    }
}

async fn exchange_tcp(upstream: SocketAddr, bytes: &[u8], id: u16, query: &Query) -> Result<Message, ExchangeError> {
    let mut stream = TcpStream::connect(upstream).await.map_err(ExchangeError::Tcp)?;
    let len = u16::try_from(bytes.len()).map_err(|_| ExchangeError::Tcp(io::Error::other("query too long")))?;
    let mut framed = Vec::with_capacity(bytes.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(bytes);
    stream.write_all(&framed).await.map_err(ExchangeError::Tcp)?;
    let len = stream.read_u16().await.map_err(ExchangeError::Tcp)?;
    let mut buf = vec![0u8; usize::from(len)];
    stream.read_exact(&mut buf).await.map_err(ExchangeError::Tcp)?;
    let message = Message::from_vec(&buf).map_err(ExchangeError::Decode)?;
    if !answers(&message, id, query) {
        return Err(ExchangeError::Mismatch);
    }
    Ok(message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[test]
    fn resolv_conf_nameservers() {
        let text = "# comment\nsearch example.org\nnameserver 10.0.0.2\nnameserver  fd00::53 \nnameserver fe80::1%eth0\n;nameserver 9.9.9.9\noptions ndots:5\n";
        assert_eq!(parse_resolv_conf(text), vec!["10.0.0.2:53".parse().unwrap(), "[fd00::53]:53".parse().unwrap()]);
    }

    #[test]
    fn systemd_stub_is_replaced_by_the_real_upstreams() {
        let dir = std::env::temp_dir().join(format!("cluster-dns-resolv-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (etc, systemd) = (dir.join("resolv.conf"), dir.join("systemd.conf"));
        std::fs::write(&etc, "nameserver 127.0.0.53\noptions edns0\n").unwrap();
        std::fs::write(&systemd, "nameserver 192.168.1.1\n").unwrap();
        assert_eq!(upstreams_from(&etc, &systemd).unwrap(), vec!["192.168.1.1:53".parse().unwrap()]);
        std::fs::write(&etc, "nameserver 127.0.0.53\nnameserver 1.1.1.1\n").unwrap();
        assert_eq!(upstreams_from(&etc, &systemd).unwrap().len(), 2);
        std::fs::remove_file(&systemd).unwrap();
        std::fs::write(&etc, "nameserver 127.0.0.53\n").unwrap();
        assert!(matches!(upstreams_from(&etc, &systemd), Err(ResolvConfError::Read { .. })));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn upstream_flags() {
        assert_eq!(parse_upstream("10.0.0.1").unwrap(), "10.0.0.1:53".parse().unwrap());
        assert_eq!(parse_upstream("10.0.0.1:5353").unwrap(), "10.0.0.1:5353".parse().unwrap());
        assert_eq!(parse_upstream("fd00::1").unwrap(), "[fd00::1]:53".parse().unwrap());
        assert_eq!(parse_upstream("[fd00::1]").unwrap(), "[fd00::1]:53".parse().unwrap());
        assert_eq!(parse_upstream("[fd00::1]:54").unwrap(), "[fd00::1]:54".parse().unwrap());
        assert!(parse_upstream("dns.google").is_err());
    }

    fn query() -> Query {
        Query::query(Name::from_ascii("example.com.").unwrap(), RecordType::A)
    }

    /// An answer to `request` with `records` A records; truncated (and empty) when asked.
    fn reply(request: &[u8], records: usize, truncated: bool) -> Vec<u8> {
        let request = Message::from_vec(request).unwrap();
        let mut answer = Message::response(request.metadata.id, request.metadata.op_code);
        answer.add_queries(request.queries.clone());
        answer.metadata.truncation = truncated;
        if !truncated {
            for i in 0..records {
                let ip = Ipv4Addr::new(192, 0, 2, u8::try_from(i % 250).unwrap());
                answer.add_answer(Record::from_rdata(request.queries[0].name().clone(), 60, RData::A(A(ip))));
            }
        }
        answer.to_vec().unwrap()
    }

    /// A UDP upstream that answers truncated, and a TCP one on the same port that answers
    /// in full; counts TCP queries.
    async fn truncating_upstream() -> (SocketAddr, Arc<AtomicUsize>) {
        // The kernel picks a free UDP port; the same TCP port may be taken by another
        // test's socket, so try again with another one until both are ours.
        let mut attempt = 0;
        let (udp, addr, tcp) = loop {
            let udp = UdpSocket::bind("127.0.0.1:0").await.unwrap();
            let addr = udp.local_addr().unwrap();
            match tokio::net::TcpListener::bind(addr).await {
                Ok(tcp) => break (udp, addr, tcp),
                Err(e) if e.kind() == std::io::ErrorKind::AddrInUse && attempt < 20 => attempt += 1,
                Err(e) => panic!("binding TCP {addr}: {e}"),
            }
        };
        tokio::spawn(async move {
            let mut buf = vec![0u8; 4096];
            while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
                // A stray datagram with another ID first: it must be ignored.
                let mut stray = Message::from_vec(&reply(&buf[..n], 1, false)).unwrap();
                stray.metadata.id = stray.metadata.id.wrapping_add(1);
                udp.send_to(&stray.to_vec().unwrap(), peer).await.unwrap();
                udp.send_to(&reply(&buf[..n], 0, true), peer).await.unwrap();
            }
        });
        let tcp_queries = Arc::new(AtomicUsize::new(0));
        let count = tcp_queries.clone();
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = tcp.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                let len = stream.read_u16().await.unwrap();
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await.unwrap();
                let answer = reply(&buf, 100, false);
                stream.write_all(&u16::try_from(answer.len()).unwrap().to_be_bytes()).await.unwrap();
                stream.write_all(&answer).await.unwrap();
            }
        });
        (addr, tcp_queries)
    }

    #[tokio::test]
    async fn truncated_udp_answers_are_fetched_again_over_tcp() {
        let (upstream, tcp_queries) = truncating_upstream().await;
        let answer = Forwarder::new(vec![upstream]).forward(&query(), true).await.unwrap();
        assert_eq!(answer.answers.len(), 100);
        assert!(!answer.metadata.truncation);
        assert_eq!(tcp_queries.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn a_silent_upstream_times_out_and_the_next_one_answers() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let (good, _) = truncating_upstream().await;
        let forwarder = Forwarder::new(vec![silent.local_addr().unwrap(), good])
            .with_timeouts(Duration::from_millis(200), Duration::from_secs(3));
        let started = std::time::Instant::now();
        let answer = forwarder.forward(&query(), true).await.unwrap();
        assert_eq!(answer.answers.len(), 100);
        assert!(started.elapsed() >= Duration::from_millis(200));
    }

    #[tokio::test]
    async fn no_upstream_answering_is_an_error_in_bounded_time() {
        let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        let forwarder = Forwarder::new(vec![silent.local_addr().unwrap(); 5])
            .with_timeouts(Duration::from_millis(200), Duration::from_millis(500));
        let started = std::time::Instant::now();
        let err = forwarder.forward(&query(), true).await.unwrap_err();
        assert!(matches!(err, ForwardError::Timeout(_)), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(matches!(Forwarder::new(vec![]).forward(&query(), true).await, Err(ForwardError::NoUpstreams)));
    }
}
