//! Soak machinery shared by every property suite (ft-sim's `prop_*`, the ISA and loader
//! properties, ft-transport's fault suite): seeds from a fixed base that
//! `FT_SEED_BASE` moves and `FT_SOAK` / `FT_SOAK_SECS` widen, `FT_SEED` to rerun one
//! case, and on failure the case's seed with the command that reruns it.
//!
//! It depends on `rand`, `rand_chacha` and `proptest` only, so other crates' tests
//! include it by path.
#![allow(dead_code)]

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A `u64` from the environment, decimal or `0x` hex.
pub fn env_u64(name: &str) -> Option<u64> {
    let s = std::env::var(name).ok()?;
    let s = s.trim();
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    match v {
        Ok(v) => Some(v),
        Err(e) => panic!("{name}={s:?} is not a decimal or 0x-hex u64: {e}"),
    }
}

/// The seed given in `FT_SEED` (decimal or `0x` hex), if any.
pub fn env_seed() -> Option<u64> {
    env_u64("FT_SEED")
}

/// `FT_SOAK`: how many times the fixed case counts to run (1 without it).
pub fn soak() -> u64 {
    env_u64("FT_SOAK").unwrap_or(1).max(1)
}

/// `FT_SEED_BASE`: moves every suite's seed base (0 without it: the fixed seeds).
pub fn seed_base() -> u64 {
    env_u64("FT_SEED_BASE").unwrap_or(0)
}

/// `FT_SOAK_SECS`: a time box per seeded test; it runs more cases, past its scaled
/// count, until this many seconds have passed.
pub fn soak_secs() -> Option<u64> {
    env_u64("FT_SOAK_SECS")
}

fn splitmix64(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// A suite's base, moved by `FT_SEED_BASE` (unchanged without it). The move is
/// mixed, so neighbouring bases of two suites never swap places.
pub fn moved_base(base: u64) -> u64 {
    match seed_base() {
        0 => base,
        b => base ^ splitmix64(b),
    }
}

fn test_name() -> String {
    std::thread::current()
        .name()
        .unwrap_or("<test name>")
        .to_string()
}

/// The command that reruns the current test with the given environment.
pub fn rerun_command(env: &str) -> String {
    format!(
        "{env} cargo test --release -p {} --test {} {} -- --exact --nocapture",
        env!("CARGO_PKG_NAME"),
        env!("CARGO_CRATE_NAME"),
        test_name()
    )
}

/// The case seeds of one seeded test: `n` x `FT_SOAK` of them (more under
/// `FT_SOAK_SECS`), drawn from `base` moved by `FT_SEED_BASE`, or just `FT_SEED` if
/// set. If the loop body panics, dropping the iterator prints the failing case's seed
/// and the command that reruns exactly that case.
pub struct Seeds {
    rng: ChaCha8Rng,
    min: u64,
    deadline: Option<std::time::Instant>,
    fixed: Option<u64>,
    yielded: u64,
    current: Option<u64>,
    base: u64,
}

impl Iterator for Seeds {
    type Item = u64;
    fn next(&mut self) -> Option<u64> {
        if let Some(s) = self.fixed {
            if self.yielded > 0 {
                return None;
            }
            self.yielded = 1;
            self.current = Some(s);
            return Some(s);
        }
        let more =
            self.yielded < self.min || self.deadline.is_some_and(|d| std::time::Instant::now() < d);
        if !more {
            self.current = None;
            return None;
        }
        let s: u64 = self.rng.gen();
        self.yielded += 1;
        self.current = Some(s);
        Some(s)
    }
}

impl Drop for Seeds {
    fn drop(&mut self) {
        if std::thread::panicking() {
            if let Some(s) = self.current {
                eprintln!(
                    "\n*** failing case: seed {s:#x} (case {} of base {:#x}, FT_SEED_BASE={:#x}, FT_SOAK={})\n*** rerun it: {}\n",
                    self.yielded,
                    self.base,
                    seed_base(),
                    soak(),
                    rerun_command(&format!("FT_SEED={s:#x}"))
                );
            }
        } else if self.fixed.is_none()
            && (soak() > 1 || self.deadline.is_some() || seed_base() != 0)
        {
            eprintln!(
                "soak: {}::{}: {} cases passed (base {:#x})",
                env!("CARGO_CRATE_NAME"),
                test_name(),
                self.yielded,
                self.base
            );
        }
    }
}

/// The seeds of one seeded test; see [`Seeds`].
pub fn seeds(base: u64, n: u64) -> Seeds {
    let moved = moved_base(base);
    Seeds {
        rng: ChaCha8Rng::seed_from_u64(moved),
        min: n.saturating_mul(soak()),
        deadline: soak_secs()
            .map(|s| std::time::Instant::now() + std::time::Duration::from_secs(s)),
        fixed: env_seed(),
        yielded: 0,
        current: None,
        base: moved,
    }
}

/// A fixed list of `n` x `FT_SOAK` seeds from `base` moved by `FT_SEED_BASE` (no time
/// box, no `FT_SEED`): reference programs that several cases share.
pub fn seed_list(base: u64, n: u64) -> Vec<u64> {
    let mut rng = ChaCha8Rng::seed_from_u64(moved_base(base));
    (0..n.saturating_mul(soak())).map(|_| rng.gen()).collect()
}

/// A proptest configuration for `proptest!` blocks: `cases` x `FT_SOAK` cases from
/// `seed` moved by `FT_SEED_BASE`. Proptest prints the minimal failing input; the
/// same `FT_SEED_BASE` and `FT_SOAK` rerun the same cases.
pub fn soaked_config(cases: u32, seed: u64) -> proptest::test_runner::Config {
    use proptest::test_runner::{Config, RngAlgorithm, RngSeed};
    Config {
        cases: u32::try_from(u64::from(cases).saturating_mul(soak())).unwrap_or(u32::MAX),
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(moved_base(seed)),
        failure_persistence: None,
        ..Config::default()
    }
}

/// Run a proptest property: `cases` x `FT_SOAK` cases from `seed` moved by
/// `FT_SEED_BASE`. A failure panics with proptest's minimal failing input and the
/// command that reruns the test with the same cases.
pub fn check_prop<S>(
    cases: u32,
    seed: u64,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), proptest::test_runner::TestCaseError>,
) where
    S: proptest::strategy::Strategy,
    S::Value: std::fmt::Debug,
{
    use proptest::test_runner::{Config, RngAlgorithm, RngSeed, TestRunner};
    let cases = u32::try_from(u64::from(cases).saturating_mul(soak())).unwrap_or(u32::MAX);
    let moved = moved_base(seed);
    let mut runner = TestRunner::new(Config {
        cases,
        rng_algorithm: RngAlgorithm::ChaCha,
        rng_seed: RngSeed::Fixed(moved),
        failure_persistence: None,
        ..Config::default()
    });
    match runner.run(&strategy, test) {
        Ok(()) => {
            if soak() > 1 || seed_base() != 0 {
                eprintln!(
                    "soak: {}::{}: {cases} cases passed (proptest seed {moved:#x})",
                    env!("CARGO_CRATE_NAME"),
                    test_name()
                );
            }
        }
        Err(e) => panic!(
            "{e}\n*** proptest seed {moved:#x}, FT_SEED_BASE={:#x}, FT_SOAK={}\n*** rerun it: {}",
            seed_base(),
            soak(),
            rerun_command(&format!(
                "FT_SEED_BASE={:#x} FT_SOAK={}",
                seed_base(),
                soak()
            ))
        ),
    }
}
