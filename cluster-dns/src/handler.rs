//! The hickory-server request handler: one query per request, answered from the index
//! when it is in the cluster domain (or the reverse name of an address the index knows),
//! forwarded upstream otherwise; every failure becomes a DNS error code, never a dropped
//! query.

use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Edns, Metadata, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Record, RecordType};
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tracing::{debug, warn};

use crate::forward::Forwarder;
use crate::records::{self, Resolution, Zone};
use crate::watch::ClusterState;

/// How long a query for a cluster name waits for the first lists before SERVFAIL.
pub const READY_WAIT: Duration = Duration::from_secs(2);

/// Answers DNS requests for [`hickory_server::Server`].
pub struct Handler {
    state: Arc<ClusterState>,
    zone: Zone,
    forwarder: Forwarder,
    ready_wait: Duration,
}

/// The sections of a response.
#[derive(Default)]
struct Sections {
    answers: Vec<Record>,
    authorities: Vec<Record>,
    additionals: Vec<Record>,
}

impl Handler {
    pub fn new(state: Arc<ClusterState>, zone: Zone, forwarder: Forwarder) -> Handler {
        Handler { state, zone, forwarder, ready_wait: READY_WAIT }
    }

    /// Another wait for readiness than [`READY_WAIT`].
    pub fn with_ready_wait(mut self, wait: Duration) -> Handler {
        self.ready_wait = wait;
        self
    }

    /// The response code, the AA flag and the sections for one query.
    async fn answer(&self, query: &Query, recursion_desired: bool) -> (ResponseCode, bool, Sections) {
        let name = query.name();
        let in_zone = self.zone.contains(name);
        // The cluster zone is neither transferred nor served in other classes.
        let zone_transfer = matches!(query.query_type(), RecordType::AXFR | RecordType::IXFR);
        if query.query_class() != DNSClass::IN || zone_transfer {
            if in_zone {
                return (ResponseCode::Refused, false, Sections::default());
            }
            return self.forward(query, recursion_desired).await;
        }
        if in_zone || records::is_reverse_name(name) {
            if !self.state.is_ready() && !self.state.wait_ready(self.ready_wait).await {
                if in_zone {
                    debug!(%name, "not synced with the API yet");
                    return (ResponseCode::ServFail, false, Sections::default());
                }
                return self.forward(query, recursion_desired).await;
            }
            let resolution = records::resolve(&self.state.read(), &self.zone, name, query.query_type());
            if let Resolution::Authoritative(answer) = resolution {
                let mut sections =
                    Sections { answers: answer.answers, authorities: answer.authorities, additionals: answer.additionals };
                let mut rcode = answer.rcode;
                if let Some(target) = answer.external_target {
                    // An ExternalName: resolve its target upstream and add that to the CNAME.
                    let chased = Query::query(target, query.query_type());
                    match self.forwarder.forward(&chased, true).await {
                        Ok(upstream) => {
                            if upstream.metadata.response_code == ResponseCode::NXDomain {
                                rcode = ResponseCode::NXDomain;
                            }
                            sections.answers.extend(upstream.answers);
                        }
                        Err(error) => debug!(%name, %error, "could not resolve the ExternalName target"),
                    }
                }
                return (rcode, true, sections);
            }
        }
        self.forward(query, recursion_desired).await
    }

    async fn forward(&self, query: &Query, recursion_desired: bool) -> (ResponseCode, bool, Sections) {
        match self.forwarder.forward(query, recursion_desired).await {
            Ok(upstream) => (
                upstream.metadata.response_code,
                false,
                Sections { answers: upstream.answers, authorities: upstream.authorities, additionals: upstream.additionals },
            ),
            Err(error) => {
                warn!(name = %query.name(), qtype = %query.query_type(), %error, "forwarding failed");
                (ResponseCode::ServFail, false, Sections::default())
            }
        }
    }
}

#[async_trait::async_trait]
impl RequestHandler for Handler {
    async fn handle_request<R: ResponseHandler, T: Time>(&self, request: &Request, mut response: R) -> ResponseInfo {
        let request_edns = request.edns.as_ref();
        let mut our_edns = Edns::new();
        our_edns.set_max_payload(request_edns.map_or(512, |e| e.max_payload()).max(512));
        // EDNS in the response only when the request had it (RFC 6891).
        let response_edns = request_edns.map(|_| &our_edns);

        let mut metadata = Metadata::response_from_request(&request.metadata);
        metadata.recursion_available = true;
        let sections = if request.metadata.op_code != OpCode::Query {
            metadata.response_code = ResponseCode::NotImp;
            Sections::default()
        } else if request_edns.is_some_and(|e| e.version() > 0) {
            metadata.response_code = ResponseCode::BADVERS;
            Sections::default()
        } else {
            match request.request_info() {
                Err(_) => {
                    metadata.response_code = ResponseCode::FormErr;
                    Sections::default()
                }
                Ok(info) => {
                    let query = info.query.original();
                    let (rcode, authoritative, sections) = self.answer(query, request.metadata.recursion_desired).await;
                    debug!(name = %query.name(), qtype = %query.query_type(), %rcode, answers = sections.answers.len(), "answered");
                    metadata.response_code = rcode;
                    metadata.authoritative = authoritative;
                    sections
                }
            }
        };

        let mut builder = MessageResponseBuilder::new(&request.queries, None);
        if let Some(edns) = response_edns {
            builder.edns(edns);
        }
        let message = builder.build(
            metadata,
            sections.answers.iter(),
            sections.authorities.iter(),
            std::iter::empty(),
            sections.additionals.iter(),
        );
        match response.send_response(message).await {
            Ok(info) => info,
            Err(error) => {
                warn!(%error, "sending a response failed");
                let mut failed = Metadata::response_from_request(&request.metadata);
                failed.response_code = ResponseCode::ServFail;
                ResponseInfo::from(hickory_proto::op::Header { metadata: failed, counts: Default::default() })
            }
        }
    }
}
