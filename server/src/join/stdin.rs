//! Lines typed on stdin, each at most one frame long, read once for the whole run
//! (sessions come and go on reconnect; the reader stays).
//!
//! Read on a plain OS thread: a tokio stdin read would keep the runtime (and so the
//! process) alive at exit until Enter.

use atmosphere_shared::wire::MAX_FRAME_BYTES;
use std::io::{BufRead, Read};
use tokio::sync::mpsc;

/// The typed lines: `Ok(line)` without its line ending, or `Err(why)` for a line that
/// cannot be sent (too long, not UTF-8).
pub(super) struct StdinLines {
    rx: mpsc::Receiver<Result<String, String>>,
    open: bool,
}

impl StdinLines {
    /// Starts the reader thread.
    pub(super) fn new() -> StdinLines {
        StdinLines {
            rx: spawn_reader(),
            open: true,
        }
    }

    /// False once stdin has ended; [`StdinLines::next`] then never yields again.
    pub(super) fn is_open(&self) -> bool {
        self.open
    }

    /// The next line, or `None` at the end of input.
    pub(super) async fn next(&mut self) -> Option<Result<String, String>> {
        let line = self.rx.recv().await;
        if line.is_none() {
            self.open = false;
        }
        line
    }
}

fn spawn_reader() -> mpsc::Receiver<Result<String, String>> {
    let (tx, rx) = mpsc::channel(16);
    std::thread::spawn(move || {
        let stdin = std::io::stdin();
        let mut lock = stdin.lock();
        loop {
            let mut buf = Vec::new();
            // One byte over the limit tells "too long" from "exactly at the limit".
            let n = match (&mut lock)
                .take(MAX_FRAME_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(n) => n,
                Err(_) => return,
            };
            if n == 0 {
                return; // end of input
            }
            let item = if buf.last() != Some(&b'\n') && buf.len() > MAX_FRAME_BYTES {
                // Skip the rest of the overlong line so the next one starts clean.
                let mut rest = Vec::new();
                let _ = lock.read_until(b'\n', &mut rest);
                Err(format!("the line is longer than {MAX_FRAME_BYTES} bytes"))
            } else {
                while matches!(buf.last(), Some(b'\n' | b'\r')) {
                    buf.pop();
                }
                String::from_utf8(buf).map_err(|_| "the line is not valid UTF-8".to_string())
            };
            if tx.blocking_send(item).is_err() {
                return;
            }
        }
    });
    rx
}
