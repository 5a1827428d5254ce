//! Failure detection: heartbeats both ways, any traffic as proof of life, and a
//! timeout that declares the peer dead.

use crate::record::Nanos;

/// Declares the peer dead when nothing was heard from it for `timeout`.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    timeout: Nanos,
    last_heard: Nanos,
}

impl FailureDetector {
    /// A detector that starts counting at `now`.
    pub fn new(timeout: Nanos, now: Nanos) -> FailureDetector {
        FailureDetector {
            timeout,
            last_heard: now,
        }
    }

    /// Something arrived from the peer (a record, an ack, a heartbeat).
    pub fn heard(&mut self, now: Nanos) {
        self.last_heard = self.last_heard.max(now);
    }

    /// When the peer was last heard from.
    pub fn last_heard(&self) -> Nanos {
        self.last_heard
    }

    /// Whether the peer is declared dead at `now`.
    pub fn suspects(&self, now: Nanos) -> bool {
        now.saturating_sub(self.last_heard) > self.timeout
    }

    /// The time at which the peer will be declared dead if nothing arrives.
    pub fn deadline(&self) -> Nanos {
        self.last_heard
            .saturating_add(self.timeout)
            .saturating_add(1)
    }
}

/// Decides when a periodic message (a heartbeat, an idle ack) is due.
#[derive(Debug, Clone)]
pub struct Heartbeat {
    interval: Nanos,
    last_sent: Nanos,
}

impl Heartbeat {
    /// A heartbeat that counts `now` as a send.
    pub fn new(interval: Nanos, now: Nanos) -> Heartbeat {
        Heartbeat {
            interval,
            last_sent: now,
        }
    }

    /// Something was sent to the peer at `now`; it counts as a heartbeat.
    pub fn sent(&mut self, now: Nanos) {
        self.last_sent = self.last_sent.max(now);
    }

    /// Whether a heartbeat is due at `now`.
    pub fn due(&self, now: Nanos) -> bool {
        now.saturating_sub(self.last_sent) >= self.interval
    }

    /// When the next heartbeat is due.
    pub fn deadline(&self) -> Nanos {
        self.last_sent.saturating_add(self.interval)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suspects_only_after_silence_longer_than_timeout() {
        let mut d = FailureDetector::new(100, 0);
        assert!(!d.suspects(100));
        assert!(d.suspects(101));
        d.heard(90);
        assert!(!d.suspects(150));
        assert!(d.suspects(191));
        d.heard(50); // late news never moves the clock back
        assert_eq!(d.last_heard(), 90);
        assert_eq!(d.deadline(), 191);
    }

    #[test]
    fn heartbeat_due_after_interval() {
        let mut h = Heartbeat::new(10, 0);
        assert!(!h.due(9));
        assert!(h.due(10));
        h.sent(10);
        assert!(!h.due(19));
        assert_eq!(h.deadline(), 20);
    }
}
