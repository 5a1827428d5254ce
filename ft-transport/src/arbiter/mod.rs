//! Arbiters for pairs whose sides live in different processes or on different hosts:
//! the split-brain tie-breaker ([`ft_core::Arbiter`]) on storage or a service both
//! sides reach.
//!
//! * [`FileArbiter`]: a claim file per pair generation in a directory both hosts
//!   mount (the analogue of VMware FT's test-and-set on the shared VMFS disk);
//! * [`EtcdArbiter`]: a compare-and-swap transaction on an etcd key per pair
//!   generation, through etcd's v3 HTTP JSON gateway.
//!
//! Both answer [`ft_core::Decision::Won`] to the first claimant of a
//! [`ft_core::PairId`] and to that same claimant again (a retry after a lost reply is
//! safe), [`ft_core::Decision::Lost`] with the holder to everyone else, and
//! [`ft_core::ArbiterError::Unreachable`] when the storage or service cannot be
//! reached: the engine then keeps waiting and retries with backoff, and never goes
//! live on its own.
//!
//! [`parse_spec`] turns a command-line spec (`file:PATH`, `etcd:URL[,URL...]`) into
//! one of them.
//!
//! ```
//! use ft_core::{Arbiter, Decision, NodeId, PairId};
//! use ft_transport::arbiter::FileArbiter;
//! let dir = std::env::temp_dir().join(format!("ft-arbiter-doc-{}", std::process::id()));
//! std::fs::create_dir_all(&dir).unwrap();
//! let arb = FileArbiter::new(&dir);
//! let pair = PairId { vm: 7, generation: 1 };
//! assert!(matches!(arb.test_and_set(pair, NodeId(1)), Ok(Decision::Won { .. })));
//! assert_eq!(arb.test_and_set(pair, NodeId(2)), Ok(Decision::Lost { holder: NodeId(1) }));
//! std::fs::remove_dir_all(&dir).unwrap();
//! ```

pub mod etcd;
pub mod file;

use std::sync::Arc;
use std::time::Duration;

use ft_core::Arbiter;

pub use etcd::EtcdArbiter;
pub use file::{Claim, FileArbiter};

/// Errors of [`parse_spec`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The spec names no known arbiter kind.
    #[error("unknown arbiter spec {0:?}: expected file:PATH or etcd:http://HOST:PORT[,...]")]
    Unknown(String),
    /// The etcd endpoints do not parse.
    #[error("etcd arbiter: {0}")]
    Etcd(#[from] etcd::EtcdError),
}

/// Result alias of this module.
pub type Result<T, E = SpecError> = std::result::Result<T, E>;

/// Build an arbiter from a spec: `file:PATH` (a directory on shared storage) or
/// `etcd:URL[,URL...]` (etcd client URLs, tried in order). `timeout` bounds one etcd
/// request.
pub fn parse_spec(spec: &str, timeout: Duration) -> Result<Arc<dyn Arbiter>> {
    if let Some(path) = spec.strip_prefix("file:") {
        if path.is_empty() {
            return Err(SpecError::Unknown(spec.to_string()));
        }
        return Ok(Arc::new(FileArbiter::new(path)));
    }
    if let Some(etcd) = parse_etcd_spec(spec, timeout) {
        return Ok(Arc::new(etcd?));
    }
    Err(SpecError::Unknown(spec.to_string()))
}

/// The etcd arbiter of an `etcd:URL[,URL...]` spec, for what only etcd offers
/// (standbys, leases); `None` for a spec of another kind.
pub fn parse_etcd_spec(spec: &str, timeout: Duration) -> Option<Result<EtcdArbiter>> {
    let urls = spec.strip_prefix("etcd:")?;
    let endpoints: Vec<&str> = urls.split(',').filter(|u| !u.is_empty()).collect();
    Some(EtcdArbiter::new(&endpoints, timeout).map_err(SpecError::from))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs_parse() {
        let t = Duration::from_millis(100);
        assert!(parse_spec("file:/tmp/x", t).is_ok());
        assert!(parse_spec("etcd:http://127.0.0.1:2379", t).is_ok());
        assert!(parse_spec("etcd:http://a:1,http://b:2", t).is_ok());
        assert!(matches!(parse_spec("file:", t), Err(SpecError::Unknown(_))));
        assert!(matches!(
            parse_spec("zookeeper:x", t),
            Err(SpecError::Unknown(_))
        ));
        assert!(matches!(parse_spec("etcd:", t), Err(SpecError::Etcd(_))));
        assert!(matches!(
            parse_spec("etcd:https://x:1", t),
            Err(SpecError::Etcd(_))
        ));
    }
}
