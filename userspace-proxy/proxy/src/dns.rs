//! The bottle's DNS server on its gateway, UDP and TCP port 53.
//!
//! An allowlisted name gets one A record: the gateway itself, so every connection to it lands
//! on our proxy. AAAA (and every other type) of an allowlisted name gets an empty answer;
//! anything else is NXDOMAIN. Upstream addresses are resolved by the proxy, on the host —
//! the bottle never learns them.

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};

use crate::audit::AuditEvent;
use crate::context::BottleContext;
use crate::policy::CompiledPolicy;

/// TTL of our answers: short, so a policy change is seen soon.
const ANSWER_TTL: u32 = 30;
/// How long a TCP client may idle between queries.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// The outcome of one query, for stats and audit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub name: String,
    pub allowed: bool,
}

/// Builds the response to one DNS message, or `None` when it is not worth answering (not a
/// query at all).
pub fn answer(
    request: &[u8],
    policy: &CompiledPolicy,
    gateway: Ipv4Addr,
) -> Option<(Vec<u8>, Option<Answered>)> {
    let msg = match Message::from_vec(request) {
        Ok(msg) => msg,
        Err(_) => {
            // Answer FORMERR when at least the id is there, so clients fail fast.
            if request.len() < 12 {
                return None;
            }
            let id = u16::from_be_bytes([request[0], request[1]]);
            let resp = Message::error_msg(id, OpCode::Query, ResponseCode::FormErr);
            return resp.to_vec().ok().map(|bytes| (bytes, None));
        }
    };
    if msg.metadata.message_type != MessageType::Query {
        return None;
    }
    let mut resp = Message::response(msg.metadata.id, msg.metadata.op_code);
    resp.metadata.recursion_desired = msg.metadata.recursion_desired;
    resp.metadata.recursion_available = true;
    if msg.metadata.op_code != OpCode::Query {
        resp.metadata.response_code = ResponseCode::NotImp;
        return resp.to_vec().ok().map(|b| (b, None));
    }
    let [query] = msg.queries.as_slice() else {
        resp.metadata.response_code = ResponseCode::FormErr;
        return resp.to_vec().ok().map(|b| (b, None));
    };
    resp.add_query(query.clone());
    let name = query.name().to_ascii().to_ascii_lowercase();
    let name = name.trim_end_matches('.').to_string();
    let allowed = query.query_class() == DNSClass::IN && policy.lookup(&name).is_some();
    if !allowed {
        resp.metadata.response_code = ResponseCode::NXDomain;
    } else if query.query_type() == RecordType::A {
        resp.add_answer(Record::from_rdata(
            query.name().clone(),
            ANSWER_TTL,
            RData::A(A(gateway)),
        ));
    }
    // AAAA and other types of an allowed name: NOERROR with no answer.
    let bytes = resp.to_vec().ok()?;
    Some((bytes, Some(Answered { name, allowed })))
}

fn record(ctx: &BottleContext, answered: &Answered) {
    ctx.stats.dns(answered.allowed);
    if !answered.allowed {
        ctx.audit.record(&AuditEvent {
            kind: "dns",
            host: &answered.name,
            decision: "denied",
            reason: Some("not in the egress allowlist"),
            ..AuditEvent::default()
        });
    }
}

/// Serves UDP queries until the socket fails.
pub async fn serve_udp(socket: UdpSocket, ctx: Arc<BottleContext>) {
    let mut buf = vec![0u8; 4096];
    loop {
        let Ok((n, peer)) = socket.recv_from(&mut buf).await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if peer.ip() != ctx.bottle_addr {
            continue;
        }
        let policy = ctx.policy.current();
        if let Some((mut resp, answered)) = answer(&buf[..n], &policy, ctx.gateway) {
            if let Some(a) = &answered {
                record(&ctx, a);
            }
            if resp.len() > 512 {
                // Never happens with our answers, but keep UDP within the classic limit.
                resp.truncate(512);
            }
            let _ = socket.send_to(&resp, peer).await;
        }
    }
}

/// Serves DNS over TCP (length-prefixed messages) until the listener fails.
pub async fn serve_tcp(listener: TcpListener, ctx: Arc<BottleContext>) {
    loop {
        let Ok((stream, peer)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        if peer.ip() != ctx.bottle_addr {
            continue;
        }
        let Ok(permit) = ctx.conn_limit.clone().try_acquire_owned() else {
            continue; // over the bottle's connection limit: drop
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            let _ = tcp_session(stream, &ctx).await;
            drop(permit);
        });
    }
}

async fn tcp_session(mut stream: TcpStream, ctx: &BottleContext) -> std::io::Result<()> {
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let mut msg = vec![0u8; usize::from(u16::from_be_bytes(len))];
        match tokio::time::timeout(TCP_IDLE, stream.read_exact(&mut msg)).await {
            Ok(Ok(_)) => {}
            _ => return Ok(()),
        }
        let policy = ctx.policy.current();
        let Some((resp, answered)) = answer(&msg, &policy, ctx.gateway) else {
            return Ok(());
        };
        if let Some(a) = &answered {
            record(ctx, a);
        }
        let Ok(len) = u16::try_from(resp.len()) else {
            return Ok(());
        };
        stream.write_all(&len.to_be_bytes()).await?;
        stream.write_all(&resp).await?;
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::collections::BTreeMap;

    use bottle_api::policy::{EgressPolicy, Route};
    use hickory_proto::op::Query;
    use hickory_proto::rr::Name;

    use super::*;
    use crate::policy::PolicyOptions;

    fn policy() -> CompiledPolicy {
        let p = EgressPolicy {
            routes: vec![Route {
                host: "api.example.com".into(),
                ..Route::default()
            }],
        };
        CompiledPolicy::compile(&p, &BTreeMap::new(), &PolicyOptions::default()).unwrap()
    }

    fn ask(name: &str, rtype: RecordType) -> Message {
        let mut q = Message::query();
        q.metadata.recursion_desired = true;
        q.add_query(Query::query(Name::from_ascii(name).unwrap(), rtype));
        let gw = Ipv4Addr::new(10, 213, 0, 1);
        let (bytes, _) = answer(&q.to_vec().unwrap(), &policy(), gw).unwrap();
        let resp = Message::from_vec(&bytes).unwrap();
        assert_eq!(resp.metadata.id, q.metadata.id);
        resp
    }

    #[test]
    fn allowlisted_a_points_at_gateway() {
        let resp = ask("API.example.com.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert_eq!(resp.answers.len(), 1);
        assert_eq!(
            resp.answers[0].data,
            RData::A(A(Ipv4Addr::new(10, 213, 0, 1)))
        );
    }

    #[test]
    fn aaaa_is_empty_and_others_nxdomain() {
        let resp = ask("api.example.com.", RecordType::AAAA);
        assert_eq!(resp.metadata.response_code, ResponseCode::NoError);
        assert!(resp.answers.is_empty());
        let resp = ask("evil.example.net.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
        assert!(resp.answers.is_empty());
        let resp = ask("example.com.", RecordType::A);
        assert_eq!(resp.metadata.response_code, ResponseCode::NXDomain);
    }

    #[test]
    fn garbage_never_panics() {
        let p = policy();
        let gw = Ipv4Addr::new(10, 213, 0, 1);
        assert!(answer(b"", &p, gw).is_none());
        let (bytes, answered) = answer(
            &[0xab, 0xcd, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 9, 9],
            &p,
            gw,
        )
        .unwrap();
        assert!(answered.is_none());
        assert_eq!(Message::from_vec(&bytes).unwrap().metadata.id, 0xabcd);
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for len in 0..300 {
            let buf: Vec<u8> = (0..len)
                .map(|_| {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    (x & 0xff) as u8
                })
                .collect();
            let _ = answer(&buf, &p, gw);
        }
    }
}
