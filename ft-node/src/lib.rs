//! # ft-node
//!
//! One side of a protected ft pair as an operating-system process, and a client of the
//! service it protects. The `ft-node` binary runs the sim service guest (or a guest
//! image) as the primary or the backup, over the TCP log channel, with a shared-file
//! or etcd arbiter; `ft-client` sends it requests and checks the answers.
//!
//! * [`node`]: flags, setup, run, exit codes;
//! * [`link`]: the log channel between the processes (the one place it is made);
//! * [`bridge`]: how external clients reach the guest's network device, and how a
//!   backup that went live serves them;
//! * [`wire`]: the client protocol;
//! * [`client`]: the client, with its exactly-once checks;
//! * [`progress`]: the progress lines and their parser;
//! * [`testkit`]: process helpers for the integration tests and the benchmark.
//!
//! ## Two processes, one service
//!
//! ```text
//! ft-node --role primary --listen 127.0.0.1:7100 --client-listen 127.0.0.1:7001 \
//!         --arbiter file:/mnt/shared/ft --key-file key
//! ft-node --role backup  --peer   127.0.0.1:7100 --client-listen 127.0.0.1:7002 \
//!         --arbiter file:/mnt/shared/ft --key-file key
//! ft-client --addr 127.0.0.1:7001 --addr 127.0.0.1:7002 --requests 500
//! ```
//!
//! Kill the primary (`kill -9`): the backup declares it dead, drains its log, wins the
//! arbiter, goes live and serves on its own client address; the client, which knows
//! both addresses, connects there and carries on.

pub mod bridge;
pub mod client;
pub mod link;
pub mod node;
pub mod progress;
pub mod testkit;
pub mod wire;
