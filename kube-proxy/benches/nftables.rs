//! kube-proxy's nftables benchmark (issue 5), each figure a ratio to a reference measured
//! in the same run:
//!
//! 1. programming 1,000 and 10,000 Services × 10 endpoints from scratch (rules computed
//!    from the Service ports and applied) against `nft -f` of the same final ruleset;
//! 2. applying one Service's change with 10,000 present (incremental) against `nft -f`
//!    of the whole final ruleset (what a proxy without incremental sync would write);
//! 3. the latency of a TCP request through a ClusterIP with 10 and with 10,000 Services
//!    programmed, against the same request sent straight to the endpoint.
//!
//! Needs root (it writes its own table, `rkube-bench-<pid>`, and removes it).
//! `cargo bench -p kube-proxy --bench nftables`

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use kube_proxy::model::{Endpoint, Protocol, ServicePort, ServicePortName};
use kube_proxy::nft::{self, Nft, NftCommand};
use kube_proxy::proxier::{self, ProxyRules};
use kube_proxy::Syncer;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let root = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("Uid:")).map(|l| l.split_whitespace().nth(2) == Some("0")))
        .unwrap_or(false);
    if !root {
        println!("skipped: the nftables benchmark needs root");
        return;
    }
    let table = format!("rkube-bench-{}", std::process::id());
    let rules = ProxyRules { cluster_cidr: Some("10.42.0.0/16".parse().expect("cidr")) };
    let nft: Arc<dyn Nft> = Arc::new(NftCommand::default());

    println!("kube-proxy nftables benchmark (medians; ratio = rkube / reference)");
    for (count, runs) in [(1_000usize, 5usize), (10_000, 3)] {
        let ports = services(count, 10, None);
        let (mut ours, mut reference) = (Vec::new(), Vec::new());
        for _ in 0..runs {
            let _ = nft::delete_table(nft.as_ref(), &table);
            let started = Instant::now();
            let mut syncer = Syncer::new(nft.clone(), &table);
            syncer.sync(proxier::build(&ports, &[], &rules)).expect("full sync");
            ours.push(started.elapsed());

            let text = proxier::build(&ports, &[], &rules).full_batch(&table);
            let _ = nft::delete_table(nft.as_ref(), &table);
            reference.push(nft_file(&text));
        }
        report(&format!("program {count} Services x 10 endpoints from scratch"), &ours, "nft -f of the same ruleset", &reference);
    }

    // One Service scaled from 10 to 9 endpoints and back, with 10,000 present.
    let before = services(10_000, 10, None);
    let after = services(10_000, 10, Some(4_321));
    let mut syncer = Syncer::new(nft.clone(), &table);
    syncer.sync(proxier::build(&before, &[], &rules)).expect("full sync");
    let (mut ours, mut reference) = (Vec::new(), Vec::new());
    for round in 0..6 {
        let next = if round % 2 == 0 { &after } else { &before };
        let started = Instant::now();
        syncer.sync(proxier::build(next, &[], &rules)).expect("partial sync");
        ours.push(started.elapsed());
    }
    for _ in 0..3 {
        reference.push(nft_file(&proxier::build(&after, &[], &rules).full_batch(&table)));
    }
    report("apply one Service change with 10000 present", &ours, "nft -f of the whole final ruleset", &reference);

    latency(&table, nft.clone(), &rules);
    let _ = nft::delete_table(nft.as_ref(), &table);
}

/// `count` Services with `endpoints` endpoints each; `scaled` loses its last endpoint.
fn services(count: usize, endpoints: usize, scaled: Option<usize>) -> Vec<ServicePort> {
    (0..count)
        .map(|i| {
            let n = if Some(i) == scaled { endpoints - 1 } else { endpoints };
            ServicePort {
                name: ServicePortName { namespace: "bench".into(), name: format!("svc-{i}"), protocol: Protocol::Tcp, port: "http".into() },
                cluster_ips: vec![Ipv4Addr::new(10, 96, (i / 250) as u8, (i % 250 + 1) as u8)],
                port: 80,
                node_port: None,
                external_ips: Vec::new(),
                load_balancer_ips: Vec::new(),
                affinity_timeout: None,
                internal_local: false,
                external_local: false,
                // Endpoint addresses spread over 10.42.0.0/16 onwards (25 Services per /24).
                endpoints: (0..n)
                    .map(|e| Endpoint {
                        ip: Ipv4Addr::new(10, 42 + (i / 6_400) as u8, (i / 25 % 256) as u8, ((i % 25) * 10 + e + 1) as u8),
                        port: 8080,
                        ready: true,
                        serving: true,
                        terminating: false,
                        local: false,
                    })
                    .collect(),
            }
        })
        .collect()
}

fn nft_file(text: &str) -> Duration {
    let path = std::env::temp_dir().join(format!("rkube-bench-{}.nft", std::process::id()));
    std::fs::write(&path, text).expect("writing the ruleset file");
    let started = Instant::now();
    let status = Command::new("nft").arg("-f").arg(&path).status().expect("running nft");
    let elapsed = started.elapsed();
    let _ = std::fs::remove_file(&path);
    assert!(status.success(), "nft -f of the reference ruleset failed");
    elapsed
}

fn median(samples: &[Duration]) -> Duration {
    let mut sorted = samples.to_vec();
    sorted.sort();
    sorted[sorted.len() / 2]
}

fn report(what: &str, ours: &[Duration], reference_name: &str, reference: &[Duration]) {
    let (o, r) = (median(ours), median(reference));
    println!(
        "{what}: rkube {:.1} ms, {reference_name} {:.1} ms, ratio {:.2}",
        o.as_secs_f64() * 1e3,
        r.as_secs_f64() * 1e3,
        o.as_secs_f64() / r.as_secs_f64()
    );
}

/// Request latency through a ClusterIP (nat output → service-ips map → DNAT to an echo
/// server on this host) with 10 and 10,000 Services programmed, as p50/p99 ratios to
/// the same request sent to the endpoint directly.
fn latency(table: &str, nft: Arc<dyn Nft>, rules: &ProxyRules) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("echo listener");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for mut stream in listener.incoming().flatten() {
            std::thread::spawn(move || {
                let mut buf = [0u8; 64];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let direct = SocketAddr::from(([127, 0, 0, 1], port));
    for count in [10usize, 10_000] {
        let mut ports = services(count, 10, None);
        // The Service under test: its one endpoint is the echo server.
        let vip = Ipv4Addr::new(10, 97, 0, 1);
        ports.push(ServicePort {
            name: ServicePortName { namespace: "bench".into(), name: "echo".into(), protocol: Protocol::Tcp, port: "echo".into() },
            cluster_ips: vec![vip],
            port: 7,
            node_port: None,
            external_ips: Vec::new(),
            load_balancer_ips: Vec::new(),
            affinity_timeout: None,
            internal_local: false,
            external_local: false,
            endpoints: vec![Endpoint { ip: Ipv4Addr::LOCALHOST, port, ready: true, serving: true, terminating: false, local: true }],
        });
        let mut syncer = Syncer::new(nft.clone(), table);
        syncer.sync(proxier::build(&ports, &[], rules)).expect("sync");
        let through = SocketAddr::from((vip, 7));
        // Alternate the two paths so that machine noise hits both alike.
        let (mut via_service, mut via_direct) = (Vec::new(), Vec::new());
        for _ in 0..2_000 {
            via_service.push(request(through));
            via_direct.push(request(direct));
        }
        let pct = |s: &mut Vec<Duration>, p: f64| {
            s.sort();
            s[((s.len() as f64 - 1.0) * p) as usize]
        };
        let (s50, s99, d50, d99) = (pct(&mut via_service, 0.5), pct(&mut via_service, 0.99), pct(&mut via_direct, 0.5), pct(&mut via_direct, 0.99));
        println!(
            "request through a ClusterIP with {count} Services: p50 {:.0} us (ratio {:.2} to direct), p99 {:.0} us (ratio {:.2})",
            s50.as_secs_f64() * 1e6,
            s50.as_secs_f64() / d50.as_secs_f64(),
            s99.as_secs_f64() * 1e6,
            s99.as_secs_f64() / d99.as_secs_f64()
        );
    }
}

/// One connect, 1-byte round trip and close.
fn request(addr: SocketAddr) -> Duration {
    let started = Instant::now();
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2)).expect("connect");
    stream.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
    stream.write_all(b"x").expect("write");
    let mut buf = [0u8; 1];
    stream.read_exact(&mut buf).expect("echo");
    started.elapsed()
}
