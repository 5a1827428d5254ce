//! The log channel between the two processes: the one place where the link is made.
//!
//! It is [`ft_transport::tcp`]: the primary listens on `--listen` and waits for its
//! backup; the backup connects to `--peer`. Both hold the pre-shared key from
//! `--key-file`; a peer without it, or of another pair or generation, is refused. A
//! lost connection is replaced and resumed without losing or duplicating records (the
//! link's own lines, `tracing` events of target `ft_transport::tcp` that the binary
//! prints on stderr, report refusals and reconnects).

use std::time::Duration;

use ft_core::{NodeId, PairId};
use ft_transport::tcp::{PreSharedKey, PrimaryListener, TcpConfig, TcpError, TcpHandle, TcpLink};
use ft_transport::FrameLink;

use crate::progress::Log;

/// Errors of making the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The TCP channel failed (key file, bind, connect, handshake).
    #[error("log channel: {0}")]
    Tcp(#[from] TcpError),
    /// The primary stopped waiting for its backup: another node went live in its
    /// generation meanwhile.
    #[error("stopped waiting for the backup: {0}")]
    Superseded(String),
}

/// Result alias of this module.
pub type Result<T, E = LinkError> = std::result::Result<T, E>;

/// The link as the runtime uses it.
pub type Link = Box<dyn FrameLink + Send>;

/// What both ends need to make the link.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// The protected pair (the link refuses a peer of another pair).
    pub pair: PairId,
    /// This side's node id (the link refuses a peer with the same one).
    pub node: NodeId,
    /// The digest of the guest's initial state (the link refuses a peer that starts
    /// from another).
    pub image: u64,
    /// The pre-shared key's file.
    pub key_file: std::path::PathBuf,
    /// How long the backup keeps trying to reach the primary at start.
    pub connect_timeout: Duration,
}

/// An open link, and a handle on its counters.
pub struct Opened {
    /// The link.
    pub link: Link,
    /// Its counters and state, for progress lines.
    pub handle: TcpHandle,
}

fn config(opts: &LinkOptions) -> Result<TcpConfig> {
    let key = PreSharedKey::from_file(&opts.key_file)?;
    Ok(TcpConfig {
        image: opts.image,
        ..TcpConfig::new(key, opts.pair, opts.node)
    })
}

/// Primary: listen on `addr` and wait for the backup to connect and authenticate.
pub fn open_primary(addr: &str, opts: &LinkOptions, log: &Log) -> Result<Opened> {
    accept(listen(addr, opts)?, log)
}

/// Primary: bind `addr` for the backup's connection ([`accept`] waits for it).
pub fn listen(addr: &str, opts: &LinkOptions) -> Result<PrimaryListener> {
    Ok(PrimaryListener::bind(addr, config(opts)?)?)
}

/// Primary: wait on `listener` for the backup to connect and authenticate.
pub fn accept(listener: PrimaryListener, log: &Log) -> Result<Opened> {
    accept_watching(listener, log, Duration::from_secs(1), || None)
}

/// Primary: as [`open_primary`], asking `superseded` every `every` while it waits; when
/// that answers a reason, stop waiting with [`LinkError::Superseded`].
pub fn open_primary_watching(
    addr: &str,
    opts: &LinkOptions,
    log: &Log,
    every: Duration,
    superseded: impl FnMut() -> Option<String>,
) -> Result<Opened> {
    accept_watching(listen(addr, opts)?, log, every, superseded)
}

/// Primary: wait on `listener` (from [`listen`]) for the backup to connect and
/// authenticate, asking `superseded` every `every` while it waits; when that answers
/// a reason, stop waiting with [`LinkError::Superseded`].
pub fn accept_watching(
    mut listener: PrimaryListener,
    log: &Log,
    every: Duration,
    mut superseded: impl FnMut() -> Option<String>,
) -> Result<Opened> {
    log.line(format_args!(
        "log channel: waiting for the backup on {}",
        listener.local_addr()
    ));
    let link = loop {
        match listener.accept(Some(every)) {
            Ok(link) => break link,
            Err(TcpError::Timeout(_)) => {
                if let Some(why) = superseded() {
                    return Err(LinkError::Superseded(why));
                }
            }
            Err(e) => return Err(e.into()),
        }
    };
    let handle = link.handle();
    log.line(format_args!(
        "log channel: backup connected from {} and authenticated",
        handle
            .peer_addr()
            .map_or_else(|| "?".to_string(), |a| a.to_string())
    ));
    Ok(Opened {
        link: Box::new(link),
        handle,
    })
}

/// Backup: connect to the primary at `addr`, retrying until `opts.connect_timeout`.
pub fn open_backup(addr: &str, opts: &LinkOptions, log: &Log) -> Result<Opened> {
    let link = TcpLink::connect(addr, config(opts)?, opts.connect_timeout)?;
    let handle = link.handle();
    log.line(format_args!(
        "log channel: connected to the primary at {addr} and authenticated"
    ));
    Ok(Opened {
        link: Box::new(link),
        handle,
    })
}

/// A node that starts alone: check now what the first clone offer will need, the key
/// file and the `addr` to listen on, so that a mistake is reported at startup rather
/// than when a backup would join. The address is bound and released at once.
pub fn check_listen(addr: &str, opts: &LinkOptions) -> Result<()> {
    drop(listen(addr, opts)?);
    Ok(())
}
