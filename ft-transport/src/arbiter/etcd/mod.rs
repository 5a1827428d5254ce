//! The etcd arbiter: a compare-and-swap transaction on one key per pair generation.
//!
//! The claim of `(vm, generation)` is the key `<prefix>/vm/<vm>/generation/<gen>`
//! (prefix `ft/arbiter` by default), its value `holder <node id>`. One transaction
//! claims it:
//!
//! ```text
//! compare: create_revision(key) == 0          (the key does not exist)
//! success: put(key, "holder <me>")             -> Won, token = the txn's revision
//! failure: range(key)                          -> the holder: Won again if it is me
//! ```
//!
//! etcd runs a transaction atomically at one revision of its replicated store, so
//! exactly one claimant's compare succeeds, whichever endpoint each side talks to. The
//! fencing token is the key's `create_revision` (the revision of the winning put):
//! etcd revisions only grow, across all keys, so a later winner of any pair always
//! carries a larger token.
//!
//! A new pair's generation is reserved ([`EtcdArbiter::reserve`]) as the key
//! `<prefix>/vm/<vm>/reserve/<gen>`, value `reserved by <node id>`: the generation
//! after the newest the caller read, created by a transaction only while neither it
//! nor that generation's claim exists; of racing callers, one wins.
//!
//! # Client
//!
//! The requests go to etcd's v3 HTTP JSON gateway (`POST /v3/kv/txn`, keys and values
//! base64-encoded, present since etcd 3.3) through [`ureq`], a small, well-kept
//! blocking HTTP client, built without its TLS stack, with a short global timeout;
//! [`serde_json`] and [`base64`] do the encoding. The gRPC client crates need `protoc`
//! or a large async stack (tokio, tonic) for what is one request here; the arbiter is
//! asked only at failover, from the runtime's thread, which may block. Only `http://`
//! endpoints are accepted (a TLS etcd needs ureq's `rustls` feature: future work).
//!
//! Endpoints are tried in order; the first that answers decides. If none answers (no
//! connection, a timeout, HTTP 5xx such as etcd's "no leader"), the claim is
//! [`ArbiterError::Unreachable`]: the engine keeps waiting and retries with backoff.

mod lease;
pub mod standby;
mod watch;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ft_core::arbiter::{
    not_the_holder, Arbiter, ArbiterError, CloneOffer, Decision, NodeId, PairId, Purpose,
    Reservation,
};
use serde_json::{json, Value};

use super::file::{parse_reserver, reserver_text};

pub use lease::{Lease, Renewed};

/// The TTL of the lease clone offers are put with, unless set.
pub const DEFAULT_OFFER_TTL: Duration = Duration::from_secs(2);

/// Largest answer read from etcd.
const MAX_ANSWER_BYTES: u64 = 1 << 20;

/// Errors of the etcd arbiter.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EtcdError {
    /// No endpoint was given.
    #[error("no etcd endpoint given")]
    NoEndpoint,
    /// An endpoint is not an `http://` URL.
    #[error("unsupported etcd endpoint {0:?}: expected http://HOST:PORT (this build has no TLS)")]
    BadEndpoint(String),
    /// No answer: connection refused, timeout, name not found.
    #[error("etcd at {endpoint} unreachable: {detail}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// What failed.
        detail: String,
    },
    /// An HTTP error status.
    #[error("etcd at {endpoint} answered HTTP {status}: {body}")]
    Status {
        /// The endpoint.
        endpoint: String,
        /// The status code.
        status: u16,
        /// The start of the body.
        body: String,
    },
    /// An answer that is not what the API promises.
    #[error("etcd at {endpoint}: unusable answer: {detail}")]
    BadAnswer {
        /// The endpoint.
        endpoint: String,
        /// What is wrong.
        detail: String,
    },
}

impl From<EtcdError> for ArbiterError {
    fn from(e: EtcdError) -> Self {
        match &e {
            EtcdError::Unreachable { .. } => ArbiterError::Unreachable(e.to_string()),
            // 5xx: etcd is there but cannot decide now (no leader, overloaded).
            EtcdError::Status { status, .. } if *status >= 500 => {
                ArbiterError::Unreachable(e.to_string())
            }
            _ => ArbiterError::Failed(e.to_string()),
        }
    }
}

/// Result alias of this module.
pub type Result<T, E = EtcdError> = std::result::Result<T, E>;

/// The etcd arbiter. See the module docs.
#[derive(Debug, Clone)]
pub struct EtcdArbiter {
    endpoints: Vec<String>,
    prefix: String,
    agent: ureq::Agent,
    /// The lease this process's clone offers are put with, granted at the first
    /// offer and shared by the clones of this arbiter.
    offers: Arc<parking_lot::Mutex<Option<OfferLease>>>,
    /// The TTL of that lease.
    offer_ttl: Duration,
}

/// The lease of a process's clone offers, and the offers put with it (put again with
/// a fresh lease if it expired while the process was frozen).
#[derive(Debug)]
struct OfferLease {
    lease: Lease,
    published: Arc<parking_lot::Mutex<Vec<CloneOffer>>>,
}

impl EtcdArbiter {
    /// An arbiter talking to the etcd client URLs `endpoints` (`http://HOST:PORT`),
    /// tried in order; `timeout` bounds each request, connection included.
    pub fn new(endpoints: &[&str], timeout: Duration) -> Result<EtcdArbiter> {
        if endpoints.is_empty() {
            return Err(EtcdError::NoEndpoint);
        }
        let mut eps = Vec::with_capacity(endpoints.len());
        for e in endpoints {
            let trimmed = e.trim().trim_end_matches('/');
            let host = trimmed
                .strip_prefix("http://")
                .ok_or_else(|| EtcdError::BadEndpoint((*e).to_string()))?;
            if host.is_empty() || host.contains('/') {
                return Err(EtcdError::BadEndpoint((*e).to_string()));
            }
            eps.push(trimmed.to_string());
        }
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(timeout))
            .timeout_connect(Some(timeout))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(EtcdArbiter {
            endpoints: eps,
            prefix: "ft/arbiter".into(),
            agent,
            offers: Arc::default(),
            offer_ttl: DEFAULT_OFFER_TTL,
        })
    }

    /// The same endpoints and prefix, with no offer lease of its own (for the
    /// threads that keep leases alive: they must not hold the arbiter that holds them).
    fn bare(&self) -> EtcdArbiter {
        EtcdArbiter {
            offers: Arc::default(),
            ..self.clone()
        }
    }

    /// Put clone offers with a lease of `ttl` (default 2 s, etcd's usual minimum):
    /// a member that dies takes its offer with it within that time.
    pub fn with_offer_ttl(mut self, ttl: Duration) -> EtcdArbiter {
        self.offer_ttl = ttl;
        self
    }

    /// Use `prefix` instead of `ft/arbiter` for the keys.
    pub fn with_prefix(mut self, prefix: &str) -> EtcdArbiter {
        self.prefix = prefix.trim_end_matches('/').to_string();
        self
    }

    /// The endpoints, in the order they are tried.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The key of `pair`'s claim.
    pub fn key(&self, pair: PairId) -> String {
        format!(
            "{}/vm/{}/generation/{}",
            self.prefix, pair.vm, pair.generation
        )
    }

    /// The test-and-set, with this module's error type.
    pub fn claim(&self, pair: PairId, me: NodeId) -> Result<Decision> {
        let key = B64.encode(self.key(pair));
        let value = B64.encode(format!("holder {}", me.0));
        let body = json!({
            "compare": [{
                "key": key,
                "result": "EQUAL",
                "target": "CREATE",
                "create_revision": "0",
            }],
            "success": [{ "request_put": { "key": key, "value": value } }],
            "failure": [{ "request_range": { "key": key } }],
        });
        self.on_any_endpoint("/v3/kv/txn", &body, |endpoint, answer| {
            decide_txn(endpoint, answer, me)
        })
    }

    /// Check that an endpoint answers a key-value read (of a key under the prefix that
    /// no claim uses), as a claim needs.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] for the last endpoint tried when none answers usefully.
    pub fn probe(&self) -> Result<()> {
        let body = json!({ "key": B64.encode(format!("{}/probe", self.prefix)) });
        self.on_any_endpoint("/v3/kv/range", &body, |endpoint, answer| {
            match answer.get("header") {
                Some(_) => Ok(()),
                None => Err(bad(endpoint, "a range answer without a header")),
            }
        })
    }

    /// The holder of `pair` and its token, if the pair was claimed.
    pub fn holder(&self, pair: PairId) -> Result<Option<(NodeId, u64)>> {
        self.read_key(&self.key(pair), read_kv)
    }

    /// One key's entry, read by `parse` (the endpoint that answered, the entry), or
    /// `None` if the key does not exist.
    fn read_key<T>(
        &self,
        key: &str,
        parse: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<Option<T>> {
        let body = json!({ "key": B64.encode(key) });
        self.on_any_endpoint("/v3/kv/range", &body, |endpoint, answer| {
            match answer.pointer("/kvs/0") {
                None => Ok(None),
                Some(kv) => parse(endpoint, kv).map(Some),
            }
        })
    }

    /// The newest generation of `vm` with a claim: a range over the VM's claim keys
    /// (keys only), the generation read back from each key.
    ///
    /// # Errors
    ///
    /// As for [`EtcdArbiter::holder`]; a key under the VM's prefix that does not end
    /// in a generation is [`EtcdError::BadAnswer`].
    pub fn newest_claim(&self, vm: u64) -> Result<Option<u64>> {
        self.newest_under(vm, &["generation"])
    }

    /// The newest generation of `vm` with a claim or a reservation.
    ///
    /// # Errors
    ///
    /// As for [`EtcdArbiter::newest_claim`].
    pub fn newest_reserved_or_claimed(&self, vm: u64) -> Result<Option<u64>> {
        self.newest_under(vm, &["generation", "reserve"])
    }

    /// The largest generation among the keys `<prefix>/vm/<vm>/<kind>/<gen>` for any
    /// of `kinds`, from one range read (of the VM's keys, when there are several
    /// kinds; other kinds' keys are skipped).
    fn newest_under(&self, vm: u64, kinds: &[&str]) -> Result<Option<u64>> {
        let prefix = match kinds {
            [kind] => format!("{}/vm/{vm}/{kind}/", self.prefix),
            _ => format!("{}/vm/{vm}/", self.prefix),
        };
        let end = watch::prefix_end(&prefix);
        let body = json!({
            "key": B64.encode(&prefix),
            "range_end": B64.encode(&end),
            "keys_only": true,
        });
        self.on_any_endpoint("/v3/kv/range", &body, |endpoint, answer| {
            let mut newest = None;
            let kvs = answer.get("kvs").and_then(Value::as_array);
            for kv in kvs.map(Vec::as_slice).unwrap_or_default() {
                let key = key_text(endpoint, kv)?;
                let rest = key.strip_prefix(&prefix).unwrap_or_default();
                let rest = match kinds {
                    [_] => Some(rest),
                    _ => kinds
                        .iter()
                        .find_map(|k| rest.strip_prefix(k).and_then(|r| r.strip_prefix('/'))),
                };
                let Some(rest) = rest else { continue };
                let generation = rest.parse::<u64>().map_err(|_| {
                    bad(
                        endpoint,
                        format!("key {key:?} does not end in a generation"),
                    )
                })?;
                newest = newest.max(Some(generation));
            }
            Ok(newest)
        })
    }

    /// The key of the reservation of `pair`'s generation.
    pub fn reservation_key(&self, pair: PairId) -> String {
        format!("{}/vm/{}/reserve/{}", self.prefix, pair.vm, pair.generation)
    }

    /// Reserve generation `after + 1` of `vm` (1 for `None`) for `me`, if `after` is
    /// still the newest generation with a claim or reservation, by a transaction that
    /// creates the reservation key only while neither it nor that generation's claim
    /// exists:
    ///
    /// ```text
    /// compare: create_revision(reserve/<G>) == 0 AND create_revision(generation/<G>) == 0
    /// success: put(reserve/<G>, "reserved by <me>")
    /// ```
    ///
    /// `None` when the newest generation read is not `after`, or the transaction lost
    /// (a concurrent reservation or claim of the same generation). A generation newer
    /// than `after + 1` made between the read and the transaction is not seen: only
    /// an operator's `--generation` can make one, and such a pair is outside the
    /// reservations anyway. (Checking the newest again afterwards would be wrong: a
    /// reservation made right after this one, from a read of it, is newer too.)
    ///
    /// # Errors
    ///
    /// As for [`EtcdArbiter::holder`].
    pub fn reserve(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> Result<Option<u64>> {
        if self.newest_reserved_or_claimed(vm)? != after {
            return Ok(None);
        }
        let generation = after.unwrap_or(0).saturating_add(1);
        let pair = PairId { vm, generation };
        let key = B64.encode(self.reservation_key(pair));
        let claim = B64.encode(self.key(pair));
        let absent = |k: &str| json!({ "key": k, "result": "EQUAL", "target": "CREATE", "create_revision": "0" });
        let body = json!({
            "compare": [absent(&key), absent(&claim)],
            "success": [{ "request_put": {
                "key": key,
                "value": B64.encode(format!(
                    "reserved by {}",
                    reserver_text(Reservation { node: me, purpose })
                )),
            } }],
            "failure": [],
        });
        let won = self.on_any_endpoint("/v3/kv/txn", &body, |_, answer| {
            Ok(answer.get("succeeded").and_then(Value::as_bool) == Some(true))
        })?;
        Ok(won.then_some(generation))
    }

    /// Who reserved `pair`'s generation, and for what, if one did.
    ///
    /// # Errors
    ///
    /// As for [`EtcdArbiter::holder`]; a value that is not a reservation is
    /// [`EtcdError::BadAnswer`].
    pub fn read_reservation(&self, pair: PairId) -> Result<Option<Reservation>> {
        self.read_key(&self.reservation_key(pair), |endpoint, kv| {
            let text = value_text(endpoint, kv)?;
            text.strip_prefix("reserved by ")
                .and_then(parse_reserver)
                .ok_or_else(|| bad(endpoint, format!("value {text:?} is not a reservation")))
        })
    }

    fn on_any_endpoint<T>(
        &self,
        path: &str,
        body: &Value,
        decide: impl Fn(&str, &Value) -> Result<T>,
    ) -> Result<T> {
        let mut last = EtcdError::NoEndpoint;
        for endpoint in &self.endpoints {
            match self.post(endpoint, path, body) {
                Ok(answer) => return decide(endpoint, &answer),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    fn post(&self, endpoint: &str, path: &str, body: &Value) -> Result<Value> {
        let unreachable = |detail: String| EtcdError::Unreachable {
            endpoint: endpoint.to_string(),
            detail,
        };
        let mut resp = self
            .agent
            .post(format!("{endpoint}{path}"))
            .header("content-type", "application/json")
            .send(body.to_string())
            .map_err(|e| unreachable(e.to_string()))?;
        let status = resp.status().as_u16();
        let text = resp
            .body_mut()
            .with_config()
            .limit(MAX_ANSWER_BYTES)
            .read_to_string()
            .map_err(|e| unreachable(format!("reading the answer: {e}")))?;
        if !(200..300).contains(&status) {
            return Err(EtcdError::Status {
                endpoint: endpoint.to_string(),
                status,
                body: text.chars().take(200).collect(),
            });
        }
        serde_json::from_str(&text).map_err(|e| EtcdError::BadAnswer {
            endpoint: endpoint.to_string(),
            detail: format!("not JSON: {e}"),
        })
    }
}

/// An int64 of the gateway's JSON: a string (proto3 JSON mapping) or a number.
fn int(v: Option<&Value>) -> Option<u64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_u64(),
        _ => None,
    }
}

fn bad(endpoint: &str, detail: impl Into<String>) -> EtcdError {
    EtcdError::BadAnswer {
        endpoint: endpoint.to_string(),
        detail: detail.into(),
    }
}

/// The outcome of the claim transaction.
fn decide_txn(endpoint: &str, answer: &Value, me: NodeId) -> Result<Decision> {
    // proto3 JSON omits `false`: an absent `succeeded` means the compare failed.
    if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
        let token = int(answer.pointer("/header/revision"))
            .ok_or_else(|| bad(endpoint, "no header.revision"))?;
        return Ok(Decision::Won { token });
    }
    let kv = answer
        .pointer("/responses/0/response_range/kvs/0")
        .ok_or_else(|| bad(endpoint, "compare failed but the range holds no key"))?;
    let (holder, token) = read_kv(endpoint, kv)?;
    Ok(if holder == me {
        Decision::Won { token }
    } else {
        Decision::Lost { holder }
    })
}

/// The value of one key-value of a range answer, as text.
fn value_text(endpoint: &str, kv: &Value) -> Result<String> {
    b64_text(endpoint, kv, "value")
}

/// The key of one key-value of a range or watch answer, as text.
fn key_text(endpoint: &str, kv: &Value) -> Result<String> {
    b64_text(endpoint, kv, "key")
}

/// The base64 text field `field` of a key-value.
fn b64_text(endpoint: &str, kv: &Value, field: &str) -> Result<String> {
    kv.get(field)
        .and_then(Value::as_str)
        .and_then(|v| B64.decode(v).ok())
        .and_then(|v| String::from_utf8(v).ok())
        .ok_or_else(|| bad(endpoint, format!("a {field} that is not base64 text")))
}

/// An offer's value, `member <id> addr <addr>`.
fn parse_offer(pair: PairId, text: &str) -> Option<CloneOffer> {
    let (member, addr) = text.strip_prefix("member ")?.split_once(" addr ")?;
    let member = NodeId(member.parse().ok()?);
    (!addr.is_empty()).then(|| CloneOffer {
        pair,
        member,
        addr: addr.to_string(),
    })
}

/// The holder and token in one key-value of a range answer.
fn read_kv(endpoint: &str, kv: &Value) -> Result<(NodeId, u64)> {
    let token = int(kv.get("create_revision"))
        .ok_or_else(|| bad(endpoint, "key without create_revision"))?;
    let text = value_text(endpoint, kv)?;
    let holder = text
        .strip_prefix("holder ")
        .and_then(|n| n.parse().ok())
        .ok_or_else(|| bad(endpoint, format!("value {text:?} is not a claim")))?;
    Ok((NodeId(holder), token))
}

impl Arbiter for EtcdArbiter {
    fn test_and_set(&self, pair: PairId, me: NodeId) -> ft_core::arbiter::Result<Decision> {
        self.claim(pair, me).map_err(ArbiterError::from)
    }

    fn check(&self) -> ft_core::arbiter::Result<()> {
        self.probe().map_err(ArbiterError::from)
    }

    fn holder(&self, pair: PairId) -> ft_core::arbiter::Result<Option<NodeId>> {
        Ok(EtcdArbiter::holder(self, pair)?.map(|(node, _)| node))
    }

    fn newest_claimed(&self, vm: u64) -> ft_core::arbiter::Result<Option<u64>> {
        self.newest_claim(vm).map_err(ArbiterError::from)
    }

    fn reserve_generation(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> ft_core::arbiter::Result<Option<u64>> {
        self.reserve(vm, me, after, purpose)
            .map_err(ArbiterError::from)
    }

    fn reservation(&self, pair: PairId) -> ft_core::arbiter::Result<Option<Reservation>> {
        self.read_reservation(pair).map_err(ArbiterError::from)
    }

    fn newest_generation(&self, vm: u64) -> ft_core::arbiter::Result<Option<u64>> {
        self.newest_reserved_or_claimed(vm)
            .map_err(ArbiterError::from)
    }

    fn publish_offer(&self, offer: &CloneOffer) -> ft_core::arbiter::Result<()> {
        let (lease, published) = self.offer_lease()?;
        match self.put_offer(offer, Some(lease))? {
            Ok(()) => {
                let mut p = published.lock();
                p.retain(|o| o.pair != offer.pair);
                p.push(offer.clone());
                Ok(())
            }
            Err(holder) => Err(not_the_holder(offer, holder)),
        }
    }

    fn withdraw_offer(&self, pair: PairId, member: NodeId) -> ft_core::arbiter::Result<()> {
        self.delete_offer(pair, member).map_err(ArbiterError::from)
    }

    fn clone_offer(&self, vm: u64) -> ft_core::arbiter::Result<Option<CloneOffer>> {
        let Some(generation) = self.newest_claim(vm)? else {
            return Ok(None);
        };
        Ok(self.read_offer(PairId { vm, generation })?)
    }
}

/// Clone offers: the key `<prefix>/vm/<vm>/offer/<gen>`, its value `member <id> addr
/// <HOST:PORT>`, put with a lease the publishing process keeps alive (so the offer of
/// a member that died vanishes within the lease's TTL). A transaction puts it only
/// while the claim of that generation names the member:
///
/// ```text
/// compare: value(claim key) == "holder <member>"
/// success: put(offer key, "member <member> addr <addr>")
/// failure: range(claim key)                    -> refused, with the holder
/// ```
impl EtcdArbiter {
    /// The key of `pair`'s clone offer.
    pub fn offer_key(&self, pair: PairId) -> String {
        format!("{}/vm/{}/offer/{}", self.prefix, pair.vm, pair.generation)
    }

    /// This process's offer lease (granted at the first offer) and the offers put
    /// with it.
    fn offer_lease(&self) -> Result<(i64, Arc<parking_lot::Mutex<Vec<CloneOffer>>>)> {
        let mut session = self.offers.lock();
        if let Some(s) = &*session {
            return Ok((s.lease.id(), s.published.clone()));
        }
        let published: Arc<parking_lot::Mutex<Vec<CloneOffer>>> = Arc::default();
        let (bare, again) = (self.bare(), published.clone());
        // A lease that expired (the process was frozen past its TTL) took the offers
        // with it: put them again with its successor, each only while its member
        // still holds the claim.
        let renewed: Renewed = Box::new(move |fresh| {
            again
                .lock()
                .retain(|o| matches!(bare.put_offer(o, Some(fresh)), Ok(Ok(())) | Err(_)));
        });
        let lease = Lease::grant(&self.bare(), self.offer_ttl, renewed)?;
        let id = lease.id();
        *session = Some(OfferLease {
            lease,
            published: published.clone(),
        });
        Ok((id, published))
    }

    /// Put `offer` (with `lease`, if given) if its member holds the claim;
    /// `Err(holder)` if it does not.
    pub fn put_offer(
        &self,
        offer: &CloneOffer,
        lease: Option<i64>,
    ) -> Result<std::result::Result<(), Option<NodeId>>> {
        let claim = B64.encode(self.key(offer.pair));
        let key = B64.encode(self.offer_key(offer.pair));
        let value = B64.encode(format!("member {} addr {}", offer.member.0, offer.addr));
        let mut put = json!({ "key": key, "value": value });
        if let Some(id) = lease {
            put["lease"] = json!(id.to_string());
        }
        let body = json!({
            "compare": [{
                "key": claim,
                "result": "EQUAL",
                "target": "VALUE",
                "value": B64.encode(format!("holder {}", offer.member.0)),
            }],
            "success": [{ "request_put": put }],
            "failure": [{ "request_range": { "key": claim } }],
        });
        self.on_any_endpoint("/v3/kv/txn", &body, |endpoint, answer| {
            if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
                return Ok(Ok(()));
            }
            match answer.pointer("/responses/0/response_range/kvs/0") {
                None => Ok(Err(None)),
                Some(kv) => read_kv(endpoint, kv).map(|(holder, _)| Err(Some(holder))),
            }
        })
    }

    /// The clone offer of `pair`, if its holder published one.
    pub fn read_offer(&self, pair: PairId) -> Result<Option<CloneOffer>> {
        self.read_key(&self.offer_key(pair), |endpoint, kv| {
            let text = value_text(endpoint, kv)?;
            parse_offer(pair, &text)
                .ok_or_else(|| bad(endpoint, format!("value {text:?} is not an offer")))
        })
    }

    /// Delete `pair`'s offer if `member` published it.
    pub fn delete_offer(&self, pair: PairId, member: NodeId) -> Result<()> {
        if let Some(s) = &*self.offers.lock() {
            s.published
                .lock()
                .retain(|o| o.pair != pair || o.member != member);
        }
        if self.read_offer(pair)?.is_none_or(|o| o.member != member) {
            return Ok(());
        }
        let body = json!({ "key": B64.encode(self.offer_key(pair)) });
        self.on_any_endpoint("/v3/kv/deleterange", &body, |_, _| Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_are_checked() {
        let t = Duration::from_millis(50);
        assert_eq!(
            EtcdArbiter::new(&[], t).map(|_| ()),
            Err(EtcdError::NoEndpoint)
        );
        assert!(matches!(
            EtcdArbiter::new(&["https://a:1"], t),
            Err(EtcdError::BadEndpoint(_))
        ));
        assert!(matches!(
            EtcdArbiter::new(&["http://a:1/x"], t),
            Err(EtcdError::BadEndpoint(_))
        ));
        let a = EtcdArbiter::new(&["http://a:1/", "http://b:2"], t)
            .unwrap()
            .with_prefix("x/");
        assert_eq!(a.endpoints(), ["http://a:1", "http://b:2"]);
        let pair = PairId {
            vm: 4,
            generation: 5,
        };
        assert_eq!(a.key(pair), "x/vm/4/generation/5");
    }

    #[test]
    fn answers_decode() {
        let won = json!({"header": {"revision": "7"}, "succeeded": true, "responses": []});
        assert_eq!(
            decide_txn("e", &won, NodeId(1)),
            Ok(Decision::Won { token: 7 })
        );
        let held = json!({"header": {"revision": "9"}, "responses": [{"response_range": {
            "kvs": [{"key": "", "create_revision": "7", "value": B64.encode("holder 2")}]}}]});
        assert_eq!(
            decide_txn("e", &held, NodeId(1)),
            Ok(Decision::Lost { holder: NodeId(2) })
        );
        assert_eq!(
            decide_txn("e", &held, NodeId(2)),
            Ok(Decision::Won { token: 7 })
        );
        assert!(matches!(
            decide_txn("e", &json!({}), NodeId(1)),
            Err(EtcdError::BadAnswer { .. })
        ));
        let garbage = json!({"responses": [{"response_range": {
            "kvs": [{"create_revision": 3, "value": B64.encode("nope")}]}}]});
        assert!(matches!(
            decide_txn("e", &garbage, NodeId(1)),
            Err(EtcdError::BadAnswer { .. })
        ));
    }

    #[test]
    fn unreachable_maps_to_unreachable() {
        let e = EtcdError::Unreachable {
            endpoint: "x".into(),
            detail: "refused".into(),
        };
        assert!(matches!(
            ArbiterError::from(e),
            ArbiterError::Unreachable(_)
        ));
        let s = |status| EtcdError::Status {
            endpoint: "x".into(),
            status,
            body: String::new(),
        };
        assert!(matches!(
            ArbiterError::from(s(503)),
            ArbiterError::Unreachable(_)
        ));
        assert!(matches!(
            ArbiterError::from(s(400)),
            ArbiterError::Failed(_)
        ));
    }
}
