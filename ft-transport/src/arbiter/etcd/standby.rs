//! Standbys: spare nodes that wait in etcd and restore a pair's redundancy, in the
//! role of VMware's clustering service, which picks the host of a new backup.
//!
//! A standby registers under the VM, with a lease its process keeps alive:
//!
//! ```text
//! <prefix>/vm/<vm>/standby/<node id> = "standby <node id> listen <addr>"   (lease)
//! ```
//!
//! so a standby that dies leaves the pool within the lease's TTL. It then watches the
//! VM's membership record (the claims, the clone offers, the picks; one range read,
//! then a watch from the read's revision). When the live member of the newest claimed
//! generation `G` offers a live clone, every standby races for it in one transaction:
//!
//! ```text
//! compare: create_revision(<prefix>/vm/<vm>/pick/<G>) == 0
//!          value(<prefix>/vm/<vm>/generation/<G>) == "holder <member>"
//! success: put(pick/<G>, "standby <me>", lease)  -> picked: clone from the member
//! failure: range(pick/<G>)                       -> another standby was picked
//! ```
//!
//! etcd runs it atomically, so exactly one standby is picked per generation. The pick
//! carries the standby's lease: a picked standby that dies before its clone is whole
//! releases the pick with its lease, and the next standby picks the member's offer
//! (which the member publishes again after a clone that failed). Safety does not rest
//! on the pick: the member accepts one joiner per offer, and the engine's arbiter and
//! fencing tokens decide who is live.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use ft_core::arbiter::{CloneOffer, NodeId, PairId};
use serde_json::{json, Value};

use super::{
    bad, key_text, parse_offer, read_kv, value_text, watch, EtcdArbiter, EtcdError, Lease, Renewed,
    B64,
};

/// Errors of a standby.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StandbyError {
    /// etcd failed or answered something unusable.
    #[error(transparent)]
    Etcd(#[from] EtcdError),
    /// Another process holds this node id in the VM's standby pool.
    #[error("node {node} is already registered as a standby of vm {vm} (by another live process): every node of a vm needs its own --node-id")]
    Taken {
        /// The node id.
        node: u64,
        /// The VM.
        vm: u64,
    },
    /// This node id is a live member of the VM.
    #[error("node {node} is a member of vm {vm} (it holds generation {generation}): a standby needs an id of its own")]
    Member {
        /// The node id.
        node: u64,
        /// The VM.
        vm: u64,
        /// The generation it holds.
        generation: u64,
    },
}

/// Result alias of this module.
pub type Result<T, E = StandbyError> = std::result::Result<T, E>;

/// A VM's membership record in etcd, as read at one revision.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Record {
    /// The etcd revision the record was read at.
    pub revision: u64,
    /// The claims: generation → the node that went live in it.
    pub claims: BTreeMap<u64, NodeId>,
    /// The clone offers, by the generation their member holds.
    pub offers: BTreeMap<u64, CloneOffer>,
    /// The picks: generation → the standby picked to join its member.
    pub picks: BTreeMap<u64, NodeId>,
    /// The standby pool: node id → the address it will offer clones on.
    pub standbys: BTreeMap<u64, String>,
}

impl Record {
    /// The newest claimed generation and its live member.
    pub fn newest(&self) -> Option<(u64, NodeId)> {
        self.claims.iter().next_back().map(|(g, n)| (*g, *n))
    }

    /// The clone offer of the newest claimed generation's live member, if it made one.
    pub fn open_offer(&self) -> Option<&CloneOffer> {
        let (generation, holder) = self.newest()?;
        self.offers.get(&generation).filter(|o| o.member == holder)
    }
}

/// What a standby was picked for: the offer to clone from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pick {
    /// The live member's offer (the joiner's pair is the next generation).
    pub offer: CloneOffer,
}

impl Pick {
    /// The pair the new backup joins: the generation after the member's.
    pub fn pair(&self) -> PairId {
        PairId {
            vm: self.offer.pair.vm,
            generation: self.offer.pair.generation.saturating_add(1),
        }
    }
}

/// A registered standby. Dropping it revokes its lease: its registration, and its
/// pick if it was picked, leave etcd at once.
#[derive(Debug)]
pub struct Standby {
    etcd: EtcdArbiter,
    vm: u64,
    me: NodeId,
    lease: Lease,
    picked: Arc<AtomicBool>,
}

impl EtcdArbiter {
    fn vm_prefix(&self, vm: u64) -> String {
        format!("{}/vm/{vm}/", self.prefix)
    }

    /// The key of node `node`'s standby registration.
    pub fn standby_key(&self, vm: u64, node: NodeId) -> String {
        format!("{}standby/{}", self.vm_prefix(vm), node.0)
    }

    /// The key of the pick of `pair`'s live member's next backup.
    pub fn pick_key(&self, pair: PairId) -> String {
        format!("{}pick/{}", self.vm_prefix(pair.vm), pair.generation)
    }

    /// Read `vm`'s whole membership record at one revision.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint answers, or a key under the VM's prefix is not
    /// part of a record.
    pub fn record(&self, vm: u64) -> Result<Record, EtcdError> {
        let prefix = self.vm_prefix(vm);
        let body = json!({
            "key": B64.encode(&prefix),
            "range_end": B64.encode(watch::prefix_end(&prefix)),
        });
        self.on_any_endpoint("/v3/kv/range", &body, |endpoint, answer| {
            let revision = super::int(answer.pointer("/header/revision"))
                .ok_or_else(|| bad(endpoint, "a range answer without header.revision"))?;
            let mut record = Record {
                revision,
                ..Record::default()
            };
            let kvs = answer.get("kvs").and_then(Value::as_array);
            for kv in kvs.map(Vec::as_slice).unwrap_or_default() {
                let key = key_text(endpoint, kv)?;
                let rest = key.strip_prefix(&prefix).unwrap_or_default();
                let unknown = || bad(endpoint, format!("key {key:?} is not part of a record"));
                let (kind, n) = rest.split_once('/').ok_or_else(unknown)?;
                let n: u64 = n.parse().map_err(|_| unknown())?;
                let text = || value_text(endpoint, kv);
                match kind {
                    "generation" => {
                        record.claims.insert(n, read_kv(endpoint, kv)?.0);
                    }
                    "offer" => {
                        let pair = PairId { vm, generation: n };
                        let text = text()?;
                        let offer = parse_offer(pair, &text)
                            .ok_or_else(|| bad(endpoint, format!("{text:?} is not an offer")))?;
                        record.offers.insert(n, offer);
                    }
                    "pick" => {
                        let text = text()?;
                        let node = parse_standby(&text)
                            .ok_or_else(|| bad(endpoint, format!("{text:?} is not a pick")))?;
                        record.picks.insert(n, node);
                    }
                    "standby" => {
                        let text = text()?;
                        let addr = text
                            .strip_prefix(&format!("standby {n} listen "))
                            .ok_or_else(|| bad(endpoint, format!("{text:?} is not a standby")))?;
                        record.standbys.insert(n, addr.to_string());
                    }
                    // Keys of later versions (or the probe's) are not this code's.
                    _ => {}
                }
            }
            Ok(record)
        })
    }

    /// Put `node`'s registration with `lease` unless the key exists; `Err(())` if it
    /// does (another process registered that id).
    fn put_standby(
        &self,
        vm: u64,
        node: NodeId,
        listen: &str,
        lease: i64,
    ) -> Result<std::result::Result<(), ()>, EtcdError> {
        let key = B64.encode(self.standby_key(vm, node));
        let value = B64.encode(format!("standby {} listen {listen}", node.0));
        let body = json!({
            "compare": [{ "key": key, "result": "EQUAL", "target": "CREATE", "create_revision": "0" }],
            "success": [{ "request_put": { "key": key, "value": value, "lease": lease.to_string() } }],
            "failure": [],
        });
        self.on_any_endpoint("/v3/kv/txn", &body, |_, answer| {
            Ok(
                if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
                    Ok(())
                } else {
                    Err(())
                },
            )
        })
    }

    /// The pick transaction (see the module docs): `Ok(Some(me))` if `me` is picked for
    /// `offer`, `Ok(Some(other))` if another standby is, `Ok(None)` if the offer's
    /// member no longer holds its claim.
    fn try_pick(
        &self,
        offer: &CloneOffer,
        me: NodeId,
        lease: i64,
    ) -> Result<Option<NodeId>, EtcdError> {
        let pick = B64.encode(self.pick_key(offer.pair));
        let claim = B64.encode(self.key(offer.pair));
        let body = json!({
            "compare": [
                { "key": pick, "result": "EQUAL", "target": "CREATE", "create_revision": "0" },
                {
                    "key": claim, "result": "EQUAL", "target": "VALUE",
                    "value": B64.encode(format!("holder {}", offer.member.0)),
                },
            ],
            "success": [{ "request_put": {
                "key": pick,
                "value": B64.encode(format!("standby {}", me.0)),
                "lease": lease.to_string(),
            } }],
            "failure": [{ "request_range": { "key": pick } }],
        });
        self.on_any_endpoint("/v3/kv/txn", &body, |endpoint, answer| {
            if answer.get("succeeded").and_then(Value::as_bool) == Some(true) {
                return Ok(Some(me));
            }
            match answer.pointer("/responses/0/response_range/kvs/0") {
                // No pick: the claim compare failed.
                None => Ok(None),
                Some(kv) => {
                    let text = value_text(endpoint, kv)?;
                    parse_standby(&text)
                        .map(Some)
                        .ok_or_else(|| bad(endpoint, format!("{text:?} is not a pick")))
                }
            }
        })
    }
}

/// A pick's value, `standby <id>`.
fn parse_standby(text: &str) -> Option<NodeId> {
    text.strip_prefix("standby ")?.parse().ok().map(NodeId)
}

impl Standby {
    /// Register node `me` as a standby of `vm` that will offer clones on `listen` once
    /// it is a live member, with a lease of `ttl` kept alive until the `Standby` drops.
    ///
    /// # Errors
    ///
    /// [`StandbyError::Taken`] if another live process registered `me`;
    /// [`StandbyError::Member`] if `me` holds the VM's newest generation;
    /// [`StandbyError::Etcd`] when etcd fails.
    pub fn register(
        etcd: &EtcdArbiter,
        vm: u64,
        me: NodeId,
        listen: &str,
        ttl: Duration,
    ) -> Result<Standby> {
        let record = etcd.record(vm)?;
        if let Some((generation, holder)) = record.newest() {
            if holder == me {
                return Err(StandbyError::Member {
                    node: me.0,
                    vm,
                    generation,
                });
            }
        }
        let picked = Arc::new(AtomicBool::new(false));
        let (bare, still_waiting, addr) = (etcd.bare(), picked.clone(), listen.to_string());
        // A lease that expired while the process was frozen took the registration with
        // it: register again with its successor, unless already picked.
        let renewed: Renewed = Box::new(move |fresh| {
            if !still_waiting.load(Ordering::SeqCst) {
                let _ = bare.put_standby(vm, me, &addr, fresh);
            }
        });
        let lease = Lease::grant(&etcd.bare(), ttl, renewed)?;
        if etcd.put_standby(vm, me, listen, lease.id())?.is_err() {
            return Err(StandbyError::Taken { node: me.0, vm });
        }
        Ok(Standby {
            etcd: etcd.bare(),
            vm,
            me,
            lease,
            picked,
        })
    }

    /// The lease the registration (and a pick) is put with.
    pub fn lease(&self) -> &Lease {
        &self.lease
    }

    /// Wait until this standby is picked to clone from a live member: read the
    /// record, race for an open offer, otherwise watch for a change (up to `window` at
    /// a time) and read again. An etcd that fails is passed to `on_error` and waited
    /// out; the wait goes on.
    ///
    /// Picked, the registration is deleted (the node is no longer a spare); the pick
    /// stays, with the lease, for as long as this `Standby` lives.
    pub fn wait_for_pick(&self, window: Duration, mut on_error: impl FnMut(&EtcdError)) -> Pick {
        let prefix = self.etcd.vm_prefix(self.vm);
        loop {
            match self.pick_once() {
                Ok(Ok(pick)) => return pick,
                Ok(Err(revision)) => {
                    if let Err(e) = self.etcd.wait_for_change(&prefix, revision + 1, window) {
                        on_error(&e);
                        std::thread::sleep(window.min(Duration::from_millis(200)));
                    }
                }
                Err(e) => {
                    on_error(&e);
                    std::thread::sleep(window.min(Duration::from_millis(200)));
                }
            }
            // However etcd's watch answers, never spin.
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// One read and, on an open offer, one race: the pick, or the revision read at.
    fn pick_once(&self) -> Result<std::result::Result<Pick, u64>, EtcdError> {
        let record = self.etcd.record(self.vm)?;
        let Some(offer) = record.open_offer().filter(|o| o.member != self.me) else {
            return Ok(Err(record.revision));
        };
        let mine = match record.picks.get(&offer.pair.generation) {
            Some(&n) => n == self.me,
            None => self.etcd.try_pick(offer, self.me, self.lease.id())? == Some(self.me),
        };
        if !mine {
            return Ok(Err(record.revision));
        }
        self.picked.store(true, Ordering::SeqCst);
        let key = B64.encode(self.etcd.standby_key(self.vm, self.me));
        // Best effort: left in place, it only lists a node that is no longer spare,
        // and goes with the lease.
        let _ = self
            .etcd
            .on_any_endpoint("/v3/kv/deleterange", &json!({ "key": key }), |_, _| Ok(()));
        Ok(Ok(Pick {
            offer: offer.clone(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_offer_is_the_newest_holders() {
        let pair = |generation| PairId { vm: 1, generation };
        let offer = |g, m| CloneOffer {
            pair: pair(g),
            member: NodeId(m),
            addr: "a:1".into(),
        };
        let mut r = Record::default();
        assert_eq!(r.open_offer(), None);
        r.claims.insert(1, NodeId(2));
        r.offers.insert(1, offer(1, 2));
        assert_eq!(r.open_offer(), Some(&offer(1, 2)));
        // A newer claim without an offer: the old offer is stale.
        r.claims.insert(2, NodeId(3));
        assert_eq!(r.open_offer(), None);
        // An offer by someone else than the holder is not open.
        r.offers.insert(2, offer(2, 4));
        assert_eq!(r.open_offer(), None);
        assert_eq!(parse_standby("standby 7"), Some(NodeId(7)));
        assert_eq!(parse_standby("standby x"), None);
        let p = Pick { offer: offer(4, 2) };
        assert_eq!(p.pair(), pair(5));
    }
}
