//! Unpacking progress on a terminal: one line, redrawn in place; nothing in a pipe.

use std::io::Write;
use std::time::{Duration, Instant};

use moat_images::{Digest, Progress};

use crate::units::human;

/// Redraws at most this often, so a fast unpack does not spend its time printing.
const REDRAW: Duration = Duration::from_millis(100);

/// Draws `unpacking layer 2/5 (sha256:ab12…)  12.0 MiB / 80.0 MiB` on stderr.
pub struct TerminalProgress {
    enabled: bool,
    layer: String,
    last_draw: Option<Instant>,
    drew: bool,
}

impl TerminalProgress {
    /// Draws only when `enabled` (stderr is a terminal).
    pub fn new(enabled: bool) -> Self {
        Self {
            enabled,
            layer: String::new(),
            last_draw: None,
            drew: false,
        }
    }

    /// Ends the progress line.
    pub fn finish(&mut self) {
        if self.drew {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
        }
    }

    fn draw(&mut self, line: &str, force: bool) {
        if !self.enabled {
            return;
        }
        let now = Instant::now();
        if !force && self.last_draw.is_some_and(|t| now - t < REDRAW) {
            return;
        }
        self.last_draw = Some(now);
        self.drew = true;
        eprint!("\r\x1b[2Kmoat: {line}");
        let _ = std::io::stderr().flush();
    }
}

impl Progress for TerminalProgress {
    fn layer_started(&mut self, index: usize, count: usize, digest: &Digest, _size: u64) {
        self.layer = format!("unpacking layer {}/{count} ({})", index + 1, digest.short());
        let line = self.layer.clone();
        self.draw(&line, true);
    }

    fn bytes_read(&mut self, done: u64, total: u64) {
        let line = format!("{}  {} / {}", self.layer, human(done), human(total));
        self.draw(&line, false);
    }
}
