//! Host-to-agent commands on the serial console's input.
//!
//! One command per line, ASCII: `signal N`. The agent reads the console in raw mode with echo
//! off, so nothing the host sends shows up in the workload's output. Unknown lines are ignored:
//! the host may be newer than the agent.

/// Longest command line the agent buffers; a longer one is dropped whole.
pub const MAX_LINE: usize = 64;

/// A command the host sends to the agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// Deliver this signal to the workload.
    Signal(i32),
}

impl ConsoleCommand {
    /// The bytes the host writes, newline included.
    pub fn encode(self) -> Vec<u8> {
        match self {
            Self::Signal(signal) => format!("signal {signal}\n").into_bytes(),
        }
    }

    /// Parses one line (without its newline); `None` for anything else.
    pub fn decode(line: &[u8]) -> Option<Self> {
        let line = std::str::from_utf8(line).ok()?.trim();
        let signal = line.strip_prefix("signal ")?.parse().ok()?;
        (1..=64).contains(&signal).then_some(Self::Signal(signal))
    }
}

/// Splits console input into lines, bounded in memory whatever the input.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
    overflowed: bool,
}

impl LineReader {
    /// Feeds bytes; returns the commands completed by them.
    pub fn feed(&mut self, bytes: &[u8]) -> Vec<ConsoleCommand> {
        let mut commands = Vec::new();
        for &byte in bytes {
            if byte == b'\n' || byte == b'\r' {
                if !self.overflowed {
                    commands.extend(ConsoleCommand::decode(&self.line));
                }
                self.line.clear();
                self.overflowed = false;
            } else if self.line.len() < MAX_LINE {
                self.line.push(byte);
            } else {
                self.overflowed = true;
            }
        }
        commands
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        let bytes = ConsoleCommand::Signal(2).encode();
        let mut reader = LineReader::default();
        assert_eq!(reader.feed(&bytes), vec![ConsoleCommand::Signal(2)]);
    }

    #[test]
    fn lines_may_arrive_in_pieces() {
        let mut reader = LineReader::default();
        assert!(reader.feed(b"sig").is_empty());
        assert_eq!(
            reader.feed(b"nal 15\nsignal 9\n"),
            vec![ConsoleCommand::Signal(15), ConsoleCommand::Signal(9)]
        );
    }

    #[test]
    fn garbage_is_ignored_and_bounded() {
        let mut reader = LineReader::default();
        assert!(reader
            .feed(b"hello\nsignal 0\nsignal 65\nsignal -1\n")
            .is_empty());
        let long = vec![b'x'; 10_000];
        assert!(reader.feed(&long).is_empty());
        assert!(reader.line.len() <= MAX_LINE);
        // The overlong line is dropped whole, even if it ends like a command.
        assert!(reader.feed(b"signal 2\n").is_empty());
        assert_eq!(reader.feed(b"signal 2\n"), vec![ConsoleCommand::Signal(2)]);
    }
}
