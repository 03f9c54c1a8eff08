//! What a long-running `fedcrm` process (a node or the coordinator) shares: stopping
//! on SIGINT/SIGTERM, and error messages that print each cause once.

use anyhow::{Context, Result};
use tokio::signal::unix::{Signal, SignalKind, signal};

/// SIGINT and SIGTERM, installed before the process starts serving so that neither
/// kills it before it can end its round and seal its audit log.
#[derive(Debug)]
pub struct StopSignal {
    interrupt: Signal,
    terminate: Signal,
}

/// Exit status after a second stop signal (128 + SIGINT, as shells report it).
const FORCED_EXIT: i32 = 130;

impl StopSignal {
    pub fn install() -> Result<Self> {
        Ok(Self {
            interrupt: signal(SignalKind::interrupt()).context("installing the SIGINT handler")?,
            terminate: signal(SignalKind::terminate()).context("installing the SIGTERM handler")?,
        })
    }

    /// Wait for the first SIGINT or SIGTERM and name it. A second one afterwards
    /// ends the process at once (everything already logged is fsynced; only the
    /// final seal is skipped, and `audit verify` still accepts the log).
    pub async fn first(mut self) -> &'static str {
        let name = self.next().await;
        tokio::spawn(async move {
            let again = self.next().await;
            eprintln!("{again} received again: exiting now, without waiting for the shutdown to finish");
            std::process::exit(FORCED_EXIT);
        });
        name
    }

    async fn next(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
        }
    }
}

/// An error and its causes, each printed once: a cause whose text the message
/// before it already holds (an OS error quoted by its wrapper) is left out.
pub fn causes(e: &anyhow::Error) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.last().is_some_and(|prev| prev.contains(&text)) {
            continue;
        }
        out.push(text);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_quoted_by_its_wrapper_is_printed_once() {
        // A wrapper that quotes its source in its message, as many error types do.
        let io = std::io::Error::from_raw_os_error(2);
        let quoted = format!("cannot read data/purchases.csv: {io}");
        let e = anyhow::Error::new(io).context(quoted).context("loading node.toml's data");
        let c = causes(&e);
        assert_eq!(c.len(), 2, "{c:?}");
        assert_eq!(c[0], "loading node.toml's data");
        assert!(c[1].starts_with("cannot read data/purchases.csv: No such file"), "{c:?}");
        assert_eq!(c.join(": ").matches("os error 2").count(), 1);
    }
}
