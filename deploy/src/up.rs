//! `rkube up`: the whole single-node lab in one process, as k3s runs its server —
//! kube-apiserver on the embedded store, kube-controller-manager, kube-scheduler, the
//! kubelet with the embedded runtime, kube-proxy and the cluster DNS, each started from
//! its library with one shared shutdown. `--detach` runs that process in the background and returns once the node
//! is Ready.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use futures::FutureExt;
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams};
use tokio_util::sync::CancellationToken;

use crate::lab::{Lab, LabSettings};

/// How long components get to stop after the lab is told to.
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// The cluster DNS port of every server of a multi-node cluster.
pub const SERVER_DNS_PORT: u16 = 10053;

/// How long `--detach` waits for the node to turn Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What `rkube server` changes in the lab's one process: a node others can join.
#[derive(Debug, Clone, Default)]
pub struct ServerOptions {
    /// Other nodes join (a join token, cluster-info for them, routes or VXLAN to their
    /// pods, the kubelet on its usual port); `rkube up` keeps one node to itself.
    pub multi_node: bool,
    /// The node's address (default: the source address of the default route).
    pub node_ip: Option<Ipv4Addr>,
    /// The node's name (default: the host name).
    pub node_name: Option<String>,
    /// Extra names and addresses for the apiserver's certificate (`--tls-san`).
    pub tls_sans: Vec<String>,
    /// An external etcd (`--etcd-servers`) instead of the embedded store.
    pub etcd_servers: Vec<String>,
}

/// The host name, lower-cased, as the node's default name.
pub fn host_node_name() -> String {
    nix::unistd::gethostname()
        .ok()
        .map(|h| h.to_string_lossy().to_ascii_lowercase())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "rkube".into())
}

/// The lab node's kubelet settings (also what `rkube down` tears down).
pub fn kubelet_config(lab: &Lab, settings: &LabSettings) -> kubelet::KubeletConfig {
    server_kubelet_config(lab, settings, &ServerOptions::default())
}

fn server_kubelet_config(lab: &Lab, settings: &LabSettings, options: &ServerOptions) -> kubelet::KubeletConfig {
    let node_name = options.node_name.clone().unwrap_or_else(host_node_name);
    let mut config = kubelet::KubeletConfig::new(&node_name, lab.agent_dir());
    config.kubeconfig = Some(lab.kubeconfig());
    config.node_ip = options.node_ip.unwrap_or_else(kubelet::node::default_node_ip);
    config.cgroup_root = settings.cgroup_root.clone();
    config.bridge_name = settings.bridge_name.clone();
    config.cluster_cidr = Some(settings.cluster_cidr.clone());
    config.cluster_dns = cluster_dns_ip(settings).map(|ip| vec![ip.to_string()]).unwrap_or_default();
    if !options.multi_node {
        // One node has no other nodes to tunnel to: no VXLAN device (and no fight over
        // its VNI and UDP port between labs side by side).
        config.pod_network_backend = kubelet::config::PodNetworkBackend::HostGw;
        // Two labs on one machine must not fight over 10250: the node reports the real
        // port.
        config.port = 0;
    }
    config
}

/// The lab's nftables table: named after its bridge, so two labs keep apart.
pub fn proxy_table(settings: &LabSettings) -> String {
    settings.bridge_name.clone()
}

/// The cluster DNS Service's address: the tenth of the Service range, as in k3s
/// (10.43.0.10 for 10.43.0.0/16).
pub fn cluster_dns_ip(settings: &LabSettings) -> Option<std::net::Ipv4Addr> {
    let range: ipnet::Ipv4Net = settings.service_cidr.parse().ok()?;
    range.hosts().nth(9)
}

/// Runs the lab in this process until a signal.
pub async fn run_foreground(lab: &Lab, settings: &LabSettings, options: &ServerOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    lab.write_pid()?;
    let result = run_components(lab, settings, options, shutdown).await;
    let _ = std::fs::remove_file(lab.pid_file());
    result
}

async fn run_components(lab: &Lab, settings: &LabSettings, options: &ServerOptions, shutdown: CancellationToken) -> anyhow::Result<()> {
    let kubelet_config = server_kubelet_config(lab, settings, options);
    let service_ranges = apiserver::admission::ServiceRanges::parse(&settings.service_cidr, "30000-32767")
        .map_err(|e| anyhow::anyhow!("{}: serviceCidr: {e}", lab.dir.join("lab.json").display()))?;
    // The scheduler and controller-manager run as tasks of this process: the apiserver
    // reports them in `kubectl get componentstatuses` by whether those tasks still run.
    let scheduler_running = component_base::health::Running::default();
    let controller_manager_running = component_base::health::Running::default();
    let api_config = apiserver::server::Config {
        data_dir: lab.dir.clone(),
        // Every address: pods reach the API through the `kubernetes` Service, which
        // leads to the node's address. Nothing is served without a credential.
        bind: SocketAddr::from(([0, 0, 0, 0], settings.port)),
        etcd_servers: options.etcd_servers.clone(),
        service_ranges,
        advertise_address: std::net::IpAddr::V4(kubelet_config.node_ip),
        security: apiserver::server::SecurityConfig { tls_sans: options.tls_sans.clone(), ..Default::default() },
        local_components: vec![("scheduler", scheduler_running.clone()), ("controller-manager", controller_manager_running.clone())],
    };
    let (ready_tx, ready_rx) = tokio::sync::oneshot::channel();
    let api = tokio::spawn(apiserver::server::run(api_config, shutdown.clone(), Some(ready_tx)));
    let addr = match ready_rx.await {
        Ok(addr) => addr,
        Err(_) => {
            // The apiserver ended before it was ready: its error says why.
            return match api.await {
                Ok(Err(e)) => Err(anyhow::Error::new(e).context("starting kube-apiserver")),
                Ok(Ok(())) => bail!("kube-apiserver stopped before it was ready"),
                Err(e) => bail!("kube-apiserver panicked: {e}"),
            };
        }
    };
    tracing::info!(%addr, "kube-apiserver ready");
    // Each component gets its own identity and the permissions of its role.
    let server = format!("https://127.0.0.1:{}", addr.port());
    let identity = |file: &str, user: &str, group: Option<&str>| -> anyhow::Result<std::path::PathBuf> {
        let path = lab.dir.join("kubeconfigs").join(format!("{file}.kubeconfig"));
        apiserver::server::write_client_kubeconfig(&lab.dir, &server, user, group, &path).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    };
    let controller_manager_kubeconfig = identity("kube-controller-manager", "system:kube-controller-manager", None)?;
    let scheduler_kubeconfig = identity("kube-scheduler", "system:kube-scheduler", None)?;
    let proxy_kubeconfig = identity("kube-proxy", "system:kube-proxy", None)?;
    let dns_kubeconfig = identity("cluster-dns", "system:kube-dns", None)?;
    let ingress_kubeconfig = identity("ingress-controller", INGRESS_USER, None)?;
    let kubelet_kubeconfig = identity("kubelet", &format!("system:node:{}", kubelet_config.node_name), Some("system:nodes"))?;
    let mut kubelet_config = kubelet_config;
    kubelet_config.kubeconfig = Some(kubelet_kubeconfig);
    // The kubelet API's certificate comes from the cluster CA (the apiserver checks it),
    // and only callers with certificates from that CA get past its handshake.
    let pki = apiserver::server::pki_dir(&lab.dir);
    let ca = apiserver::server::cluster_ca(&lab.dir).context("loading the cluster CA")?;
    let serving = ca
        .issue(
            &kubelet_config.node_name,
            None,
            std::slice::from_ref(&kubelet_config.node_name),
            &[std::net::IpAddr::V4(kubelet_config.node_ip)],
            component_base::pki::Usage::Server,
        )
        .context("issuing the kubelet's serving certificate")?;
    let (cert, key) = serving.write(&pki, "kubelet").context("writing the kubelet's serving certificate")?;
    kubelet_config.tls_cert_file = Some(cert);
    kubelet_config.tls_private_key_file = Some(key);
    kubelet_config.client_ca_file = Some(pki.join("ca.crt"));
    // The cluster DNS listens on the node's address (on a port of its own, so that labs
    // and a resolver on port 53 do not collide); the kube-dns Service leads there.
    // A server of a multi-node cluster uses a fixed port, so that the kube-dns Service
    // can lead to the DNS of every server (see `keep_dns_on_servers`).
    let dns_port = if options.multi_node { SERVER_DNS_PORT } else { 0 };
    let dns_listeners = cluster_dns::bind(SocketAddr::from((kubelet_config.node_ip, dns_port)))
        .await
        .context("binding the cluster DNS server")?;
    let dns_addr = dns_listeners.local_addr();
    let node_ip = kubelet_config.node_ip;
    install_addons(lab, settings, dns_addr).await.context("installing the lab's add-ons")?;
    if options.multi_node {
        let advertised = format!("https://{}:{}", kubelet_config.node_ip, addr.port());
        crate::server::open_for_agents(lab, settings, &advertised, &options.etcd_servers).await.context("preparing the cluster for agents")?;
        let client = component_base::client::client(Some(&lab.kubeconfig())).await?;
        tokio::spawn(keep_dns_on_servers(client, dns_addr.port(), shutdown.clone()));
    }

    let ha = !options.etcd_servers.is_empty();
    let cm_config = controller_manager::Config {
        kubeconfig: Some(controller_manager_kubeconfig),
        root_ca_file: Some(pki.join("ca.crt")),
        // The cluster CA signs what CertificateSigningRequests ask for once approved:
        // how agents get their kubelet certificates.
        cluster_signing_cert_file: Some(pki.join("ca.crt")),
        cluster_signing_key_file: Some(pki.join("ca.key")),
        // Servers sharing an etcd take turns: one controller-manager and one scheduler
        // lead at a time.
        leader_elect: ha,
        cluster_cidr: Some(settings.cluster_cidr.clone()),
        local_path_root: lab.dir.join("storage"),
        ..Default::default()
    };
    let sched_config = scheduler::Config { kubeconfig: Some(scheduler_kubeconfig), leader_elect: ha, ..Default::default() };
    let mut proxy_config = kube_proxy::Config::new(&kubelet_config.node_name);
    proxy_config.kubeconfig = Some(proxy_kubeconfig);
    proxy_config.table = proxy_table(settings);
    proxy_config.cluster_cidr = settings.cluster_cidr.parse().ok();
    let dns_config = cluster_dns::Config { kubeconfig: Some(dns_kubeconfig.clone()), listen: dns_addr, ..Default::default() };
    let dns_client = component_base::client::client(Some(&dns_kubeconfig)).await?;
    let components: Vec<(&str, tokio::task::JoinHandle<anyhow::Result<()>>)> = vec![
        ("kube-apiserver", tokio::spawn(async move { api.await.map_err(anyhow::Error::new)?.map_err(anyhow::Error::new) })),
        (
            "kube-controller-manager",
            tokio::spawn(running_while(controller_manager_running, controller_manager::run(cm_config, shutdown.clone()))),
        ),
        ("kube-scheduler", tokio::spawn(running_while(scheduler_running, scheduler::run(sched_config, shutdown.clone())))),
        ("kubelet", tokio::spawn(kubelet::run(kubelet_config, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new)))),
        ("kube-proxy", tokio::spawn(kube_proxy::run(proxy_config, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new)))),
        (
            "cluster-dns",
            tokio::spawn(cluster_dns::serve(dns_config, dns_listeners, dns_client, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new))),
        ),
    ];
    let mut components = components;
    // The ingress controller needs the node's HTTP port; a lab without it (another lab
    // or a web server holds the port) runs on, and says so; likewise for HTTPS.
    match ingress::bind(SocketAddr::from(([0, 0, 0, 0], settings.ingress_port))).await {
        Ok(http) => {
            let https = match ingress::bind(SocketAddr::from(([0, 0, 0, 0], settings.ingress_https_port))).await {
                Ok(listener) => Some(listener),
                Err(e) => {
                    tracing::warn!(error = %anyhow::Error::new(e), "the ingress controller serves no HTTPS (choose another port with rkube up --ingress-https-port)");
                    None
                }
            };
            let config = ingress::Config { kubeconfig: Some(ingress_kubeconfig), status_address: std::net::IpAddr::V4(node_ip) };
            let listeners = ingress::Listeners { http, https };
            components.push(("ingress-controller", tokio::spawn(ingress::run(config, listeners, shutdown.clone()).map(|r| r.map_err(anyhow::Error::new)))));
        }
        Err(e) => tracing::warn!(error = %anyhow::Error::new(e), "the ingress controller is not running; Ingresses get no address (choose another port with rkube up --ingress-port)"),
    }
    let (names, mut handles): (Vec<&str>, Vec<_>) = components.into_iter().unzip();

    // Any component that ends on its own ends the lab (with its error).
    // Biased: once told to stop, the components ending is the stop, not a failure.
    let outcome: anyhow::Result<()> = tokio::select! {
        biased;
        _ = shutdown.cancelled() => Ok(()),
        (r, i, _) = futures::future::select_all(handles.iter_mut()) => flatten(names[i], r),
    };
    shutdown.cancel();
    // The others finish their shutdown (leases released, requests drained) before the
    // process exits; a component stuck past the deadline is abandoned.
    let stopping = futures::future::join_all(handles.iter_mut().filter(|h| !h.is_finished()));
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, stopping).await.is_err() {
        tracing::warn!("some components did not stop within {}s", SHUTDOWN_TIMEOUT.as_secs());
    }
    outcome
}

/// Runs a component's task, marked running for as long as it does.
async fn running_while<E: std::error::Error + Send + Sync + 'static>(
    running: component_base::health::Running,
    task: impl std::future::Future<Output = Result<(), E>>,
) -> anyhow::Result<()> {
    let _up = running.hold();
    task.await.map_err(anyhow::Error::new)
}

/// What every lab has besides the components, as k3s deploys its manifests: the default
/// StorageClass `local-path` served by the controller-manager's local-path provisioner,
/// and the `kube-dns` Service at the conventional address, leading to the cluster DNS
/// server at `dns` (its Endpoints and EndpointSlice are rewritten at every start, since
/// a lab's DNS port is picked afresh).
async fn install_addons(lab: &Lab, settings: &LabSettings, dns: SocketAddr) -> anyhow::Result<()> {
    let client = component_base::client::client(Some(&lab.kubeconfig())).await?;
    let classes: Api<k8s_openapi::api::storage::v1::StorageClass> = Api::all(client.clone());
    if classes.get_opt("local-path").await?.is_none() {
        let class = serde_json::from_value(serde_json::json!({
            "apiVersion": "storage.k8s.io/v1",
            "kind": "StorageClass",
            "metadata": {"name": "local-path", "annotations": {"storageclass.kubernetes.io/is-default-class": "true"}},
            "provisioner": controller_manager::controllers::persistentvolume::LOCAL_PATH_PROVISIONER,
            "reclaimPolicy": "Delete",
            "volumeBindingMode": "WaitForFirstConsumer",
        }))?;
        create_if_missing(&classes, &class).await?;
    }
    install_ingress_addon(&client).await?;

    let dns_ip = cluster_dns_ip(settings).with_context(|| format!("no DNS address in serviceCidr {}", settings.service_cidr))?;
    let labels = dns_labels();
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(client.clone(), "kube-system");
    let service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "spec": {
            "clusterIP": dns_ip.to_string(),
            "ports": [
                {"name": "dns", "port": 53, "protocol": "UDP", "targetPort": dns.port()},
                {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": dns.port()},
            ],
        },
    }))?;
    // Asked first: creating it again would fail on its ClusterIP (422) before its name.
    if services.get_opt("kube-dns").await?.is_none() {
        create_if_missing(&services, &service).await?;
    }
    publish_dns_endpoints(client, &[dns.ip()], dns.port()).await
}

/// The user the lab's ingress controller acts as.
const INGRESS_USER: &str = "rkube:ingress-controller";

/// The `rkube` IngressClass (the default, as k3s marks Traefik's) and what its
/// controller may do: read Ingresses, classes, Services, EndpointSlices and Secrets
/// (for `spec.tls`), and write Ingress status.
async fn install_ingress_addon(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::api::networking::v1::IngressClass;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};
    let classes: Api<IngressClass> = Api::all(client.clone());
    let class = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "rkube", "annotations": {ingress::routes::DEFAULT_CLASS_ANNOTATION: "true"}},
        "spec": {"controller": ingress::CONTROLLER},
    }))?;
    create_if_missing(&classes, &class).await?;
    let params = PatchParams::apply("rkube").force();
    let role: ClusterRole = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": {"name": INGRESS_USER},
        "rules": [
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses", "ingressclasses"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["networking.k8s.io"], "resources": ["ingresses/status"], "verbs": ["update", "patch"]},
            {"apiGroups": [""], "resources": ["services", "secrets"], "verbs": ["get", "list", "watch"]},
            {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["get", "list", "watch"]},
        ],
    }))?;
    Api::<ClusterRole>::all(client.clone()).patch(INGRESS_USER, &params, &Patch::Apply(&role)).await?;
    let binding: ClusterRoleBinding = serde_json::from_value(serde_json::json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": INGRESS_USER},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": INGRESS_USER},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": INGRESS_USER}],
    }))?;
    Api::<ClusterRoleBinding>::all(client.clone()).patch(INGRESS_USER, &params, &Patch::Apply(&binding)).await?;
    Ok(())
}

/// The labels of the kube-dns Service and its endpoints, as CoreDNS deployments have.
fn dns_labels() -> serde_json::Value {
    serde_json::json!({"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS", "kubernetes.io/cluster-service": "true"})
}

/// Makes the kube-dns Service lead to the cluster DNS at `port` on each of `addresses`.
async fn publish_dns_endpoints(client: kube::Client, addresses: &[std::net::IpAddr], port: u16) -> anyhow::Result<()> {
    let labels = dns_labels();
    let params = PatchParams::apply("rkube").force();
    // Endpoints and EndpointSlices spell their ports alike.
    let ports = serde_json::json!([
        {"name": "dns", "port": port, "protocol": "UDP"},
        {"name": "dns-tcp", "port": port, "protocol": "TCP"},
    ]);
    let ips: Vec<String> = addresses.iter().map(|ip| ip.to_string()).collect();
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), "kube-system");
    let body = serde_json::json!({
        "apiVersion": "v1", "kind": "Endpoints",
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": labels},
        "subsets": [{"addresses": ips.iter().map(|ip| serde_json::json!({"ip": ip})).collect::<Vec<_>>(), "ports": ports.clone()}],
    });
    endpoints.patch("kube-dns", &params, &Patch::Apply(&body)).await?;
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> = Api::namespaced(client, "kube-system");
    let body = serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "kube-dns-rkube", "namespace": "kube-system",
                     "labels": {"kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "rkube"}},
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": ips.iter().map(|ip| serde_json::json!({"addresses": [ip], "conditions": {"ready": true}})).collect::<Vec<_>>(),
    });
    slices.patch("kube-dns-rkube", &params, &Patch::Apply(&body)).await?;
    Ok(())
}

/// Every server of a multi-node cluster runs a cluster DNS on [`SERVER_DNS_PORT`] of
/// its address, which is also its apiserver's: the kube-dns Service leads to the
/// servers the `kubernetes` Endpoints list (the live apiservers), so DNS outlives the
/// loss of a server.
async fn keep_dns_on_servers(client: kube::Client, port: u16, shutdown: CancellationToken) {
    let endpoints: Api<k8s_openapi::api::core::v1::Endpoints> = Api::namespaced(client.clone(), "default");
    let mut published: Vec<std::net::IpAddr> = Vec::new();
    loop {
        if let Ok(ep) = endpoints.get("kubernetes").await {
            let mut servers: Vec<std::net::IpAddr> =
                ep.subsets.unwrap_or_default().iter().flat_map(|s| s.addresses.iter().flatten()).filter_map(|a| a.ip.parse().ok()).collect();
            servers.sort();
            servers.dedup();
            if !servers.is_empty() && servers != published {
                match publish_dns_endpoints(client.clone(), &servers, port).await {
                    Ok(()) => published = servers,
                    Err(e) => tracing::warn!(error = %e, "updating the kube-dns endpoints failed"),
                }
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep(Duration::from_secs(10)) => {}
        }
    }
}

async fn create_if_missing<K>(api: &Api<K>, object: &K) -> anyhow::Result<()>
where
    K: kube::Resource + Clone + serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug,
{
    match api.create(&Default::default(), object).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(()),
        Err(e) => Err(e.into()),
    }
}

pub fn flatten(component: &str, r: Result<anyhow::Result<()>, tokio::task::JoinError>) -> anyhow::Result<()> {
    match r {
        Ok(Ok(())) => bail!("{component} stopped unexpectedly"),
        Ok(Err(e)) => Err(e.context(format!("{component} failed"))),
        Err(e) => bail!("{component} panicked: {e}"),
    }
}

/// Starts `rkube up` in the background (its own session, output to `DIR/rkube.log`) and
/// waits for the node to be Ready.
pub async fn run_detached(lab: &Lab, settings: &LabSettings) -> anyhow::Result<()> {
    if let Some(pid) = lab.running_pid() {
        println!("rkube is already running for {} (pid {pid})", lab.dir.display());
        return wait_ready(lab, None).await;
    }
    std::fs::create_dir_all(&lab.dir).with_context(|| format!("creating {}", lab.dir.display()))?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(lab.log_file())
        .with_context(|| format!("opening {}", lab.log_file().display()))?;
    let exe = std::env::current_exe().context("finding the rkube binary")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("up").arg("--data-dir").arg(&lab.dir).arg("--port").arg(settings.port.to_string());
    cmd.arg("--ingress-port").arg(settings.ingress_port.to_string());
    cmd.arg("--ingress-https-port").arg(settings.ingress_https_port.to_string());
    cmd.stdin(Stdio::null()).stdout(log.try_clone().context("duplicating the log file")?).stderr(log);
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let child = cmd.spawn().context("starting rkube in the background")?;
    let pid = child.id();
    // The child is not waited for here: it is the lab, and outlives this command.
    std::mem::forget(child);
    wait_ready(lab, Some(pid)).await
}

async fn wait_ready(lab: &Lab, child: Option<u32>) -> anyhow::Result<()> {
    let started = Instant::now();
    let kubeconfig = lab.kubeconfig();
    loop {
        if let Some(pid) = child {
            if nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), None).is_err() || is_zombie(pid) {
                bail!("rkube stopped while starting; the end of {}:\n{}", lab.log_file().display(), tail(&lab.log_file(), 15));
            }
        }
        if started.elapsed() > READY_TIMEOUT {
            bail!("the node was not Ready after {}s; see {}", READY_TIMEOUT.as_secs(), lab.log_file().display());
        }
        if kubeconfig.exists() {
            if let Ok(Some(name)) = ready_node(&kubeconfig).await {
                println!("rkube is up: node {name} is Ready ({:.1}s)", started.elapsed().as_secs_f64());
                println!("  export KUBECONFIG={}", kubeconfig.display());
                println!("  kubectl get nodes");
                println!("stop it with: rkube down --data-dir {}", lab.dir.display());
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().map(|rest| rest.trim_start().starts_with('Z')).unwrap_or(false))
        .unwrap_or(true)
}

/// The name of a Ready node, if there is one.
async fn ready_node(kubeconfig: &Path) -> anyhow::Result<Option<String>> {
    let client = component_base::client::client(Some(kubeconfig)).await?;
    let nodes = Api::<Node>::all(client).list(&Default::default()).await?;
    Ok(nodes.items.into_iter().find_map(|n| {
        let ready = n
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .map(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            .unwrap_or(false);
        if ready {
            n.metadata.name
        } else {
            None
        }
    }))
}

pub fn tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
