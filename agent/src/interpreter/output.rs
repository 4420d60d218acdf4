//! Collects the interpreter's stdout/stderr (one pipe, so the two stay in order, as in a
//! terminal) on a reader thread that never stops draining, so a cell printing a gigabyte
//! neither blocks nor fills the host's memory: each cell keeps its first and last
//! [`KEEP_BYTES`] and counts the rest.
//!
//! The driver ends each cell's output with a marker (`NUL "END:" secret ":" id NUL`); the
//! collector splits the stream there, so output that arrives late (a background thread, a
//! child process) is never attributed to the wrong cell's answer silently: it opens the next
//! segment.

use std::collections::VecDeque;
use std::io::Read;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Bytes kept from the start and from the end of one cell's output.
pub(crate) const KEEP_BYTES: usize = 16 * 1024;

/// One cell's output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Segment {
    /// The first bytes.
    pub head: Vec<u8>,
    /// The last bytes after the head (empty when everything fit in the head).
    pub tail: Vec<u8>,
    /// All bytes written, kept or not.
    pub total: u64,
}

impl Segment {
    fn push(&mut self, bytes: &[u8], tail: &mut VecDeque<u8>) {
        self.total += bytes.len() as u64;
        let room = KEEP_BYTES.saturating_sub(self.head.len());
        let (front, rest) = bytes.split_at(room.min(bytes.len()));
        self.head.extend_from_slice(front);
        if rest.len() >= KEEP_BYTES {
            tail.clear();
            tail.extend(&rest[rest.len() - KEEP_BYTES..]);
        } else {
            tail.extend(rest);
            let excess = tail.len().saturating_sub(KEEP_BYTES);
            tail.drain(..excess);
        }
    }

    /// Bytes not kept.
    pub fn omitted(&self) -> u64 {
        self.total - (self.head.len() + self.tail.len()) as u64
    }
}

#[derive(Default)]
struct State {
    /// Bytes not yet classified (they may hold the start of a marker).
    pending: Vec<u8>,
    current: Segment,
    current_tail: VecDeque<u8>,
    finished: VecDeque<(u64, Segment)>,
    eof: bool,
}

impl State {
    fn take_current(&mut self) -> Segment {
        let mut segment = std::mem::take(&mut self.current);
        segment.tail = std::mem::take(&mut self.current_tail).into();
        segment
    }
}

/// The shared end of the reader thread.
pub(crate) struct OutputCollector {
    state: Mutex<State>,
    changed: Condvar,
    marker: Vec<u8>,
}

/// Longest id text after the marker prefix.
const MAX_ID_DIGITS: usize = 20;

impl OutputCollector {
    /// Starts draining `stream` on a thread; `secret` is the marker secret given to the driver.
    pub(crate) fn start(stream: impl Read + Send + 'static, secret: &str) -> Arc<Self> {
        let collector = Arc::new(Self {
            state: Mutex::new(State::default()),
            changed: Condvar::new(),
            marker: format!("\0END:{secret}:").into_bytes(),
        });
        let reader = Arc::clone(&collector);
        let spawned = std::thread::Builder::new()
            .name("interpreter-output".into())
            .spawn(move || reader.drain(stream));
        if let Err(e) = spawned {
            log::error!("cannot start the interpreter output reader: {e}");
            collector.state.lock().expect("not poisoned").eof = true;
        }
        collector
    }

    fn drain(&self, mut stream: impl Read) {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            };
            let mut state = self.state.lock().expect("not poisoned");
            state.pending.extend_from_slice(&buf[..n]);
            self.classify(&mut state);
            drop(state);
            self.changed.notify_all();
        }
        let mut state = self.state.lock().expect("not poisoned");
        let rest = std::mem::take(&mut state.pending);
        let State {
            current,
            current_tail,
            ..
        } = &mut *state;
        current.push(&rest, current_tail);
        state.eof = true;
        drop(state);
        self.changed.notify_all();
    }

    /// Moves pending bytes into segments, splitting at complete markers.
    fn classify(&self, state: &mut State) {
        loop {
            let found = find(&state.pending, &self.marker);
            let Some(at) = found else {
                // Keep a possible marker start; everything before it is output.
                let keep = partial_prefix(&state.pending, &self.marker);
                let cut = state.pending.len() - keep;
                let bytes: Vec<u8> = state.pending.drain(..cut).collect();
                let State {
                    current,
                    current_tail,
                    ..
                } = state;
                current.push(&bytes, current_tail);
                return;
            };
            let before: Vec<u8> = state.pending.drain(..at).collect();
            {
                let State {
                    current,
                    current_tail,
                    ..
                } = &mut *state;
                current.push(&before, current_tail);
            }
            let after = &state.pending[self.marker.len()..];
            match after.iter().position(|&b| b == 0) {
                Some(end) if end <= MAX_ID_DIGITS => {
                    let id = std::str::from_utf8(&after[..end])
                        .ok()
                        .and_then(|s| s.parse::<u64>().ok());
                    let consumed = self.marker.len() + end + 1;
                    state.pending.drain(..consumed);
                    if let Some(id) = id {
                        let segment = state.take_current();
                        state.finished.push_back((id, segment));
                    }
                }
                None if after.len() <= MAX_ID_DIGITS => return, // incomplete marker: wait
                _ => {
                    // Not a marker after all: the first byte is output.
                    let byte: Vec<u8> = state.pending.drain(..1).collect();
                    let State {
                        current,
                        current_tail,
                        ..
                    } = state;
                    current.push(&byte, current_tail);
                }
            }
        }
    }

    /// Waits until cell `id`'s output is complete (its marker arrived, or the stream ended)
    /// or `timeout` passes; returns the output either way, and whether the marker was seen.
    pub(crate) fn wait_cell(&self, id: u64, timeout: Duration) -> (Segment, bool) {
        let deadline = Instant::now() + timeout;
        let mut state = self.state.lock().expect("not poisoned");
        loop {
            while let Some((first, _)) = state.finished.front() {
                if *first < id {
                    state.finished.pop_front(); // late output of an earlier cell
                } else {
                    break;
                }
            }
            if let Some(pos) = state.finished.iter().position(|(i, _)| *i == id) {
                let (_, segment) = state.finished.remove(pos).expect("found");
                return (segment, true);
            }
            let now = Instant::now();
            if state.eof || now >= deadline {
                return (state.take_current(), false);
            }
            state = self
                .changed
                .wait_timeout(state, deadline - now)
                .expect("not poisoned")
                .0;
        }
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(haystack, needle)
}

/// Length of the longest suffix of `bytes` that is a proper prefix of `marker`.
fn partial_prefix(bytes: &[u8], marker: &[u8]) -> usize {
    (1..marker.len())
        .rev()
        .find(|&len| bytes.len() >= len && bytes.ends_with(&marker[..len]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collect(chunks: Vec<Vec<u8>>) -> Arc<OutputCollector> {
        struct Chunks(VecDeque<Vec<u8>>);
        impl Read for Chunks {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                match self.0.pop_front() {
                    None => Ok(0),
                    Some(mut chunk) => {
                        let n = chunk.len().min(buf.len());
                        buf[..n].copy_from_slice(&chunk[..n]);
                        if n < chunk.len() {
                            self.0.push_front(chunk.split_off(n));
                        }
                        Ok(n)
                    }
                }
            }
        }
        OutputCollector::start(Chunks(chunks.into()), "s3")
    }

    #[test]
    fn markers_split_cells_even_across_reads() {
        let c = collect(vec![
            b"one\n\0EN".to_vec(),
            b"D:s3:1\0two".to_vec(),
            b"\0END:s3:2\0late".to_vec(),
        ]);
        let (first, seen) = c.wait_cell(1, Duration::from_secs(5));
        assert!(seen);
        assert_eq!(first.head, b"one\n");
        let (second, _) = c.wait_cell(2, Duration::from_secs(5));
        assert_eq!(second.head, b"two");
        let (third, seen) = c.wait_cell(3, Duration::from_secs(5));
        assert!(!seen, "the stream ended without a marker");
        assert_eq!(third.head, b"late");
    }

    #[test]
    fn a_wrong_secret_is_output_and_huge_output_keeps_head_and_tail() {
        let mut big = vec![b'a'; KEEP_BYTES];
        big.extend(vec![b'b'; 3 * KEEP_BYTES]);
        big.extend(b"END");
        let c = collect(vec![
            b"\0END:xx:1\0".to_vec(),
            big,
            b"\0END:s3:1\0".to_vec(),
        ]);
        let (cell, seen) = c.wait_cell(1, Duration::from_secs(5));
        assert!(seen);
        assert!(cell.head.starts_with(b"\0END:xx:1\0aaa"));
        assert_eq!(cell.head.len(), KEEP_BYTES);
        assert!(cell.tail.ends_with(b"bbEND") && cell.tail.len() == KEEP_BYTES);
        assert_eq!(cell.total, 10 + 4 * KEEP_BYTES as u64 + 3);
        assert_eq!(cell.omitted(), cell.total - 2 * KEEP_BYTES as u64);
    }
}
