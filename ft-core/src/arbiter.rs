//! The split-brain tie-breaker: an atomic test-and-set, scoped to a pair generation.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};

/// Identifies one side of a pair (a host, a process).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId(pub u64);

/// A protected pair, and its generation. Each new pairing (a new backup after a
/// failover, say) gets a new generation, so an old pair's flag never blocks a new one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PairId {
    /// The protected VM.
    pub vm: u64,
    /// The pairing generation.
    pub generation: u64,
}

/// `node 3`.
///
/// ```
/// assert_eq!(ft_core::NodeId(3).to_string(), "node 3");
/// ```
impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "node {}", self.0)
    }
}

/// `vm 2 generation 1`.
///
/// ```
/// let pair = ft_core::PairId { vm: 2, generation: 1 };
/// assert_eq!(pair.to_string(), "vm 2 generation 1");
/// ```
impl std::fmt::Display for PairId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "vm {} generation {}", self.vm, self.generation)
    }
}

/// The outcome of a test-and-set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// This side won and may go live. The token increases with every win, for fencing.
    Won {
        /// A fencing token.
        token: u64,
    },
    /// Another side already won; this side must halt.
    Lost {
        /// The winner.
        holder: NodeId,
    },
}

/// Where the live member of a VM offers a live clone to a new backup: the part of the
/// VM's membership record that tells a joining node (a standby, a restarted node)
/// whom to clone from. The member is the holder of `pair`'s claim; it publishes the
/// offer while it runs alone ([`Arbiter::publish_offer`]) and withdraws it once a
/// joiner connects ([`Arbiter::withdraw_offer`]). The clone joins generation
/// `pair.generation + 1`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CloneOffer {
    /// The generation the member holds.
    pub pair: PairId,
    /// The live member.
    pub member: NodeId,
    /// Where it listens for the joiner's log channel (`HOST:PORT`, as the nodes
    /// reach it).
    pub addr: String,
}

/// Errors of arbiters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ArbiterError {
    /// The arbiter could not be reached; the caller must wait and retry, never go live.
    #[error("arbiter unreachable: {0}")]
    Unreachable(String),
    /// The arbiter answered something unusable.
    #[error("arbiter failure: {0}")]
    Failed(String),
}

/// Result alias of this module.
pub type Result<T, E = ArbiterError> = std::result::Result<T, E>;

/// An atomic test-and-set, one flag per pair generation.
///
/// The first caller for a `pair` wins; every later caller for the same `pair` gets
/// [`Decision::Lost`], except the winner itself, which wins again (so retries after a
/// lost reply are safe).
pub trait Arbiter: Send + Sync {
    /// Try to claim `pair` for `me`.
    fn test_and_set(&self, pair: PairId, me: NodeId) -> Result<Decision>;

    /// Probe that the arbiter can be reached and used, claiming nothing. Runtimes call
    /// it at startup, so a misconfiguration (a missing directory, an etcd that does
    /// not answer) is reported at once instead of as a failover that never happens.
    /// The default (an arbiter with nothing to probe) succeeds.
    ///
    /// # Errors
    ///
    /// [`ArbiterError::Unreachable`] or [`ArbiterError::Failed`], as for
    /// [`Arbiter::test_and_set`].
    fn check(&self) -> Result<()> {
        Ok(())
    }

    /// The node that claimed `pair`, if one did: a side of that pair generation went
    /// live (alone, or as a promoted backup). A node starting (or restarting) for
    /// `pair` asks this first: a generation already claimed has a live member whose
    /// state a fresh process does not have, so the newcomer must not serve it.
    ///
    /// # Errors
    ///
    /// [`ArbiterError::Unreachable`] or [`ArbiterError::Failed`], as for
    /// [`Arbiter::test_and_set`].
    fn holder(&self, pair: PairId) -> Result<Option<NodeId>>;

    /// The newest generation of `vm` that was claimed, if any. A new pair takes a
    /// generation above it, so that no claim left from an earlier run (a stale
    /// arbiter directory, an old etcd key) can decide the new pair's failover.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn newest_claimed(&self, vm: u64) -> Result<Option<u64>>;

    /// Publish `offer`: its member, the holder of `offer.pair`'s claim, runs alone and
    /// offers a live clone at `offer.addr`. It replaces an earlier offer for the same
    /// generation.
    ///
    /// # Errors
    ///
    /// [`ArbiterError::Failed`] when the member does not hold that claim (only the
    /// live member may say where to clone from); otherwise as for
    /// [`Arbiter::holder`].
    fn publish_offer(&self, offer: &CloneOffer) -> Result<()>;

    /// Withdraw the offer for `pair`, if `member` published it (a joiner connected,
    /// or the member stops offering). Withdrawing what is not there succeeds.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn withdraw_offer(&self, pair: PairId, member: NodeId) -> Result<()>;

    /// The offer of `vm`'s newest claimed generation, if its holder published one. An
    /// offer of an older generation is never returned: its member lost its place to
    /// the newer generation's holder.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn clone_offer(&self, vm: u64) -> Result<Option<CloneOffer>>;

    /// Reserve the next generation of `vm` for `purpose` (a new pair whose primary is
    /// `me`, or the clone of the live member `me`), if `after` is still the newest
    /// generation reserved or claimed (`None`: the VM has none): generation
    /// `after + 1` (or 1) is recorded as reserved by `me` for `purpose` and returned. `Ok(None)` when the newest generation is no longer `after` (another
    /// node reserved or claimed one meanwhile): a compare-and-set, so of any number of
    /// nodes that read the same record and reserve, in any number of processes, one
    /// gets the generation and the others learn that they lost. A new pair never
    /// needs an operator to choose a number, and no claim left by an earlier run can
    /// decide its failover.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn reserve_generation(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> Result<Option<u64>>;

    /// Who reserved `pair`'s generation, and for what ([`Arbiter::reserve_generation`]),
    /// if one did.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn reservation(&self, pair: PairId) -> Result<Option<Reservation>>;

    /// The node that reserved `pair`'s generation, if one did.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn reserved_by(&self, pair: PairId) -> Result<Option<NodeId>> {
        Ok(self.reservation(pair)?.map(|r| r.node))
    }

    /// The newest generation of `vm` that was reserved or claimed, if any.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn newest_generation(&self, vm: u64) -> Result<Option<u64>>;

    /// What the arbiter holds about `vm`'s newest generation (reserved or claimed):
    /// the membership record a starting node reads. `None` for a VM the arbiter has
    /// never seen.
    ///
    /// # Errors
    ///
    /// As for [`Arbiter::holder`].
    fn membership(&self, vm: u64) -> Result<Option<Membership>> {
        let Some(generation) = self.newest_generation(vm)? else {
            return Ok(None);
        };
        let pair = PairId { vm, generation };
        let reservation = self.reservation(pair)?;
        Ok(Some(Membership {
            pair,
            reserved_by: reservation.map(|r| r.node),
            reserved_for: reservation.map(|r| r.purpose),
            holder: self.holder(pair)?,
        }))
    }
}

/// A VM's newest generation, as the arbiter records it ([`Arbiter::membership`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Membership {
    /// The VM and its newest generation.
    pub pair: PairId,
    /// The primary that reserved the generation for a new pair, if it was reserved
    /// (a generation an operator chose with `--generation` is not).
    pub reserved_by: Option<NodeId>,
    /// The node that went live in it, if one did: the generation's live member.
    pub holder: Option<NodeId>,
    /// What it was reserved for, if it was.
    pub reserved_for: Option<Purpose>,
}

/// What a generation is reserved for ([`Arbiter::reserve_generation`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// A new pair, whose primary reserved it at startup.
    NewPair,
    /// The clone of a live member, which reserved the generation after its own claim
    /// for the pair it and its new backup will form.
    Clone,
}

/// A generation's reservation: by whom, and for what.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    /// The node that reserved it.
    pub node: NodeId,
    /// What for.
    pub purpose: Purpose,
}

impl Membership {
    /// Whether the newest generation is the one a live member reserved for a clone of
    /// itself ([`Purpose::Clone`]), and nobody went live in it yet. Such a generation is the running pair's, as the
    /// claim before it is: nobody may start a new pair in it, and a node that wants
    /// to join the VM joins that member.
    ///
    /// ```
    /// use ft_core::{Membership, NodeId, PairId, Purpose};
    /// let m = Membership {
    ///     pair: PairId { vm: 1, generation: 3 },
    ///     reserved_by: Some(NodeId(2)),
    ///     reserved_for: Some(Purpose::Clone),
    ///     holder: None,
    /// };
    /// assert!(m.clone_of_live_member());
    /// let pair = Membership { reserved_for: Some(Purpose::NewPair), ..m };
    /// assert!(!pair.clone_of_live_member());
    /// assert!(!Membership { holder: Some(NodeId(2)), ..m }.clone_of_live_member());
    /// ```
    pub fn clone_of_live_member(&self) -> bool {
        self.holder.is_none() && self.reserved_for == Some(Purpose::Clone)
    }
}

/// The refusal of an offer whose member does not hold its claim.
pub fn not_the_holder(offer: &CloneOffer, holder: Option<NodeId>) -> ArbiterError {
    ArbiterError::Failed(format!(
        "node {} may not offer a clone of vm {} generation {}: {}",
        offer.member.0,
        offer.pair.vm,
        offer.pair.generation,
        holder.map_or_else(
            || "nobody holds that generation".to_string(),
            |h| format!("node {} holds it", h.0)
        )
    ))
}

#[derive(Debug, Default)]
struct InProcessState {
    holders: HashMap<PairId, (NodeId, u64)>,
    reserved: HashMap<PairId, Reservation>,
    offers: HashMap<PairId, CloneOffer>,
    next_token: u64,
    unreachable: bool,
}

/// An arbiter inside one process, for simulations and in-process pairs. Clones share
/// the same flags.
#[derive(Debug, Clone, Default)]
pub struct InProcessArbiter {
    state: Arc<Mutex<InProcessState>>,
}

impl InProcessArbiter {
    /// A fresh arbiter with no flag set.
    pub fn new() -> InProcessArbiter {
        InProcessArbiter::default()
    }

    /// Make the arbiter unreachable (or reachable again), to test waiting sides.
    pub fn set_unreachable(&self, unreachable: bool) {
        self.state.lock().unreachable = unreachable;
    }

    /// The winner of `pair`, if any.
    pub fn holder(&self, pair: PairId) -> Option<NodeId> {
        self.state.lock().holders.get(&pair).map(|(n, _)| *n)
    }
}

/// The newest generation of `vm` reserved or claimed.
fn newest_of(st: &InProcessState, vm: u64) -> Option<u64> {
    st.holders
        .keys()
        .chain(st.reserved.keys())
        .filter(|p| p.vm == vm)
        .map(|p| p.generation)
        .max()
}

impl Arbiter for InProcessArbiter {
    fn check(&self) -> Result<()> {
        if self.state.lock().unreachable {
            return Err(ArbiterError::Unreachable(
                "in-process arbiter set unreachable".into(),
            ));
        }
        Ok(())
    }

    fn holder(&self, pair: PairId) -> Result<Option<NodeId>> {
        self.check()?;
        Ok(InProcessArbiter::holder(self, pair))
    }

    fn newest_claimed(&self, vm: u64) -> Result<Option<u64>> {
        self.check()?;
        let st = self.state.lock();
        Ok(st
            .holders
            .keys()
            .filter(|p| p.vm == vm)
            .map(|p| p.generation)
            .max())
    }

    fn publish_offer(&self, offer: &CloneOffer) -> Result<()> {
        self.check()?;
        let mut st = self.state.lock();
        let holder = st.holders.get(&offer.pair).map(|(n, _)| *n);
        if holder != Some(offer.member) {
            return Err(not_the_holder(offer, holder));
        }
        st.offers.insert(offer.pair, offer.clone());
        Ok(())
    }

    fn withdraw_offer(&self, pair: PairId, member: NodeId) -> Result<()> {
        self.check()?;
        let mut st = self.state.lock();
        if st.offers.get(&pair).is_some_and(|o| o.member == member) {
            st.offers.remove(&pair);
        }
        Ok(())
    }

    fn clone_offer(&self, vm: u64) -> Result<Option<CloneOffer>> {
        let Some(generation) = self.newest_claimed(vm)? else {
            return Ok(None);
        };
        let st = self.state.lock();
        Ok(st.offers.get(&PairId { vm, generation }).cloned())
    }

    fn reserve_generation(
        &self,
        vm: u64,
        me: NodeId,
        after: Option<u64>,
        purpose: Purpose,
    ) -> Result<Option<u64>> {
        self.check()?;
        // One lock for the comparison and the reservation: atomic.
        let mut st = self.state.lock();
        if newest_of(&st, vm) != after {
            return Ok(None);
        }
        let next = after.unwrap_or(0).saturating_add(1);
        st.reserved.insert(
            PairId {
                vm,
                generation: next,
            },
            Reservation { node: me, purpose },
        );
        Ok(Some(next))
    }

    fn reservation(&self, pair: PairId) -> Result<Option<Reservation>> {
        self.check()?;
        Ok(self.state.lock().reserved.get(&pair).copied())
    }

    fn newest_generation(&self, vm: u64) -> Result<Option<u64>> {
        self.check()?;
        Ok(newest_of(&self.state.lock(), vm))
    }

    fn test_and_set(&self, pair: PairId, me: NodeId) -> Result<Decision> {
        let mut st = self.state.lock();
        if st.unreachable {
            return Err(ArbiterError::Unreachable(
                "in-process arbiter cut off".into(),
            ));
        }
        if let Some((holder, token)) = st.holders.get(&pair) {
            return Ok(if *holder == me {
                Decision::Won { token: *token }
            } else {
                Decision::Lost { holder: *holder }
            });
        }
        st.next_token += 1;
        let token = st.next_token;
        st.holders.insert(pair, (me, token));
        Ok(Decision::Won { token })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_claim_wins_per_generation() {
        let a = InProcessArbiter::new();
        let p1 = PairId {
            vm: 1,
            generation: 1,
        };
        let p2 = PairId {
            vm: 1,
            generation: 2,
        };
        assert!(matches!(
            a.test_and_set(p1, NodeId(1)),
            Ok(Decision::Won { .. })
        ));
        assert_eq!(
            a.test_and_set(p1, NodeId(2)),
            Ok(Decision::Lost { holder: NodeId(1) })
        );
        // The winner's retry wins again with the same token.
        assert_eq!(
            a.test_and_set(p1, NodeId(1)),
            Ok(Decision::Won { token: 1 })
        );
        // A new generation is a fresh flag.
        assert_eq!(
            a.test_and_set(p2, NodeId(2)),
            Ok(Decision::Won { token: 2 })
        );
        // Who holds what, and the newest claimed generation per VM.
        assert_eq!(Arbiter::holder(&a, p1), Ok(Some(NodeId(1))));
        assert_eq!(Arbiter::holder(&a, PairId { vm: 2, ..p1 }), Ok(None));
        assert_eq!(a.newest_claimed(1), Ok(Some(2)));
        assert_eq!(a.newest_claimed(2), Ok(None));
        // Reservations: above every claim and reservation, one generation each.
        assert_eq!(a.newest_generation(1), Ok(Some(2)));
        assert_eq!(a.membership(3), Ok(None));
        assert_eq!(
            a.reserve_generation(1, NodeId(7), Some(2), Purpose::NewPair),
            Ok(Some(3))
        );
        // Compare-and-set: a reservation after a generation that is no longer the
        // newest is refused.
        assert_eq!(
            a.reserve_generation(1, NodeId(8), Some(2), Purpose::NewPair),
            Ok(None)
        );
        assert_eq!(
            a.reserve_generation(1, NodeId(8), None, Purpose::NewPair),
            Ok(None)
        );
        assert_eq!(
            a.reserve_generation(1, NodeId(8), Some(3), Purpose::NewPair),
            Ok(Some(4))
        );
        assert_eq!(
            a.reserve_generation(3, NodeId(7), None, Purpose::NewPair),
            Ok(Some(1))
        );
        assert_eq!(a.newest_claimed(1), Ok(Some(2)));
        assert_eq!(a.newest_generation(1), Ok(Some(4)));
        let p4 = PairId {
            vm: 1,
            generation: 4,
        };
        assert_eq!(a.reserved_by(p4), Ok(Some(NodeId(8))));
        assert_eq!(a.reserved_by(p2), Ok(None));
        assert_eq!(
            a.membership(1),
            Ok(Some(Membership {
                pair: p4,
                reserved_by: Some(NodeId(8)),
                reserved_for: Some(Purpose::NewPair),
                holder: None,
            }))
        );
        // A live member's clone: the holder of a generation reserves the next.
        let p5 = PairId {
            vm: 1,
            generation: 5,
        };
        assert!(matches!(
            a.test_and_set(p4, NodeId(8)),
            Ok(Decision::Won { .. })
        ));
        assert_eq!(
            a.reserve_generation(1, NodeId(8), Some(4), Purpose::Clone),
            Ok(Some(5))
        );
        let Ok(Some(m)) = a.membership(1) else {
            panic!("no membership record for vm 1");
        };
        assert_eq!((m.pair, m.reserved_for), (p5, Some(Purpose::Clone)));
        assert!(m.clone_of_live_member());
        assert!(matches!(
            a.test_and_set(p5, NodeId(9)),
            Ok(Decision::Won { .. })
        ));
        let Ok(Some(m)) = a.membership(1) else {
            panic!("no membership record for vm 1");
        };
        assert_eq!(m.holder, Some(NodeId(9)));
        assert!(!m.clone_of_live_member());
        a.set_unreachable(true);
        assert!(matches!(
            a.reserve_generation(1, NodeId(7), Some(5), Purpose::NewPair),
            Err(ArbiterError::Unreachable(_))
        ));
        assert!(matches!(
            a.test_and_set(p2, NodeId(2)),
            Err(ArbiterError::Unreachable(_))
        ));
        assert!(matches!(
            Arbiter::holder(&a, p1),
            Err(ArbiterError::Unreachable(_))
        ));
        assert!(matches!(
            a.newest_claimed(1),
            Err(ArbiterError::Unreachable(_))
        ));
    }
}
