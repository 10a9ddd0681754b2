//! cluster-dns against the in-process apiserver: Services and EndpointSlices are created
//! through kube, the server runs on 127.0.0.1:0, and real DNS messages (built with
//! hickory-proto) go to it over UDP and TCP. Names outside the cluster domain go to a fake
//! upstream resolver on loopback (there is no internet here).

#![allow(clippy::unwrap_used)]

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use hickory_proto::op::{Edns, Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, PostParams};
use kube::Api;
use rkube_tests::cluster::{eventually, Cluster};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

// ---------------------------------------------------------------- a DNS client

#[derive(Clone, Copy, Debug)]
enum Transport {
    Udp,
    Tcp,
}

fn query_bytes(name: &str, qtype: RecordType, edns: bool) -> anyhow::Result<(u16, Vec<u8>)> {
    let mut message = Message::query();
    let id = message.metadata.id;
    message.metadata.recursion_desired = true;
    message.add_query(Query::query(Name::from_ascii(name)?, qtype));
    if edns {
        let mut e = Edns::new();
        e.set_max_payload(4096);
        message.set_edns(e);
    }
    Ok((id, message.to_vec()?))
}

async fn ask(server: SocketAddr, transport: Transport, name: &str, qtype: RecordType, edns: bool) -> anyhow::Result<Message> {
    let (id, bytes) = query_bytes(name, qtype, edns)?;
    let exchange = async {
        let answer = match transport {
            Transport::Udp => {
                let socket = UdpSocket::bind("127.0.0.1:0").await?;
                socket.send_to(&bytes, server).await?;
                let mut buf = vec![0u8; 65535];
                let (n, _) = socket.recv_from(&mut buf).await?;
                Message::from_vec(&buf[..n])?
            }
            Transport::Tcp => {
                let mut stream = TcpStream::connect(server).await?;
                stream.write_all(&u16::try_from(bytes.len())?.to_be_bytes()).await?;
                stream.write_all(&bytes).await?;
                let len = stream.read_u16().await?;
                let mut buf = vec![0u8; usize::from(len)];
                stream.read_exact(&mut buf).await?;
                Message::from_vec(&buf)?
            }
        };
        anyhow::Ok(answer)
    };
    let answer = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .with_context(|| format!("no answer for {name} {qtype} over {transport:?}"))??;
    if answer.metadata.id != id || answer.metadata.message_type != MessageType::Response {
        bail!("not an answer to our query: {answer:?}");
    }
    Ok(answer)
}

async fn query(server: SocketAddr, transport: Transport, name: &str, qtype: RecordType) -> anyhow::Result<Message> {
    ask(server, transport, name, qtype, true).await
}

/// The answer section's data as text, sorted.
fn answers(message: &Message) -> Vec<String> {
    let mut out: Vec<String> = message.answers.iter().map(|r| r.data.to_string()).collect();
    out.sort();
    out
}

// ---------------------------------------------------------------- a fake upstream

/// A resolver on loopback for `example.test`: `www` → 192.0.2.10, `big` → 60 A records
/// (truncated over UDP, whole over TCP), anything else NXDOMAIN. Records every name asked.
struct Upstream {
    addr: SocketAddr,
    asked: Arc<Mutex<Vec<String>>>,
}

fn upstream_answer(request: &[u8], udp: bool) -> Option<Vec<u8>> {
    let request = Message::from_vec(request).ok()?;
    let query = request.queries.first()?.clone();
    let mut answer = Message::response(request.metadata.id, request.metadata.op_code);
    answer.metadata.recursion_desired = request.metadata.recursion_desired;
    answer.metadata.recursion_available = true;
    answer.add_query(query.clone());
    let name = query.name().to_ascii().to_ascii_lowercase();
    let a = |last: u8| Record::from_rdata(query.name().clone(), 300, RData::A(A(Ipv4Addr::new(192, 0, 2, last))));
    match (name.as_str(), query.query_type()) {
        ("www.example.test.", RecordType::A) => {
            answer.add_answer(a(10));
        }
        ("www.example.test.", _) => {}
        ("big.example.test.", RecordType::A) if udp => answer.metadata.truncation = true,
        ("big.example.test.", RecordType::A) => {
            for i in 0..60 {
                answer.add_answer(a(100 + i));
            }
        }
        _ => answer.metadata.response_code = ResponseCode::NXDomain,
    }
    answer.to_vec().ok()
}

async fn start_upstream() -> anyhow::Result<Upstream> {
    // A port free for both UDP and TCP (the kernel's pick for UDP may be taken for TCP).
    let listeners = cluster_dns::bind("127.0.0.1:0".parse()?).await?;
    let addr = listeners.local_addr();
    let (udp, tcp) = listeners.into_sockets();
    let asked = Arc::new(Mutex::new(Vec::new()));
    let record = |asked: &Arc<Mutex<Vec<String>>>, bytes: &[u8]| {
        if let Some(q) = Message::from_vec(bytes).ok().and_then(|m| m.queries.first().cloned()) {
            asked.lock().unwrap().push(q.name().to_ascii().to_ascii_lowercase());
        }
    };
    let seen = asked.clone();
    tokio::spawn(async move {
        let mut buf = vec![0u8; 65535];
        while let Ok((n, peer)) = udp.recv_from(&mut buf).await {
            record(&seen, &buf[..n]);
            if let Some(answer) = upstream_answer(&buf[..n], true) {
                let _ = udp.send_to(&answer, peer).await;
            }
        }
    });
    let seen = asked.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = tcp.accept().await {
            let seen = seen.clone();
            tokio::spawn(async move {
                let Ok(len) = stream.read_u16().await else { return };
                let mut buf = vec![0u8; usize::from(len)];
                if stream.read_exact(&mut buf).await.is_err() {
                    return;
                }
                record(&seen, &buf);
                if let Some(answer) = upstream_answer(&buf, false) {
                    let _ = stream.write_all(&u16::try_from(answer.len()).unwrap().to_be_bytes()).await;
                    let _ = stream.write_all(&answer).await;
                }
            });
        }
    });
    Ok(Upstream { addr, asked })
}

// ---------------------------------------------------------------- the server under test

/// Starts cluster-dns on 127.0.0.1:0 with `client` and `upstreams`; stops with the token.
async fn start_dns(
    client: kube::Client,
    upstreams: Vec<SocketAddr>,
    shutdown: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<Result<(), cluster_dns::DnsError>>)> {
    let listeners = cluster_dns::bind("127.0.0.1:0".parse()?).await?;
    let addr = listeners.local_addr();
    let config = cluster_dns::Config {
        kubeconfig: None,
        listen: addr,
        cluster_domain: "cluster.local".into(),
        upstreams: Some(upstreams),
        ttl: 7,
    };
    let server = tokio::spawn(cluster_dns::serve(config, listeners, client, shutdown));
    Ok((addr, server))
}

async fn create<K>(api: &Api<K>, json: serde_json::Value) -> anyhow::Result<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let object: K = serde_json::from_value(json)?;
    Ok(api.create(&PostParams::default(), &object).await?)
}

fn endpoint(ip: &str, hostname: Option<&str>, ready: bool) -> serde_json::Value {
    let mut e = serde_json::json!({"addresses": [ip], "conditions": {"ready": ready}});
    if let Some(h) = hostname {
        e["hostname"] = h.into();
    }
    e
}

async fn create_objects(client: &kube::Client) -> anyhow::Result<()> {
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    create(&services, serde_json::json!({
        "metadata": {"name": "web"},
        "spec": {"clusterIP": "10.43.0.50", "ports": [{"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}
    }))
    .await?;
    create(&services, serde_json::json!({
        "metadata": {"name": "db"},
        "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}
    }))
    .await?;
    create(&slices, serde_json::json!({
        "metadata": {"name": "db-abcde", "labels": {"kubernetes.io/service-name": "db"}},
        "addressType": "IPv4",
        "endpoints": [endpoint("10.42.0.5", Some("db-0"), true), endpoint("10.42.0.6", Some("db-1"), true), endpoint("10.42.0.7", Some("db-2"), false)],
        "ports": [{"name": "pg", "port": 15432, "protocol": "TCP"}]
    }))
    .await?;
    create(&services, serde_json::json!({
        "metadata": {"name": "ext"},
        "spec": {"type": "ExternalName", "externalName": "www.example.test"}
    }))
    .await?;
    // A headless Service whose answer does not fit a 512-byte UDP message.
    create(&services, serde_json::json!({"metadata": {"name": "many"}, "spec": {"clusterIP": "None"}})).await?;
    let many: Vec<_> = (1..=80).map(|i| endpoint(&format!("10.42.1.{i}"), None, true)).collect();
    create(&slices, serde_json::json!({
        "metadata": {"name": "many-1", "labels": {"kubernetes.io/service-name": "many"}},
        "addressType": "IPv4", "endpoints": many
    }))
    .await?;
    Ok(())
}

#[tokio::test]
async fn answers_cluster_names_from_services_and_endpoint_slices() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let upstream = start_upstream().await?;
    create_objects(&cluster.client).await?;
    let (dns, _server) = start_dns(cluster.client.clone(), vec![upstream.addr], cluster.shutdown.child_token()).await?;

    // Everything created before the start is there once the first lists are in.
    let web = "web.default.svc.cluster.local.";
    let first = eventually(WAIT, "the ClusterIP service's A record", || async {
        let m = query(dns, Transport::Udp, web, RecordType::A).await?;
        Ok((m.metadata.response_code == ResponseCode::NoError).then_some(m))
    })
    .await?;
    assert_eq!(answers(&first), vec!["10.43.0.50"]);
    assert!(first.metadata.authoritative);
    assert_eq!(first.answers[0].ttl, 7);

    for transport in [Transport::Udp, Transport::Tcp] {
        // ClusterIP, case-insensitively.
        let m = query(dns, transport, "WEB.Default.SVC.cluster.LOCAL.", RecordType::A).await?;
        assert_eq!(answers(&m), vec!["10.43.0.50"], "{transport:?}");

        // The name exists but has no IPv6 address: NOERROR, no answers, the SOA.
        let m = query(dns, transport, web, RecordType::AAAA).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(m.answers.is_empty());
        assert_eq!(m.authorities.first().map(|r| r.record_type()), Some(RecordType::SOA));

        // Headless: the ready endpoints.
        let m = query(dns, transport, "db.default.svc.cluster.local.", RecordType::A).await?;
        assert_eq!(answers(&m), vec!["10.42.0.5", "10.42.0.6"], "{transport:?}");

        // StatefulSet-style hostnames.
        let m = query(dns, transport, "db-1.db.default.svc.cluster.local.", RecordType::A).await?;
        assert_eq!(answers(&m), vec!["10.42.0.6"]);
        let m = query(dns, transport, "db-2.db.default.svc.cluster.local.", RecordType::A).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "an unready endpoint has no name");

        // SRV: the Service's name and port for ClusterIP, each endpoint for headless.
        let m = query(dns, transport, "_http._tcp.web.default.svc.cluster.local.", RecordType::SRV).await?;
        assert_eq!(answers(&m), vec!["0 100 80 web.default.svc.cluster.local."]);
        assert_eq!(m.additionals.iter().map(|r| r.data.to_string()).collect::<Vec<_>>(), vec!["10.43.0.50"]);
        let m = query(dns, transport, "_dns._udp.web.default.svc.cluster.local.", RecordType::SRV).await?;
        assert_eq!(answers(&m), vec!["0 100 53 web.default.svc.cluster.local."]);
        let m = query(dns, transport, "_dns._tcp.web.default.svc.cluster.local.", RecordType::SRV).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "no such port over TCP");
        let m = query(dns, transport, "_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV).await?;
        assert_eq!(
            answers(&m),
            vec!["0 50 15432 db-0.db.default.svc.cluster.local.", "0 50 15432 db-1.db.default.svc.cluster.local."]
        );

        // ExternalName: a CNAME, and the target's address from upstream.
        let m = query(dns, transport, "ext.default.svc.cluster.local.", RecordType::A).await?;
        assert_eq!(m.answers.first().map(|r| r.record_type()), Some(RecordType::CNAME));
        assert_eq!(answers(&m), vec!["192.0.2.10", "www.example.test."]);

        // Pods by dashed IP.
        let m = query(dns, transport, "10-42-0-99.default.pod.cluster.local.", RecordType::A).await?;
        assert_eq!(answers(&m), vec!["10.42.0.99"]);

        // Names that do not exist.
        for missing in ["nope.default.svc.cluster.local.", "web.other.svc.cluster.local.", "google.com.default.svc.cluster.local."] {
            let m = query(dns, transport, missing, RecordType::A).await?;
            assert_eq!(m.metadata.response_code, ResponseCode::NXDomain, "{missing}");
            assert!(m.metadata.authoritative);
            assert_eq!(m.authorities.first().map(|r| r.record_type()), Some(RecordType::SOA), "{missing}");
        }
    }

    // The zone is not for transfer.
    let m = query(dns, Transport::Tcp, "cluster.local.", RecordType::AXFR).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);

    // Too many endpoints for plain UDP: truncated there, whole over TCP.
    let udp = ask(dns, Transport::Udp, "many.default.svc.cluster.local.", RecordType::A, false).await?;
    assert!(udp.metadata.truncation);
    let tcp = query(dns, Transport::Tcp, "many.default.svc.cluster.local.", RecordType::A).await?;
    assert!(!tcp.metadata.truncation);
    assert_eq!(tcp.answers.len(), 80);

    // Nothing in the cluster domain was asked upstream.
    let asked = upstream.asked.lock().unwrap().clone();
    assert!(asked.iter().all(|n| !n.ends_with("cluster.local.")), "{asked:?}");
    assert!(asked.contains(&"www.example.test.".to_string()), "{asked:?}");

    // Changes in the cluster show up: a deleted Service, an endpoint that became ready.
    let services: Api<Service> = Api::namespaced(cluster.client.clone(), "default");
    services.delete("web", &DeleteParams::default()).await?;
    eventually(WAIT, "NXDOMAIN for the deleted service", || async {
        let m = query(dns, Transport::Udp, web, RecordType::A).await?;
        Ok((m.metadata.response_code == ResponseCode::NXDomain).then_some(()))
    })
    .await?;
    let slices: Api<EndpointSlice> = Api::namespaced(cluster.client.clone(), "default");
    let mut slice = slices.get("db-abcde").await?;
    for e in &mut slice.endpoints {
        e.conditions.get_or_insert_with(Default::default).ready = Some(true);
    }
    slices.replace("db-abcde", &PostParams::default(), &slice).await?;
    eventually(WAIT, "the third endpoint", || async {
        let m = query(dns, Transport::Tcp, "db.default.svc.cluster.local.", RecordType::A).await?;
        Ok((answers(&m) == ["10.42.0.5", "10.42.0.6", "10.42.0.7"]).then_some(()))
    })
    .await?;
    let m = query(dns, Transport::Udp, "db-2.db.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(answers(&m), vec!["10.42.0.7"]);
    Ok(())
}

#[tokio::test]
async fn forwards_other_names_upstream() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let upstream = start_upstream().await?;
    let (dns, server) = start_dns(cluster.client.clone(), vec![upstream.addr], cluster.shutdown.child_token()).await?;

    for transport in [Transport::Udp, Transport::Tcp] {
        let m = query(dns, transport, "www.example.test.", RecordType::A).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NoError);
        assert!(!m.metadata.authoritative);
        assert!(m.metadata.recursion_available);
        assert_eq!(answers(&m), vec!["192.0.2.10"]);

        let m = query(dns, transport, "missing.example.test.", RecordType::A).await?;
        assert_eq!(m.metadata.response_code, ResponseCode::NXDomain);
    }
    // The upstream truncates this over UDP: cluster-dns asks again over TCP.
    let m = query(dns, Transport::Tcp, "big.example.test.", RecordType::A).await?;
    assert_eq!(m.answers.len(), 60);
    let m = query(dns, Transport::Udp, "big.example.test.", RecordType::A).await?;
    assert_eq!(m.answers.len(), 60, "fits the client's 4096-byte EDNS buffer");

    // A dead upstream: SERVFAIL, in bounded time, and the server keeps serving.
    let silent = UdpSocket::bind("127.0.0.1:0").await?;
    let (dead, _) = start_dns(cluster.client.clone(), vec![silent.local_addr()?], cluster.shutdown.child_token()).await?;
    let started = Instant::now();
    let m = query(dead, Transport::Udp, "www.example.test.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    let m = query(dead, Transport::Tcp, "kubernetes.default.svc.cluster.local.", RecordType::A).await?;
    assert_ne!(m.metadata.response_code, ResponseCode::ServFail, "cluster names do not need the upstream");

    // Shutdown ends serve cleanly.
    cluster.shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await??.context("serve")?;
    Ok(())
}

#[tokio::test]
async fn cluster_names_fail_until_the_first_lists_complete() -> anyhow::Result<()> {
    // An "API server" that accepts connections and never answers.
    let black_hole = TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", black_hole.local_addr()?);
    let client = kube::Client::try_from(kube::Config::new(url.parse()?))?;
    let upstream = start_upstream().await?;
    let shutdown = CancellationToken::new();
    let (dns, server) = start_dns(client, vec![upstream.addr], shutdown.clone()).await?;

    let started = Instant::now();
    let m = query(dns, Transport::Udp, "web.default.svc.cluster.local.", RecordType::A).await?;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail, "no NXDOMAIN from an empty index");
    assert!(started.elapsed() >= Duration::from_secs(1), "waited for the lists first");
    // Forwarding does not wait for the API.
    let m = query(dns, Transport::Tcp, "www.example.test.", RecordType::A).await?;
    assert_eq!(answers(&m), vec!["192.0.2.10"]);

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), server).await??.context("serve")?;
    drop(black_hole);
    Ok(())
}
