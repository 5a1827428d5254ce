//! Execution points: backend-defined, totally ordered positions in a guest's execution.

use serde::{Deserialize, Serialize};

/// A position in a guest's execution, defined by the backend and totally ordered.
///
/// Record and replay agree on a point when they agree on this value: the backup runs
/// its machine until [`crate::EventSource::point`] equals the point a record carries,
/// and only then applies the record.
///
/// * `ft-sim` uses `count` = retired instructions and leaves `sub` at 0.
/// * A backend without an exact instruction counter (KVM without a PMU) can use
///   `count` = deterministic exits and `sub` = a finer landmark inside that epoch.
///
/// Points compare lexicographically: `count` first, then `sub`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize,
)]
pub struct ExecPoint {
    /// The coarse counter (retired instructions, or deterministic exits).
    pub count: u64,
    /// A finer position inside `count`, for backends that need one.
    pub sub: u64,
}

impl ExecPoint {
    /// The start of every execution.
    pub const ZERO: ExecPoint = ExecPoint { count: 0, sub: 0 };

    /// A point with only the coarse counter set.
    pub const fn at(count: u64) -> ExecPoint {
        ExecPoint { count, sub: 0 }
    }

    /// This point advanced by `n` on the coarse counter (saturating), with `sub` reset.
    pub const fn plus(self, n: u64) -> ExecPoint {
        ExecPoint {
            count: self.count.saturating_add(n),
            sub: 0,
        }
    }
}

impl std::fmt::Display for ExecPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.sub == 0 {
            write!(f, "@{}", self.count)
        } else {
            write!(f, "@{}.{}", self.count, self.sub)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn orders_by_count_then_sub() {
        assert!(ExecPoint::at(2) > ExecPoint { count: 1, sub: 99 });
        assert!(ExecPoint { count: 1, sub: 2 } > ExecPoint { count: 1, sub: 1 });
        assert_eq!(ExecPoint::at(5).plus(3), ExecPoint::at(8));
        assert_eq!(ExecPoint::at(u64::MAX).plus(3), ExecPoint::at(u64::MAX));
        assert_eq!(ExecPoint { count: 3, sub: 1 }.to_string(), "@3.1");
    }
}
