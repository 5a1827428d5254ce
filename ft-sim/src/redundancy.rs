//! A protected VM through a chain of failures: members that fail, and new backups made
//! by live clone from whichever member is live, on virtual time.
//!
//! Where [`crate::PairSim`] is one pair from start to end, a [`ChainSim`] is the
//! lifetime of one protected VM: it starts as a pair (or a machine alone), loses
//! members to crashes, and regains a backup each time by [`ChainSim::start_clone`]:
//! a fresh member, a fresh link to the live member, and the clone protocol of
//! [`ft_core::live_clone`] over it. Each member is turned by ft-core's one driver loop,
//! as in production; each link is a [`VirtualWire`]; the arbiter is one
//! [`InProcessArbiter`] for all generations, reached with a simulated latency. Each
//! clone goes to a new generation of the pair, handed out by a counter as an arbiter
//! would allocate it.
//!
//! Members share one disk (a shared disk; a private disk would have to be copied at
//! the clone point, which the clone protocol does not carry) and one output sink.

use bytes::Bytes;
use ft_core::driver::{
    Delayed, Driver, DriverConfig, DriverError, NoLink, VirtualWire, WireConfig,
};
use ft_core::{
    CloneConfig, EngineError, InProcessArbiter, Nanos, Node, NodeId, Notice, PairId, Phase,
};

use crate::cluster::PairConfig;
use crate::machine::Machine;
use crate::world::{Disk, OutputSink, SimWorld};

/// Most members one chain holds (the names of their worlds are static).
pub const MAX_MEMBERS: usize = 32;

const NAMES: [&str; MAX_MEMBERS] = [
    "m1", "m2", "m3", "m4", "m5", "m6", "m7", "m8", "m9", "m10", "m11", "m12", "m13", "m14", "m15",
    "m16", "m17", "m18", "m19", "m20", "m21", "m22", "m23", "m24", "m25", "m26", "m27", "m28",
    "m29", "m30", "m31", "m32",
];

/// Errors of a chain simulation.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// No such member.
    #[error("no such member: {0}")]
    UnknownMember(NodeId),
    /// The member is down.
    #[error("{0} is down")]
    Down(NodeId),
    /// The chain holds [`MAX_MEMBERS`] members already.
    #[error("the chain already holds {MAX_MEMBERS} members")]
    Full,
    /// The engine refused (not live, already cloning, guest ended...).
    #[error("engine: {0}")]
    Engine(#[from] EngineError),
}

/// Which end of a wire a member holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    Primary,
    Backup,
}

/// One member of the chain.
pub struct Member {
    /// Its node id.
    pub id: NodeId,
    /// The name its world gives its outputs.
    pub name: &'static str,
    /// The engine.
    pub node: Node<Machine, SimWorld>,
    driver: Driver,
    arbiter: Delayed<InProcessArbiter>,
    up: bool,
    link: Option<(usize, End)>,
}

impl Member {
    /// Whether it runs (not crashed).
    pub fn up(&self) -> bool {
        self.up
    }

    /// Whether its driver holds nothing the link refused: everything the node handed
    /// out is on the wire.
    pub fn link_idle(&self) -> bool {
        !self.driver.has_pending()
    }
}

/// What the chain observed.
#[derive(Debug, Default, Clone)]
pub struct ChainTrace {
    /// Notices of every member.
    pub notices: Vec<(Nanos, NodeId, Notice)>,
    /// Errors every member's driver reported.
    pub errors: Vec<(Nanos, NodeId, String)>,
    /// Most members live at once, over the run (split brain if above 1).
    pub max_live: usize,
}

/// See the module docs.
pub struct ChainSim {
    cfg: PairConfig,
    clone_cfg: CloneConfig,
    image: Machine,
    members: Vec<Member>,
    wires: Vec<VirtualWire>,
    arbiter: InProcessArbiter,
    disk: Disk,
    sink: OutputSink,
    next_generation: u64,
    now: Nanos,
    trace: ChainTrace,
}

impl ChainSim {
    /// A pair (members 1 and 2) of `machine`, as [`crate::PairSim`] starts one, on a
    /// shared disk of [`PairConfig::disk_size`] bytes.
    pub fn pair(cfg: PairConfig, clone_cfg: CloneConfig, machine: Machine) -> ChainSim {
        let mut sim = Self::empty(cfg, clone_cfg, machine);
        let wire = sim.new_wire();
        let p = sim.make_member(true, |c, m, w| Node::primary(c, m, w, 0));
        let b = sim.make_member(false, |c, m, w| Node::backup(c, m, w, 0));
        sim.members[p].link = Some((wire, End::Primary));
        sim.members[b].link = Some((wire, End::Backup));
        sim
    }

    /// A machine alone (member 1), unprotected until a clone gives it a backup.
    pub fn alone(cfg: PairConfig, clone_cfg: CloneConfig, machine: Machine) -> ChainSim {
        let mut sim = Self::empty(cfg, clone_cfg, machine);
        sim.make_member(true, |c, m, w| Node::unprotected(c, m, w, 0));
        sim
    }

    fn empty(cfg: PairConfig, clone_cfg: CloneConfig, machine: Machine) -> ChainSim {
        ChainSim {
            next_generation: cfg.engine.pair.generation + 1,
            disk: Disk::new(cfg.disk_size),
            cfg,
            clone_cfg,
            image: machine,
            members: Vec::new(),
            wires: Vec::new(),
            arbiter: InProcessArbiter::new(),
            sink: OutputSink::new(),
            now: 0,
            trace: ChainTrace::default(),
        }
    }

    fn new_wire(&mut self) -> usize {
        let n = self.wires.len() as u64;
        self.wires.push(VirtualWire::new(WireConfig {
            latency: self.cfg.link_latency,
            jitter: self.cfg.link_jitter,
            capacity: self.cfg.link_capacity,
            seed: self
                .cfg
                .seed
                .wrapping_add(n.wrapping_mul(0x9e37_79b9_7f4a_7c15)),
        }));
        self.wires.len() - 1
    }

    fn make_member(
        &mut self,
        live: bool,
        build: impl FnOnce(ft_core::Config, Machine, SimWorld) -> Node<Machine, SimWorld>,
    ) -> usize {
        let i = self.members.len();
        let id = NodeId(i as u64 + 1);
        let name = NAMES[i];
        let mut engine = self.cfg.engine.clone();
        engine.node = id;
        let mut wcfg = self.cfg.world.clone();
        wcfg.seed = self
            .cfg
            .world
            .seed
            .wrapping_add((i as u64).wrapping_mul(0x9e37_79b9));
        let world = SimWorld::new(name, wcfg, self.disk.clone(), self.sink.clone(), live);
        let node = build(engine, self.image.clone(), world);
        self.members.push(Member {
            id,
            name,
            node,
            driver: Driver::new(DriverConfig::default()),
            arbiter: Delayed::new(self.arbiter.clone(), self.cfg.arbiter_latency),
            up: true,
            link: None,
        });
        i
    }

    fn index(&self, id: NodeId) -> Result<usize, ChainError> {
        let i = (id.0 as usize)
            .checked_sub(1)
            .filter(|&i| i < self.members.len())
            .ok_or(ChainError::UnknownMember(id))?;
        Ok(i)
    }

    /// Virtual time now.
    pub fn now(&self) -> Nanos {
        self.now
    }

    /// The configuration.
    pub fn config(&self) -> &PairConfig {
        &self.cfg
    }

    /// Every member so far, in order of creation (member `i` has id `i + 1`).
    pub fn members(&self) -> &[Member] {
        &self.members
    }

    /// A member.
    pub fn member(&self, id: NodeId) -> Option<&Member> {
        self.index(id).ok().map(|i| &self.members[i])
    }

    /// The shared output sink (the outside world).
    pub fn sink(&self) -> &OutputSink {
        &self.sink
    }

    /// The shared disk.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    /// The trace so far.
    pub fn trace(&self) -> &ChainTrace {
        &self.trace
    }

    /// The arbiter.
    pub fn arbiter(&self) -> &InProcessArbiter {
        &self.arbiter
    }

    /// Members that are up and live.
    pub fn live_members(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.up && m.node.is_live())
            .map(|m| m.id)
            .collect()
    }

    /// The member that serves clients now: up, and live or recording.
    pub fn serving(&self) -> Option<NodeId> {
        self.members
            .iter()
            .filter(|m| m.up && matches!(m.node.phase(), Phase::Live | Phase::Recording))
            .map(|m| m.id)
            .next_back()
    }

    /// Members that are up and not halted.
    pub fn running(&self) -> Vec<NodeId> {
        self.members
            .iter()
            .filter(|m| m.up && !m.node.is_halted())
            .map(|m| m.id)
            .collect()
    }

    /// Kill a member now: it executes and sends nothing more; its pending arbiter
    /// call is never answered. Frames already on its link still arrive.
    ///
    /// # Errors
    ///
    /// [`ChainError::UnknownMember`].
    pub fn crash(&mut self, id: NodeId) -> Result<(), ChainError> {
        let i = self.index(id)?;
        let m = &mut self.members[i];
        m.up = false;
        m.arbiter.clear();
        Ok(())
    }

    /// Start a live clone from member `from` (which must be up and live) into a new
    /// member, over a new link, for the next generation. Returns the new member's id.
    ///
    /// # Errors
    ///
    /// An unknown or crashed member, a full chain, or the engine's refusal (the member
    /// is not live, already clones, its guest ended).
    pub fn start_clone(&mut self, from: NodeId) -> Result<NodeId, ChainError> {
        let image = self.image.clone();
        self.start_clone_into(from, image)
    }

    /// [`ChainSim::start_clone`] into a given machine (its memory is overwritten; a
    /// machine of another layout or configuration is refused by the clone protocol).
    ///
    /// # Errors
    ///
    /// As [`ChainSim::start_clone`].
    pub fn start_clone_into(
        &mut self,
        from: NodeId,
        machine: Machine,
    ) -> Result<NodeId, ChainError> {
        let s = self.index(from)?;
        if !self.members[s].up {
            return Err(ChainError::Down(from));
        }
        if self.members.len() >= MAX_MEMBERS {
            return Err(ChainError::Full);
        }
        let vm = self.members[s].node.config().pair.vm;
        let pair = PairId {
            vm,
            generation: self
                .next_generation
                .max(self.members[s].node.config().pair.generation + 1),
        };
        let now = self.now;
        self.members[s]
            .node
            .start_clone(pair, self.clone_cfg.clone(), now)?;
        self.next_generation = pair.generation + 1;
        let wire = self.new_wire();
        let t = self.make_member(false, |c, _, w| Node::clone_target(c, machine, w, now));
        self.members[s].link = Some((wire, End::Primary));
        self.members[s].driver = Driver::new(DriverConfig::default());
        self.members[t].link = Some((wire, End::Backup));
        Ok(self.members[t].id)
    }

    /// A packet from a client reaches the serving member, `delay` from now (lost if
    /// none serves).
    pub fn send_packet(&mut self, delay: Nanos, data: Bytes) {
        let at = self.now + delay;
        if let Some(id) = self.serving() {
            if let Ok(i) = self.index(id) {
                self.members[i].node.world_mut().deliver_packet(at, data);
            }
        }
    }

    /// Advance one tick: turn every member that is up, in order of creation.
    pub fn tick(&mut self) {
        self.now += self.cfg.tick;
        let now = self.now;
        for m in &mut self.members {
            if !m.up {
                continue;
            }
            match m.link {
                Some((w, end)) => {
                    let wire = &mut self.wires[w];
                    match end {
                        End::Primary => m.driver.turn(
                            &mut m.node,
                            &now,
                            &mut wire.primary_end(now),
                            &mut m.arbiter,
                        ),
                        End::Backup => m.driver.turn(
                            &mut m.node,
                            &now,
                            &mut wire.backup_end(now),
                            &mut m.arbiter,
                        ),
                    };
                }
                None => {
                    m.driver
                        .turn(&mut m.node, &now, &mut NoLink, &mut m.arbiter);
                }
            }
            for e in m.driver.take_errors() {
                let text = match e {
                    DriverError::Engine(e) => e.to_string(),
                    DriverError::Channel(e) => e.to_string(),
                    other => other.to_string(),
                };
                self.trace.errors.push((now, m.id, text));
            }
            while let Some((t, n)) = m.node.poll_notice() {
                self.trace.notices.push((t, m.id, n));
            }
        }
        let live = self.live_members().len();
        self.trace.max_live = self.trace.max_live.max(live);
    }

    /// Tick until `done` holds or `max_ticks` passed; whether `done` held.
    pub fn run_until(&mut self, max_ticks: u64, mut done: impl FnMut(&ChainSim) -> bool) -> bool {
        for _ in 0..max_ticks {
            if done(self) {
                return true;
            }
            self.tick();
        }
        done(self)
    }
}
