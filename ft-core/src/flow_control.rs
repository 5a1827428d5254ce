//! Log channel flow control: the primary is slowed down when the backup's replay lags
//! behind by more than a configured amount of time.

use std::collections::VecDeque;

use crate::record::Nanos;

/// How much the primary may execute right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Throttle {
    /// Run at full speed.
    Full,
    /// Run with the slice divided by this factor.
    Slowed(u64),
    /// Do not run until the backup catches up.
    Paused,
}

/// Measures the backup's replay lag: the age of the oldest record the backup has not
/// replayed yet.
#[derive(Debug, Clone)]
pub struct LagMonitor {
    max_lag: Nanos,
    unreplayed: VecDeque<(u64, Nanos)>,
    paused: bool,
}

impl LagMonitor {
    /// A monitor that pauses the primary beyond `max_lag`.
    pub fn new(max_lag: Nanos) -> LagMonitor {
        LagMonitor {
            max_lag,
            unreplayed: VecDeque::new(),
            paused: false,
        }
    }

    /// A record was produced at `now`.
    pub fn produced(&mut self, seq: u64, now: Nanos) {
        self.unreplayed.push_back((seq, now));
    }

    /// The backup has replayed every record up to `seq`.
    pub fn replayed(&mut self, seq: u64) {
        while matches!(self.unreplayed.front(), Some((s, _)) if *s <= seq) {
            self.unreplayed.pop_front();
        }
    }

    /// Forget everything: there is no backup anymore.
    pub fn clear(&mut self) {
        self.unreplayed.clear();
        self.paused = false;
    }

    /// The backup's lag at `now`.
    pub fn lag(&self, now: Nanos) -> Nanos {
        self.unreplayed
            .front()
            .map_or(0, |(_, t)| now.saturating_sub(*t))
    }

    /// The throttle at `now`. Beyond `max_lag` the primary pauses, and stays paused
    /// until the lag is back under half of it; between a half and the whole of
    /// `max_lag` it runs slowed.
    pub fn throttle(&mut self, now: Nanos) -> Throttle {
        let lag = self.lag(now);
        if lag >= self.max_lag {
            self.paused = true;
        } else if lag < self.max_lag / 2 {
            self.paused = false;
        }
        if self.paused {
            Throttle::Paused
        } else if lag >= self.max_lag / 2 {
            Throttle::Slowed(8)
        } else {
            Throttle::Full
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttles_with_hysteresis() {
        let mut m = LagMonitor::new(100);
        m.produced(1, 0);
        m.produced(2, 40);
        assert_eq!(m.throttle(10), Throttle::Full);
        assert_eq!(m.throttle(60), Throttle::Slowed(8));
        assert_eq!(m.throttle(100), Throttle::Paused);
        m.replayed(1); // oldest unreplayed is now from t=40: lag 65
        assert_eq!(
            m.throttle(105),
            Throttle::Paused,
            "hysteresis keeps it paused"
        );
        m.replayed(2);
        assert_eq!(m.lag(105), 0);
        assert_eq!(m.throttle(105), Throttle::Full);
    }
}
