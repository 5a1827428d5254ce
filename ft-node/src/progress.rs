//! Progress lines a person can follow, and log channel wrappers that report traffic.
//!
//! Every line goes to standard error as
//!
//! ```text
//! [unix 1712345678.123456 +1.234s] backup: LIVE — ...
//! ```
//!
//! The Unix time (microseconds) lets lines of two processes on one host be put on one
//! timeline (the failover benchmark does); the offset is from the process's start.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ft_core::{Ack, ChannelError, LogChannel, LogReceiver, Record};
use ft_transport::{BackupEnd, FrameLink, PrimaryEnd};

/// Errors of this module: none of its own; channel errors pass through unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProgressError {
    /// A line could not be parsed by [`parse_line`]'s callers' expectations.
    #[error("not a progress line: {0:?}")]
    NotALine(String),
}

/// Result alias of this module.
pub type Result<T, E = ProgressError> = std::result::Result<T, E>;

/// Microseconds since the Unix epoch, now.
pub fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Prints progress lines for one side. Clones share the start time.
#[derive(Debug, Clone)]
pub struct Log {
    side: Arc<str>,
    start: Instant,
}

impl Log {
    /// A log for `side` (`primary`, `backup`, `client`), counting from now.
    pub fn new(side: &str) -> Log {
        Log {
            side: side.into(),
            start: Instant::now(),
        }
    }

    /// The side's name.
    pub fn side(&self) -> &str {
        &self.side
    }

    /// Print one line.
    pub fn line(&self, msg: impl Display) {
        let us = unix_micros();
        eprintln!(
            "[unix {}.{:06} +{:.3}s] {}: {msg}",
            us / 1_000_000,
            us % 1_000_000,
            self.start.elapsed().as_secs_f64(),
            self.side
        );
    }
}

/// A parsed progress line: Unix time in microseconds, side, message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Unix time in microseconds.
    pub unix_us: u64,
    /// The side that printed it.
    pub side: String,
    /// The message.
    pub msg: String,
}

/// Parse a line printed by [`Log::line`].
pub fn parse_line(line: &str) -> Result<Line> {
    let bad = || ProgressError::NotALine(line.to_string());
    let rest = line.strip_prefix("[unix ").ok_or_else(bad)?;
    let (stamp, rest) = rest.split_once(' ').ok_or_else(bad)?;
    let (secs, micros) = stamp.split_once('.').ok_or_else(bad)?;
    let secs: u64 = secs.parse().map_err(|_| bad())?;
    let micros: u64 = micros.parse().map_err(|_| bad())?;
    let (_, rest) = rest.split_once("] ").ok_or_else(bad)?;
    let (side, msg) = rest.split_once(": ").ok_or_else(bad)?;
    Ok(Line {
        unix_us: secs * 1_000_000 + micros,
        side: side.to_string(),
        msg: msg.to_string(),
    })
}

/// Counters a wrapper prints periodically.
#[derive(Debug)]
struct Ticker {
    log: Log,
    every: Duration,
    last: Instant,
    records: u64,
    batches: u64,
    last_seq: u64,
    acked: u64,
    replayed: u64,
    acks: u64,
    heard: bool,
}

impl Ticker {
    fn new(log: Log, every: Duration) -> Ticker {
        Ticker {
            log,
            every,
            last: Instant::now(),
            records: 0,
            batches: 0,
            last_seq: 0,
            acked: 0,
            replayed: 0,
            acks: 0,
            heard: false,
        }
    }

    fn due(&mut self) -> bool {
        if self.every.is_zero() || self.last.elapsed() < self.every {
            return false;
        }
        self.last = Instant::now();
        true
    }
}

/// The primary's log channel end, reporting: the first ack ("log channel up"), then
/// records shipped and acknowledged every period.
#[derive(Debug)]
pub struct PrimaryProgress<L> {
    end: PrimaryEnd<L>,
    t: Ticker,
}

impl<L: FrameLink> PrimaryProgress<L> {
    /// Wrap `end`; print every `every` (zero: never).
    pub fn new(end: PrimaryEnd<L>, log: Log, every: Duration) -> PrimaryProgress<L> {
        PrimaryProgress {
            end,
            t: Ticker::new(log, every),
        }
    }

    /// The wrapped end.
    pub fn end(&self) -> &PrimaryEnd<L> {
        &self.end
    }

    fn tick(&mut self) {
        if self.t.due() {
            self.t.log.line(format_args!(
                "shipped {} records in {} batches ({} KiB), acked through #{}, backup replayed through #{}",
                self.t.records,
                self.t.batches,
                self.end.bytes_sent() / 1024,
                self.t.acked,
                self.t.replayed
            ));
        }
    }
}

impl<L: FrameLink> LogChannel for PrimaryProgress<L> {
    fn send_records(&mut self, records: &[Record]) -> ft_core::log_channel::Result<()> {
        self.end.send_records(records)?;
        if let Some(last) = records.last() {
            self.t.records += records.len() as u64;
            self.t.batches += 1;
            self.t.last_seq = last.seq;
        }
        self.tick();
        Ok(())
    }

    fn try_recv_ack(&mut self) -> ft_core::log_channel::Result<Option<Ack>> {
        let ack = self.end.try_recv_ack();
        if let Ok(Some(a)) = &ack {
            if !self.t.heard {
                self.t.heard = true;
                self.t.log.line("log channel up: first ack from the backup");
            }
            self.t.acks += 1;
            self.t.acked = a.received;
            self.t.replayed = a.replayed;
        }
        if let Err(e) = &ack {
            if *e != ChannelError::Full {
                // The channel's errors name it ("log channel disconnected").
                self.t.log.line(format_args!("{e}"));
            }
        }
        self.tick();
        ack
    }
}

/// The backup's log channel end, reporting: the first records ("log channel up"),
/// then records received and replayed every period.
#[derive(Debug)]
pub struct BackupProgress<L> {
    end: BackupEnd<L>,
    t: Ticker,
}

impl<L: FrameLink> BackupProgress<L> {
    /// Wrap `end`; print every `every` (zero: never).
    pub fn new(end: BackupEnd<L>, log: Log, every: Duration) -> BackupProgress<L> {
        BackupProgress {
            end,
            t: Ticker::new(log, every),
        }
    }

    /// The wrapped end.
    pub fn end(&self) -> &BackupEnd<L> {
        &self.end
    }

    fn tick(&mut self) {
        if self.t.due() {
            self.t.log.line(format_args!(
                "received {} records in {} batches (through #{}), replayed through #{}, {} acks sent",
                self.t.records, self.t.batches, self.t.last_seq, self.t.replayed, self.t.acks
            ));
        }
    }
}

impl<L: FrameLink> LogReceiver for BackupProgress<L> {
    fn try_recv_records(&mut self) -> ft_core::log_channel::Result<Option<Vec<Record>>> {
        let got = self.end.try_recv_records();
        match &got {
            Ok(Some(batch)) => {
                if !self.t.heard {
                    self.t.heard = true;
                    self.t
                        .log
                        .line("log channel up: first records from the primary");
                }
                if let Some(last) = batch.last() {
                    self.t.records += batch.len() as u64;
                    self.t.batches += 1;
                    self.t.last_seq = self.t.last_seq.max(last.seq);
                }
            }
            Ok(None) => {}
            Err(e) => self.t.log.line(format_args!("{e}")),
        }
        self.tick();
        got
    }

    fn send_ack(&mut self, ack: Ack) -> ft_core::log_channel::Result<()> {
        self.end.send_ack(ack)?;
        self.t.acks += 1;
        self.t.acked = ack.received;
        self.t.replayed = ack.replayed;
        self.tick();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_parse() {
        let l = parse_line("[unix 1712345678.000123 +1.234s] backup: LIVE — ok: yes").unwrap();
        assert_eq!(l.unix_us, 1_712_345_678_000_123);
        assert_eq!(l.side, "backup");
        assert_eq!(l.msg, "LIVE — ok: yes");
        assert!(parse_line("garbage").is_err());
        assert!(parse_line("[unix x.y +1s] a: b").is_err());
    }
}
