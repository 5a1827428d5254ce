//! etcd leases: keys that vanish when the process that holds them dies.
//!
//! A [`Lease`] is granted with a TTL (`POST /v3/lease/grant`) and kept alive from a
//! thread of its own (`POST /v3/lease/keepalive`, a third of the TTL apart). A key put
//! with the lease's id is deleted by etcd when the lease expires: when the process is
//! killed, or frozen (SIGSTOP) past the TTL. Dropping the `Lease` stops the thread and
//! revokes it (`POST /v3/lease/revoke`), so its keys go at once.
//!
//! A lease found expired by the keeper (the process was frozen, or etcd lost it) is
//! replaced by a fresh one, and the `renewed` callback given at grant is called with
//! the new id so the holder can put its keys again.
//!
//! etcd raises a TTL below its minimum (about 2 s with default settings) to it.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, Sender};
use serde_json::{json, Value};

use super::{bad, int, EtcdArbiter, EtcdError, Result};

/// Called by the keeper with the id of a lease that replaced an expired one.
pub type Renewed = Box<dyn Fn(i64) + Send>;

/// A granted etcd lease, kept alive until dropped. See the module docs.
#[derive(Debug)]
pub struct Lease {
    id: Arc<AtomicI64>,
    ttl: Duration,
    etcd: EtcdArbiter,
    stop: Option<Sender<()>>,
    keeper: Option<JoinHandle<()>>,
}

impl Lease {
    /// Grant a lease of `ttl` (whole seconds, at least 1) and keep it alive from a
    /// thread; `renewed` is called with the new id if the keeper ever has to replace
    /// an expired lease.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint grants it, or the keeper thread cannot start.
    pub fn grant(etcd: &EtcdArbiter, ttl: Duration, renewed: Renewed) -> Result<Lease> {
        let ttl = Duration::from_secs(ttl.as_secs().max(1));
        let id = Arc::new(AtomicI64::new(etcd.grant_lease(ttl)?));
        let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
        let period = ttl / 3;
        let (keeper_etcd, keeper_id) = (etcd.clone(), id.clone());
        let keeper = std::thread::Builder::new()
            .name("ft-etcd-lease".into())
            .spawn(move || loop {
                match stopped.recv_timeout(period) {
                    Err(RecvTimeoutError::Timeout) => {}
                    // The Lease was dropped.
                    Ok(()) | Err(RecvTimeoutError::Disconnected) => return,
                }
                let current = keeper_id.load(Ordering::SeqCst);
                // Unreachable: keep trying; etcd keeps the lease for its TTL.
                if let Ok(false) = keeper_etcd.keep_lease_alive(current) {
                    if let Ok(fresh) = keeper_etcd.grant_lease(ttl) {
                        keeper_id.store(fresh, Ordering::SeqCst);
                        renewed(fresh);
                    }
                }
            })
            .map_err(|e| EtcdError::Unreachable {
                endpoint: "(local)".into(),
                detail: format!("cannot start the lease keeper thread: {e}"),
            })?;
        Ok(Lease {
            id,
            ttl,
            etcd: etcd.clone(),
            stop: Some(stop),
            keeper: Some(keeper),
        })
    }

    /// The lease's id now (it changes when an expired lease is replaced).
    pub fn id(&self) -> i64 {
        self.id.load(Ordering::SeqCst)
    }

    /// The TTL granted.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(k) = self.keeper.take() {
            let _ = k.join();
        }
        // Best effort: an unreachable etcd lets the lease expire on its own.
        let _ = self.etcd.revoke_lease(self.id());
    }
}

impl EtcdArbiter {
    /// Grant a lease of `ttl` (whole seconds); its id.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint grants it.
    pub fn grant_lease(&self, ttl: Duration) -> Result<i64> {
        let body = json!({ "TTL": ttl.as_secs().max(1).to_string() });
        self.on_any_endpoint("/v3/lease/grant", &body, |endpoint, answer| {
            lease_id(answer.get("ID")).ok_or_else(|| bad(endpoint, "a lease grant without an ID"))
        })
    }

    /// Refresh lease `id`: `Ok(false)` if etcd no longer has it (it expired).
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint answers.
    pub fn keep_lease_alive(&self, id: i64) -> Result<bool> {
        let body = json!({ "ID": id.to_string() });
        self.on_any_endpoint("/v3/lease/keepalive", &body, |endpoint, answer| {
            let result = answer
                .get("result")
                .ok_or_else(|| bad(endpoint, "a keepalive answer without a result"))?;
            // An expired lease answers with no TTL (proto3 JSON omits the zero).
            Ok(int(result.get("TTL")).unwrap_or(0) > 0)
        })
    }

    /// Revoke lease `id`: the keys put with it are deleted at once.
    ///
    /// # Errors
    ///
    /// [`EtcdError`] when no endpoint answers, or etcd does not know the lease.
    pub fn revoke_lease(&self, id: i64) -> Result<()> {
        let body = json!({ "ID": id.to_string() });
        self.on_any_endpoint("/v3/lease/revoke", &body, |_, _| Ok(()))
    }
}

/// A lease id of the gateway's JSON (an int64 as a string, or a number).
fn lease_id(v: Option<&Value>) -> Option<i64> {
    match v? {
        Value::String(s) => s.parse().ok(),
        Value::Number(n) => n.as_i64(),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_ids_decode() {
        assert_eq!(
            lease_id(Some(&json!("7587899320015795719"))),
            Some(7587899320015795719)
        );
        assert_eq!(lease_id(Some(&json!(12))), Some(12));
        assert_eq!(lease_id(Some(&json!("x"))), None);
        assert_eq!(lease_id(None), None);
    }
}
