//! The collector's durable write-ahead spool.
//!
//! Every accepted record is appended here (group commit, fsync per policy) before the client
//! gets its 202, and the forwarder sends records to Kafka from here, in append order. So a
//! 202 always means "durable in the spool", and the spool holds whatever Kafka has not yet
//! confirmed: while the broker is slow or down the spool simply grows, and drains in order
//! when it is back. Only when the unconfirmed bytes reach `max_bytes` is intake refused.
//!
//! On disk: `segment-<first_seq>.log` files of frames
//! `[len u32][crc32 u32][seq u64][written_ms u64][topic u8][key_len u32][key][value]`
//! (little endian; `len` and `crc32` cover everything after them), and `acked`, the highest
//! sequence number Kafka confirmed (every lower one is confirmed too), rewritten atomically.
//! A torn frame at the end of the newest segment (crash mid-write) is truncated on open.
//! A corrupt frame anywhere else (a flipped bit, a damaged block) is not a tail: the frames
//! after it are found again (each frame carries its length, sequence number and CRC), the
//! damaged bytes are copied to `quarantine/` with their segment and offset, counted and
//! logged, and forwarding goes on with the next good frame — acknowledged records after the
//! damage are never truncated.
//!
//! A write error (disk full, EIO, a failed fsync) fails only the requests of that group
//! (`SpoolError::Unavailable`, 503 `spool_unavailable`): the segment is cut back to its last
//! good frame, the spool is marked unavailable (`/readyz`), and every append, plus a probe
//! write each second, tries again; the first success makes it available again. The writer
//! never stops on an IO error.
//! Records after `acked` are sent again after a restart: a crash between a delivery and the
//! next `acked` checkpoint (at most `checkpoint_interval`) can duplicate those records in
//! Kafka, which is why `event_id` is the dedup key downstream.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use tokio::sync::{oneshot, watch};

use crate::config::{FsyncPolicy, SpoolConfig};

/// Which topic a spooled record is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topic {
    Events = 0,
    DeadLetter = 1,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: Topic,
    pub key: Vec<u8>,
    pub value: Vec<u8>,
}

/// A record read back from the spool.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Spooled {
    pub seq: u64,
    pub written_ms: u64,
    pub frame_bytes: u64,
    pub record: Record,
}

#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("spool {path}: corrupt frame at byte {offset}: {reason}")]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error("spool is full: {depth_bytes} bytes not yet in Kafka (limit {max_bytes})")]
    Full { depth_bytes: u64, max_bytes: u64 },
    #[error("spool writer stopped")]
    Stopped,
    #[error("spool {path} cannot be written now: {reason}")]
    Unavailable { path: PathBuf, reason: String },
    #[error(
        "spool {path}: another collector holds this spool (its lock file is locked); give each \
         collector its own collect.spool.dir"
    )]
    Locked { path: PathBuf },
}

const HEADER: usize = 8; // len + crc
const FIXED: usize = 8 + 8 + 1 + 4; // seq + written_ms + topic + key_len
const CHECKPOINT_INTERVAL: Duration = Duration::from_millis(100);

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SpoolError + '_ {
    move |source| SpoolError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn segment_name(first_seq: u64) -> String {
    format!("segment-{first_seq:020}.log")
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn encode(seq: u64, written_ms: u64, r: &Record, out: &mut Vec<u8>) {
    let payload_len = FIXED + r.key.len() + r.value.len();
    let start = out.len();
    out.extend_from_slice(&(payload_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&written_ms.to_le_bytes());
    out.push(r.topic as u8);
    out.extend_from_slice(&(r.key.len() as u32).to_le_bytes());
    out.extend_from_slice(&r.key);
    out.extend_from_slice(&r.value);
    let crc = crc32fast::hash(&out[start + HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Reads the frame at the reader's position. `Ok(None)` at a clean end of file or at a
/// torn tail (a partial or corrupt frame: nothing after it was acknowledged).
fn read_frame(r: &mut impl Read) -> Result<Option<Spooled>, std::io::Error> {
    let mut header = [0u8; HEADER];
    if !read_full(r, &mut header)? {
        return Ok(None);
    }
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]) as usize;
    let crc = u32::from_le_bytes([header[4], header[5], header[6], header[7]]);
    if !(FIXED..=MAX_FRAME).contains(&len) {
        return Ok(None);
    }
    let mut payload = vec![0u8; len];
    if !read_full(r, &mut payload)? || crc32fast::hash(&payload) != crc {
        return Ok(None);
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&payload[i..i + 8]);
        u64::from_le_bytes(b)
    };
    let seq = u64_at(0);
    let written_ms = u64_at(8);
    let topic = if payload[16] == 1 {
        Topic::DeadLetter
    } else {
        Topic::Events
    };
    let key_len = u32::from_le_bytes([payload[17], payload[18], payload[19], payload[20]]) as usize;
    if FIXED + key_len > len {
        return Ok(None);
    }
    let key = payload[FIXED..FIXED + key_len].to_vec();
    let value = payload[FIXED + key_len..].to_vec();
    Ok(Some(Spooled {
        seq,
        written_ms,
        frame_bytes: (HEADER + len) as u64,
        record: Record { topic, key, value },
    }))
}

/// Fills `buf`; false at end of file (also when only part of it could be read).
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<bool, std::io::Error> {
    let mut filled = 0;
    while filled < buf.len() {
        match r.read(&mut buf[filled..]) {
            Ok(0) => return Ok(false),
            Ok(n) => filled += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

/// The largest frame payload a spool writes (a batch body is far smaller).
const MAX_FRAME: usize = 256 * 1024 * 1024;

/// Whether a valid frame with a sequence number in `min_seq..min_seq + 2^32` starts at
/// `b[0]`; its whole length when it does.
fn frame_ok(b: &[u8], min_seq: u64) -> Option<usize> {
    if b.len() < HEADER + FIXED {
        return None;
    }
    let len = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    if !(FIXED..=MAX_FRAME).contains(&len) || b.len() < HEADER + len {
        return None;
    }
    let mut seq = [0u8; 8];
    seq.copy_from_slice(&b[HEADER..HEADER + 8]);
    let seq = u64::from_le_bytes(seq);
    if seq < min_seq || seq - min_seq >= 1 << 32 {
        return None;
    }
    let crc = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    (crc32fast::hash(&b[HEADER..HEADER + len]) == crc).then_some(HEADER + len)
}

/// The offset and sequence number of the next valid frame after `from` in `path`
/// (sequence ≥ `min_seq`), and the file's length.
fn find_next_frame(
    path: &Path,
    from: u64,
    min_seq: u64,
) -> Result<(Option<(u64, u64)>, u64), SpoolError> {
    let mut f = File::open(path).map_err(io_err(path))?;
    f.seek(SeekFrom::Start(from)).map_err(io_err(path))?;
    let mut rest = Vec::new();
    f.read_to_end(&mut rest).map_err(io_err(path))?;
    let end = from + rest.len() as u64;
    let found = (1..rest.len())
        .find(|&p| frame_ok(&rest[p..], min_seq).is_some())
        .map(|p| {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&rest[p + HEADER..p + HEADER + 8]);
            (from + p as u64, u64::from_le_bytes(seq))
        });
    Ok((found, end))
}

fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, SpoolError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err(dir))? {
        let entry = entry.map_err(io_err(dir))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name
            .strip_prefix("segment-")
            .and_then(|s| s.strip_suffix(".log"))
            .and_then(|s| s.parse::<u64>().ok())
        {
            out.push((seq, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

fn read_checkpoint(path: &Path) -> Result<u64, SpoolError> {
    match fs::read_to_string(path) {
        Ok(s) => s.trim().parse().map_err(|e| SpoolError::Corrupt {
            path: path.to_path_buf(),
            offset: 0,
            reason: format!("checkpoint {s:?}: {e}"),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(io_err(path)(e)),
    }
}

fn write_checkpoint(dir: &Path, acked: u64, sync: bool) -> Result<(), SpoolError> {
    let tmp = dir.join("acked.tmp");
    let path = dir.join("acked");
    {
        let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(acked.to_string().as_bytes())
            .map_err(io_err(&tmp))?;
        if sync {
            f.sync_data().map_err(io_err(&tmp))?;
        }
    }
    fs::rename(&tmp, &path).map_err(io_err(&path))
}

/// Counters shared by the writer, the forwarder and the HTTP handlers.
#[derive(Debug, Default)]
pub struct SpoolState {
    /// Bytes appended but not yet confirmed by Kafka.
    pub depth_bytes: AtomicU64,
    /// Records appended but not yet confirmed by Kafka.
    pub depth_records: AtomicU64,
    /// Highest sequence number confirmed by Kafka (all lower ones too).
    pub acked_seq: AtomicU64,
    /// Set when the writer thread is gone (it stops only on close); intake stops.
    pub failed: AtomicBool,
    /// Set while the spool cannot be written (the last write or probe failed).
    pub unavailable: AtomicBool,
    /// Write, fsync, checkpoint and roll errors so far.
    pub write_errors: AtomicU64,
    /// Corrupt regions moved to `quarantine/`.
    pub quarantined: AtomicU64,
    /// Records lost to corrupt regions (sequence numbers skipped).
    pub lost_records: AtomicU64,
    /// The last write error, for `/readyz`.
    pub last_error: std::sync::Mutex<String>,
}

impl SpoolState {
    fn write_failed(&self, what: &str, path: &Path, e: &std::io::Error) {
        self.write_errors.fetch_add(1, Ordering::SeqCst);
        let text = format!("{what} {}: {e}", path.display());
        tracing::error!(error = %text, "spool write error");
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = text;
    }

    pub fn last_error(&self) -> String {
        self.last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn forget(&self, records: u64, bytes: u64) {
        let sub = |a: &AtomicU64, n: u64| {
            let _ = a.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| {
                Some(v.saturating_sub(n))
            });
        };
        sub(&self.depth_records, records);
        sub(&self.depth_bytes, bytes);
    }
}

struct AppendRequest {
    records: Vec<Record>,
    bytes: u64,
    reply: oneshot::Sender<Result<u64, SpoolError>>,
}

enum Command {
    Append(AppendRequest),
    Close,
}

/// Handle for appending; cheap to clone.
#[derive(Clone)]
pub struct Spool {
    tx: mpsc::Sender<Command>,
    state: Arc<SpoolState>,
    durable: watch::Receiver<u64>,
    max_bytes: u64,
    dir: PathBuf,
}

/// Owns the writer thread; `close` flushes, checkpoints and joins it.
pub struct SpoolWriter {
    thread: Option<std::thread::JoinHandle<Result<(), SpoolError>>>,
    tx: mpsc::Sender<Command>,
}

impl Spool {
    /// Opens (recovering) the spool in `cfg.dir`. Returns the append handle, the writer
    /// handle and a reader positioned at the first record Kafka has not confirmed.
    pub fn open(cfg: &SpoolConfig) -> Result<(Spool, SpoolWriter, SpoolReader), SpoolError> {
        let dir = cfg.dir.clone();
        fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        // one collector per spool: an advisory lock, released when the writer thread ends
        // (or the process dies)
        let lock_path = dir.join("LOCK");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(io_err(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(fs::TryLockError::WouldBlock) => {
                return Err(SpoolError::Locked { path: lock_path });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err(&lock_path)(e)),
        }
        let acked = read_checkpoint(&dir.join("acked"))?;
        let mut segments = list_segments(&dir)?;

        // Find the end of the newest segment, truncating a torn tail.
        let mut next_seq = acked + 1;
        if let Some((first, path)) = segments.last() {
            let (last_seq, valid_len) = scan_segment(path)?;
            let file_len = fs::metadata(path).map_err(io_err(path))?.len();
            if valid_len < file_len {
                tracing::warn!(path = %path.display(), valid_len, file_len,
                    "spool: truncating a torn tail left by a crash");
                let f = OpenOptions::new()
                    .write(true)
                    .open(path)
                    .map_err(io_err(path))?;
                f.set_len(valid_len).map_err(io_err(path))?;
                f.sync_all().map_err(io_err(path))?;
            }
            next_seq = next_seq.max(last_seq.map_or(*first, |s| s + 1));
        }
        // Segments entirely confirmed are no longer needed.
        let mut keep = Vec::new();
        for (i, (first, path)) in segments.iter().enumerate() {
            let next_first = segments.get(i + 1).map(|(f, _)| *f);
            let fully_acked = next_first.is_some_and(|nf| nf <= acked + 1);
            if fully_acked {
                fs::remove_file(path).map_err(io_err(path))?;
            } else {
                keep.push((*first, path.clone()));
            }
        }
        segments = keep;

        let state = Arc::new(SpoolState::default());
        state.acked_seq.store(acked, Ordering::SeqCst);
        let reader = SpoolReader::open_at(&dir, acked + 1)?.quarantining(state.clone());
        // Depth: what is after the checkpoint.
        let (depth_records, depth_bytes) = reader.clone_at_start()?.count_remaining()?;
        state.depth_bytes.store(depth_bytes, Ordering::SeqCst);
        state.depth_records.store(depth_records, Ordering::SeqCst);

        // Append to the newest segment, or start one.
        let (current_first, current_path) = match segments.last() {
            Some((f, p)) => (*f, p.clone()),
            None => (next_seq, dir.join(segment_name(next_seq))),
        };
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&current_path)
            .map_err(io_err(&current_path))?;
        let current_len = file.metadata().map_err(io_err(&current_path))?.len();
        let closed: Vec<(u64, PathBuf)> = segments
            .iter()
            .filter(|(f, _)| *f != current_first)
            .cloned()
            .collect();

        let (durable_tx, durable_rx) = watch::channel(next_seq - 1);
        let (tx, rx) = mpsc::channel();
        let mut writer = Writer {
            _lock: lock,
            dir: dir.clone(),
            policy: cfg.fsync,
            fsync_interval: Duration::from_millis(cfg.fsync_interval_ms.max(1)),
            segment_bytes: cfg.segment_bytes,
            file,
            current_path,
            current_first,
            current_len,
            closed,
            next_seq,
            state: state.clone(),
            durable: durable_tx,
            last_sync: Instant::now(),
            dirty: false,
            checkpointed: acked,
            last_checkpoint: Instant::now(),
        };
        let thread = std::thread::Builder::new()
            .name("spool-writer".into())
            .spawn(move || writer.run(rx))
            .map_err(io_err(&dir))?;
        Ok((
            Spool {
                tx: tx.clone(),
                state,
                durable: durable_rx,
                max_bytes: cfg.max_bytes,
                dir,
            },
            SpoolWriter {
                thread: Some(thread),
                tx,
            },
            reader,
        ))
    }

    pub fn state(&self) -> &Arc<SpoolState> {
        &self.state
    }

    /// A new reader at the first record Kafka has not confirmed (the forwarder's, after a
    /// failure), quarantining corrupt regions.
    pub fn reader(&self) -> Result<SpoolReader, SpoolError> {
        let acked = self.state.acked_seq.load(Ordering::SeqCst);
        Ok(SpoolReader::open_at(&self.dir, acked + 1)?.quarantining(self.state.clone()))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Highest sequence number that is durable (per the fsync policy) and readable.
    pub fn durable(&self) -> watch::Receiver<u64> {
        self.durable.clone()
    }

    /// True when an append of `bytes` more would be refused.
    pub fn would_overflow(&self, bytes: u64) -> bool {
        self.state.depth_bytes.load(Ordering::SeqCst) + bytes > self.max_bytes
    }

    /// Appends records in order; returns the sequence number of the last one once it is
    /// durable per the fsync policy.
    pub async fn append(&self, records: Vec<Record>) -> Result<u64, SpoolError> {
        if self.state.failed.load(Ordering::SeqCst) {
            return Err(SpoolError::Stopped);
        }
        let bytes: u64 = records
            .iter()
            .map(|r| (HEADER + FIXED + r.key.len() + r.value.len()) as u64)
            .sum();
        let depth = self.state.depth_bytes.load(Ordering::SeqCst);
        if depth + bytes > self.max_bytes {
            return Err(SpoolError::Full {
                depth_bytes: depth,
                max_bytes: self.max_bytes,
            });
        }
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Command::Append(AppendRequest {
                records,
                bytes,
                reply,
            }))
            .map_err(|_| SpoolError::Stopped)?;
        rx.await.map_err(|_| SpoolError::Stopped)?
    }

    /// Kafka confirmed every record up to `seq`; `records`/`bytes` are what that covers.
    pub fn ack(&self, seq: u64, records: u64, bytes: u64) {
        self.state.acked_seq.fetch_max(seq, Ordering::SeqCst);
        self.state.forget(records, bytes);
    }
}

impl SpoolWriter {
    /// Flushes, writes the final checkpoint and stops the writer thread.
    pub fn close(mut self) -> Result<(), SpoolError> {
        let _ = self.tx.send(Command::Close);
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(SpoolError::Stopped),
            None => Ok(()),
        }
    }
}

impl Drop for SpoolWriter {
    fn drop(&mut self) {
        if let Some(t) = self.thread.take() {
            let _ = self.tx.send(Command::Close);
            let _ = t.join();
        }
    }
}

/// Returns the last valid sequence number in a segment and where its last valid frame
/// ends: what follows is a torn tail. A corrupt frame followed by valid ones is not a tail
/// (the reader quarantines it), so nothing acknowledged after it is cut off.
fn scan_segment(path: &Path) -> Result<(Option<u64>, u64), SpoolError> {
    let buf = fs::read(path).map_err(io_err(path))?;
    let mut last: Option<u64> = None;
    let mut pos = 0usize;
    let mut valid_end = 0usize;
    while pos < buf.len() {
        let min_seq = last.map_or(0, |s| s + 1);
        if let Some(n) = frame_ok(&buf[pos..], min_seq) {
            let mut seq = [0u8; 8];
            seq.copy_from_slice(&buf[pos + HEADER..pos + HEADER + 8]);
            last = Some(u64::from_le_bytes(seq));
            pos += n;
            valid_end = pos;
            continue;
        }
        match (pos + 1..buf.len()).find(|&p| frame_ok(&buf[p..], min_seq).is_some()) {
            Some(p) => {
                tracing::warn!(path = %path.display(), offset = pos, bytes = p - pos,
                    "spool: corrupt bytes inside a segment; the frames after them are kept");
                pos = p;
            }
            None => break,
        }
    }
    Ok((last, valid_end as u64))
}

struct Writer {
    /// the spool's lock file, held while the writer runs
    _lock: fs::File,
    dir: PathBuf,
    policy: FsyncPolicy,
    fsync_interval: Duration,
    segment_bytes: u64,
    file: File,
    current_path: PathBuf,
    current_first: u64,
    current_len: u64,
    closed: Vec<(u64, PathBuf)>,
    next_seq: u64,
    state: Arc<SpoolState>,
    durable: watch::Sender<u64>,
    last_sync: Instant,
    dirty: bool,
    checkpointed: u64,
    last_checkpoint: Instant,
}

/// How often an unavailable spool tries a probe write by itself.
const PROBE_INTERVAL: Duration = Duration::from_secs(1);

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) -> Result<(), SpoolError> {
        let result = self.run_inner(rx);
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool writer stopped");
        }
        self.state.failed.store(true, Ordering::SeqCst);
        result
    }

    fn run_inner(&mut self, rx: mpsc::Receiver<Command>) -> Result<(), SpoolError> {
        let tick = CHECKPOINT_INTERVAL.min(self.fsync_interval);
        let mut last_probe = Instant::now();
        loop {
            let first = match rx.recv_timeout(tick) {
                Ok(cmd) => Some(cmd),
                Err(mpsc::RecvTimeoutError::Timeout) => None,
                Err(mpsc::RecvTimeoutError::Disconnected) => Some(Command::Close),
            };
            let mut group = Vec::new();
            let mut close = false;
            let mut next = first;
            while let Some(cmd) = next {
                match cmd {
                    Command::Append(req) => group.push(req),
                    Command::Close => close = true,
                }
                if close {
                    break;
                }
                next = rx.try_recv().ok();
            }
            if !group.is_empty() {
                self.write_group(group);
            } else if self.state.unavailable.load(Ordering::SeqCst)
                && last_probe.elapsed() >= PROBE_INTERVAL
            {
                last_probe = Instant::now();
                self.probe();
            }
            if let Err(e) = self.maintain(close) {
                if close {
                    return Err(e);
                }
                // counted and logged; retried on the next tick
                if let SpoolError::Io { path, source } = &e {
                    self.state.write_failed("maintenance", path, source);
                }
            }
            if close {
                return Ok(());
            }
        }
    }

    /// Tries a small write and fsync beside the segments: whether the disk takes writes again.
    fn probe(&mut self) {
        let path = self.dir.join("probe.tmp");
        let r = File::create(&path)
            .and_then(|mut f| {
                f.write_all(&[0u8; 64 * 1024])?;
                f.sync_data()
            })
            .and_then(|_| fs::remove_file(&path));
        match r {
            Ok(()) => self.available(),
            Err(e) => {
                let _ = fs::remove_file(&path);
                tracing::debug!(error = %e, "spool probe: still not writable");
            }
        }
    }

    fn available(&mut self) {
        if self.state.unavailable.swap(false, Ordering::SeqCst) {
            tracing::info!(dir = %self.dir.display(), "spool is writable again");
        }
    }

    /// Writes a group of appends and answers each. An IO error fails this group only: the
    /// segment is cut back to its last good frame and the spool is marked unavailable.
    fn write_group(&mut self, group: Vec<AppendRequest>) {
        let first_seq = self.next_seq;
        let mut buf = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        let written_ms = now_ms();
        let (mut records, mut bytes) = (0u64, 0u64);
        for req in group {
            let mut last = self.next_seq - 1;
            for r in &req.records {
                encode(self.next_seq, written_ms, r, &mut buf);
                last = self.next_seq;
                self.next_seq += 1;
            }
            records += req.records.len() as u64;
            bytes += req.bytes;
            replies.push((req.reply, last));
        }
        // A group is written whole to the current segment (a frame never spans two files);
        // the segment is rolled after it once it reaches `segment_bytes`.
        let result = self.cut_back().and_then(|_| {
            self.file.write_all(&buf)?;
            if self.policy == FsyncPolicy::Always {
                self.file.sync_data()?;
            }
            Ok(())
        });
        if let Err(source) = result {
            let path = self.current_path.clone();
            self.state.write_failed("append to", &path, &source);
            self.state.unavailable.store(true, Ordering::SeqCst);
            self.next_seq = first_seq;
            // a partial write must not stay in front of the next group's frames
            if let Err(e) = self.cut_back() {
                self.state.write_failed("cutting back", &path, &e);
            }
            for (reply, _) in replies {
                let _ = reply.send(Err(SpoolError::Unavailable {
                    path: path.clone(),
                    reason: source.to_string(),
                }));
            }
            return;
        }
        self.available();
        self.state
            .depth_records
            .fetch_add(records, Ordering::SeqCst);
        self.state.depth_bytes.fetch_add(bytes, Ordering::SeqCst);
        self.current_len += buf.len() as u64;
        self.dirty = self.policy != FsyncPolicy::Always;
        let durable = self.next_seq - 1;
        self.durable.send_replace(durable);
        for (reply, last) in replies {
            let _ = reply.send(Ok(last));
        }
        if self.current_len >= self.segment_bytes
            && let Err(e) = self.roll()
        {
            // the current segment grows on; rolling is tried again after the next group
            if let SpoolError::Io { path, source } = &e {
                self.state.write_failed("rolling to", path, source);
            }
        }
    }

    /// Truncates the current segment to its last good frame when a write left more.
    fn cut_back(&mut self) -> std::io::Result<()> {
        let len = self.file.metadata()?.len();
        if len != self.current_len {
            self.file.set_len(self.current_len)?;
        }
        Ok(())
    }

    /// Starts a new segment at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.file.sync_data().map_err(io_err(&self.current_path))?;
        let path = self.dir.join(segment_name(self.next_seq));
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(io_err(&path))?;
        let old_path = std::mem::replace(&mut self.current_path, path);
        self.closed.push((self.current_first, old_path));
        self.current_first = self.next_seq;
        self.current_len = 0;
        self.file = file;
        self.dirty = false;
        Ok(())
    }

    /// Periodic work: interval fsync, ack checkpoint, deleting confirmed segments. On close,
    /// a spool whose every record is confirmed is emptied entirely.
    fn maintain(&mut self, closing: bool) -> Result<(), SpoolError> {
        let result = self.maintain_inner(closing);
        let acked = self.state.acked_seq.load(Ordering::SeqCst);
        if closing && result.is_ok() && acked + 1 >= self.next_seq && self.current_len > 0 {
            // the checkpoint (acked = next_seq - 1) lets the next open continue the sequence
            let path = self.current_path.clone();
            fs::remove_file(&path).map_err(io_err(&path))?;
        }
        result
    }

    fn maintain_inner(&mut self, closing: bool) -> Result<(), SpoolError> {
        if self.dirty
            && (closing
                || (self.policy == FsyncPolicy::Interval
                    && self.last_sync.elapsed() >= self.fsync_interval))
        {
            self.last_sync = Instant::now();
            if let Err(e) = self.file.sync_data() {
                // records already answered under `interval` may be lost with the page
                // cache: say so loudly and refuse more until the disk answers again
                self.state.unavailable.store(true, Ordering::SeqCst);
                return Err(io_err(&self.current_path)(e));
            }
            self.dirty = false;
        }
        let acked = self.state.acked_seq.load(Ordering::SeqCst);
        if acked != self.checkpointed
            && (closing || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
        {
            // (a failed checkpoint is retried at the next interval, not on every tick)
            self.last_checkpoint = Instant::now();
            write_checkpoint(&self.dir, acked, self.policy != FsyncPolicy::Never)?;
            self.checkpointed = acked;
            // A closed segment is done when the next one starts at or below acked + 1.
            let mut i = 0;
            while i < self.closed.len() {
                let next_first = self
                    .closed
                    .get(i + 1)
                    .map_or(self.current_first, |(f, _)| *f);
                if next_first <= acked + 1 {
                    let (_, path) = self.closed.remove(i);
                    if let Err(e) = fs::remove_file(&path) {
                        tracing::warn!(path = %path.display(), error = %e,
                            "spool: could not delete a confirmed segment");
                    }
                } else {
                    i += 1;
                }
            }
        }
        Ok(())
    }
}

/// Reads spooled records in order, across segments.
pub struct SpoolReader {
    dir: PathBuf,
    file: Option<(u64, BufReader<File>)>,
    next_seq: u64,
    /// the spool's counters: corrupt regions are quarantined and counted (None: a reader
    /// that only counts the depth, and skips them silently)
    state: Option<Arc<SpoolState>>,
    /// corrupt regions already handled (segment, offset), so that a rewind does not
    /// quarantine one twice
    seen_corrupt: std::collections::HashSet<(u64, u64)>,
    /// the highest sequence number returned so far (a rewind does not count losses twice)
    returned_up_to: u64,
    /// records and bytes skipped in corrupt regions by a reader without `state` (the depth
    /// count at open includes them, as the quarantining reader forgets them when it gets
    /// there)
    skipped: (u64, u64),
}

impl SpoolReader {
    /// A reader whose next record is `seq` (or the first one after it that exists).
    pub fn open_at(dir: &Path, seq: u64) -> Result<SpoolReader, SpoolError> {
        let mut reader = SpoolReader {
            dir: dir.to_path_buf(),
            file: None,
            next_seq: seq,
            state: None,
            seen_corrupt: Default::default(),
            returned_up_to: 0,
            skipped: (0, 0),
        };
        reader.seek(seq)?;
        Ok(reader)
    }

    /// This reader quarantines the corrupt regions it meets, counted in `state`.
    fn quarantining(mut self, state: Arc<SpoolState>) -> SpoolReader {
        self.state = Some(state);
        self
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    fn clone_at_start(&self) -> Result<SpoolReader, SpoolError> {
        SpoolReader::open_at(&self.dir, self.next_seq)
    }

    /// Positions the reader at `seq`.
    pub fn seek(&mut self, seq: u64) -> Result<(), SpoolError> {
        self.file = None;
        self.next_seq = seq;
        let segments = list_segments(&self.dir)?;
        let Some((first, path)) = segments.iter().rev().find(|(f, _)| *f <= seq).cloned() else {
            // Nothing that old is left: start at the oldest segment (if any).
            if let Some((first, path)) = segments.first() {
                self.next_seq = self.next_seq.max(*first);
                let f = File::open(path).map_err(io_err(path))?;
                self.file = Some((*first, BufReader::new(f)));
            }
            return Ok(());
        };
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut r = BufReader::new(f);
        let mut pos = 0u64;
        loop {
            let here = pos;
            match read_frame(&mut r).map_err(io_err(&path))? {
                Some(frame) if frame.seq < seq => pos += frame.frame_bytes,
                Some(_) => {
                    r.seek(SeekFrom::Start(here)).map_err(io_err(&path))?;
                    break;
                }
                None => {
                    // the end, or a corrupt region before `seq`: step over it (read()
                    // quarantines it when it is at or after `seq`)
                    match find_next_frame(&path, here, 0)? {
                        (Some((next, next_seq)), _) if next_seq < seq => {
                            pos = next;
                            r.seek(SeekFrom::Start(pos)).map_err(io_err(&path))?;
                        }
                        _ => {
                            r.seek(SeekFrom::Start(here)).map_err(io_err(&path))?;
                            break;
                        }
                    }
                }
            }
        }
        self.file = Some((first, r));
        Ok(())
    }

    /// Reads up to `max` records with sequence numbers ≤ `up_to`.
    pub fn read(&mut self, max: usize, up_to: u64) -> Result<Vec<Spooled>, SpoolError> {
        let mut out = Vec::new();
        while out.len() < max && self.next_seq <= up_to {
            if self.file.is_none() {
                let path = self.dir.join(segment_name(self.next_seq));
                match File::open(&path) {
                    Ok(f) => self.file = Some((self.next_seq, BufReader::new(f))),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => break,
                    Err(e) => return Err(io_err(&path)(e)),
                }
            }
            let Some((first, r)) = self.file.as_mut() else {
                break;
            };
            let first = *first;
            let path = self.dir.join(segment_name(first));
            let here = r.stream_position().map_err(io_err(&path))?;
            match read_frame(r).map_err(io_err(&path))? {
                Some(frame) if frame.seq < self.next_seq => {
                    tracing::warn!(path = %path.display(), offset = here, seq = frame.seq,
                        expected = self.next_seq, "spool: skipping a frame read before");
                }
                Some(frame) => {
                    // the records in between were in a quarantined region
                    self.count_lost(&path, frame.seq);
                    self.next_seq = frame.seq + 1;
                    self.returned_up_to = self.returned_up_to.max(frame.seq);
                    out.push(frame);
                }
                None => {
                    // End of this segment (for now), or a corrupt frame. Move on if the
                    // next segment starts at the next record.
                    r.seek(SeekFrom::Start(here)).map_err(io_err(&path))?;
                    let next = self.dir.join(segment_name(self.next_seq));
                    if self.next_seq != first && next.exists() {
                        self.file = None;
                        continue;
                    }
                    // `next_seq` is durable (≤ up_to), so its frame should be here: what
                    // is at `here` is damaged
                    if !self.skip_corrupt(first, &path, here)? {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Steps over the damaged bytes at `here` in segment `first`: to the next good frame in
    /// it, or to the next segment. The bytes are copied to `quarantine/`, counted and
    /// logged. False when there is nothing to step to yet (damage up to the end of the
    /// newest segment: the next appended frame follows it).
    fn skip_corrupt(&mut self, first: u64, path: &Path, here: u64) -> Result<bool, SpoolError> {
        let (next, end) = find_next_frame(path, here, self.next_seq)?;
        let later = list_segments(&self.dir)?
            .into_iter()
            .find(|(f, _)| *f > first);
        let next = next.map(|(offset, _)| offset);
        let stop = match next {
            Some(n) => n,
            None if later.is_some() => end,
            None if end > here => end,
            None => return Ok(false),
        };
        if self.seen_corrupt.insert((first, here)) {
            self.quarantine(path, here, stop)?;
        }
        match next {
            Some(n) => {
                if let Some((_, r)) = self.file.as_mut() {
                    r.seek(SeekFrom::Start(n)).map_err(io_err(path))?;
                }
            }
            None => match later {
                Some((f, later_path)) => {
                    let file = File::open(&later_path).map_err(io_err(&later_path))?;
                    self.file = Some((f, BufReader::new(file)));
                    if f > self.next_seq {
                        self.count_lost(path, f);
                        self.next_seq = f;
                    }
                }
                None => {
                    if let Some((_, r)) = self.file.as_mut() {
                        r.seek(SeekFrom::Start(end)).map_err(io_err(path))?;
                    }
                }
            },
        }
        Ok(true)
    }

    /// Counts the records between the next expected one and `seq` (found next) as lost,
    /// once: a rewind over the same gap does not count it again.
    fn count_lost(&mut self, path: &Path, seq: u64) {
        let from = self.next_seq.max(self.returned_up_to + 1);
        if seq <= from {
            return;
        }
        let lost = seq - from;
        tracing::error!(path = %path.display(), from_seq = from, to_seq = seq - 1, lost,
            "spool: records lost to corruption");
        match &self.state {
            Some(state) => {
                state.lost_records.fetch_add(lost, Ordering::SeqCst);
                state.forget(lost, 0);
            }
            None => self.skipped.0 += lost,
        }
        self.returned_up_to = self.returned_up_to.max(seq - 1);
    }

    /// Copies bytes `from..to` of a segment to `quarantine/<segment>.at-<from>`.
    fn quarantine(&mut self, path: &Path, from: u64, to: u64) -> Result<(), SpoolError> {
        let Some(state) = &self.state else {
            self.skipped.1 += to - from;
            return Ok(());
        };
        let dir = self.dir.join("quarantine");
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let target = dir.join(format!("{name}.at-{from}"));
        let copy = || -> std::io::Result<()> {
            fs::create_dir_all(&dir)?;
            let mut f = File::open(path)?;
            f.seek(SeekFrom::Start(from))?;
            let mut bytes = Vec::new();
            f.take(to - from).read_to_end(&mut bytes)?;
            fs::write(&target, &bytes)
        };
        if let Err(e) = copy() {
            // counted and logged all the same: forwarding must go on
            tracing::warn!(target = %target.display(), error = %e,
                "spool: could not copy a corrupt region aside");
        }
        state.quarantined.fetch_add(1, Ordering::SeqCst);
        state.forget(0, to - from);
        tracing::error!(segment = %path.display(), offset = from, bytes = to - from,
            expected_seq = self.next_seq, quarantine = %target.display(),
            "spool: corrupt frame quarantined; forwarding goes on after it");
        Ok(())
    }

    /// Records and bytes from the current position to the end.
    fn count_remaining(mut self) -> Result<(u64, u64), SpoolError> {
        let mut records = 0;
        let mut bytes = 0;
        loop {
            let batch = self.read(4096, u64::MAX)?;
            if batch.is_empty() {
                return Ok((records + self.skipped.0, bytes + self.skipped.1));
            }
            records += batch.len() as u64;
            bytes += batch.iter().map(|f| f.frame_bytes).sum::<u64>();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &Path, segment_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: dir.to_path_buf(),
            fsync: FsyncPolicy::Always,
            fsync_interval_ms: 10,
            max_bytes: 1 << 20,
            segment_bytes,
            max_in_flight: 100,
        }
    }

    fn rec(i: usize) -> Record {
        Record {
            topic: if i.is_multiple_of(5) {
                Topic::DeadLetter
            } else {
                Topic::Events
            },
            key: format!("user-{}", i % 3).into_bytes(),
            value: format!("{{\"n\":{i}}}").into_bytes(),
        }
    }

    #[tokio::test]
    async fn a_second_collector_on_one_spool_is_refused_until_the_first_closes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (_spool, writer, _reader) = Spool::open(&cfg(dir.path(), 1 << 20)).expect("open");
        let err = match Spool::open(&cfg(dir.path(), 1 << 20)) {
            Err(e) => e,
            Ok(_) => panic!("a second open of one spool succeeded"),
        };
        assert!(
            matches!(err, SpoolError::Locked { .. })
                && err.to_string().contains("collect.spool.dir"),
            "{err}"
        );
        writer.close().expect("close");
        let (_spool, writer, _reader) = Spool::open(&cfg(dir.path(), 1 << 20)).expect("reopen");
        writer.close().expect("close");
    }

    #[tokio::test]
    async fn appends_read_back_in_order_across_segments_and_restarts() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 200)).expect("open");
        for chunk in 0..10 {
            let recs: Vec<Record> = (chunk * 5..chunk * 5 + 5).map(rec).collect();
            spool.append(recs).await.expect("append");
        }
        assert_eq!(*spool.durable().borrow(), 50);
        assert!(list_segments(dir.path()).expect("list").len() > 1);
        let got = reader.read(30, 50).expect("read");
        assert_eq!(got.len(), 30);
        for (i, f) in got.iter().enumerate() {
            assert_eq!(f.seq, i as u64 + 1);
            assert_eq!(f.record, rec(i));
        }
        // Kafka confirmed the first 30.
        let bytes: u64 = got.iter().map(|f| f.frame_bytes).sum();
        spool.ack(30, 30, bytes);
        writer.close().expect("close");

        // Restart: the reader resumes at 31, depth is the other 20.
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 200)).expect("reopen");
        assert_eq!(spool.state().depth_records.load(Ordering::SeqCst), 20);
        let rest = reader.read(100, u64::MAX).expect("read");
        assert_eq!(rest.first().map(|f| f.seq), Some(31));
        assert_eq!(rest.len(), 20);
        assert_eq!(rest[19].record, rec(49));
        // appending continues the sequence
        assert_eq!(spool.append(vec![rec(50)]).await.expect("append"), 51);
        writer.close().expect("close");
    }

    #[tokio::test]
    async fn torn_tail_is_truncated_on_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (spool, writer, _) = Spool::open(&cfg(dir.path(), 1 << 20)).expect("open");
            spool
                .append((0..3).map(rec).collect())
                .await
                .expect("append");
            writer.close().expect("close");
        }
        let (_, path) = list_segments(dir.path())
            .expect("list")
            .pop()
            .expect("segment");
        // a crash in the middle of a frame
        let mut f = OpenOptions::new().append(true).open(&path).expect("open");
        f.write_all(&[42, 0, 0, 0, 1, 2]).expect("write");
        drop(f);
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 1 << 20)).expect("reopen");
        assert_eq!(reader.read(10, u64::MAX).expect("read").len(), 3);
        assert_eq!(spool.append(vec![rec(3)]).await.expect("append"), 4);
        let next = reader.read(10, u64::MAX).expect("read");
        assert_eq!(next.len(), 1);
        assert_eq!(next[0].record, rec(3));
        writer.close().expect("close");
    }

    #[tokio::test]
    async fn full_spool_refuses_and_acks_free_space() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(dir.path(), 1 << 20);
        c.max_bytes = 200;
        let (spool, writer, mut reader) = Spool::open(&c).expect("open");
        let mut appended = 0;
        let err = loop {
            match spool.append(vec![rec(1)]).await {
                Ok(_) => appended += 1,
                Err(e) => break e,
            }
        };
        assert!(matches!(err, SpoolError::Full { .. }), "{err}");
        assert!(appended > 0);
        let got = reader.read(100, u64::MAX).expect("read");
        let bytes = got.iter().map(|f| f.frame_bytes).sum();
        spool.ack(got.len() as u64, got.len() as u64, bytes);
        assert_eq!(spool.state().depth_bytes.load(Ordering::SeqCst), 0);
        spool.append(vec![rec(1)]).await.expect("room again");
        writer.close().expect("close");
    }

    #[tokio::test]
    async fn confirmed_segments_are_deleted() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 100)).expect("open");
        for i in 0..20 {
            spool.append(vec![rec(i)]).await.expect("append");
        }
        let before = list_segments(dir.path()).expect("list").len();
        let got = reader.read(100, u64::MAX).expect("read");
        spool.ack(20, 20, got.iter().map(|f| f.frame_bytes).sum());
        writer.close().expect("close");
        let after = list_segments(dir.path()).expect("list").len();
        assert!(before > 2 && after == 0, "before {before}, after {after}");
        assert_eq!(
            read_checkpoint(&dir.path().join("acked")).expect("ckpt"),
            20
        );
        // the sequence continues after a fully drained spool
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 100)).expect("reopen");
        assert_eq!(spool.append(vec![rec(20)]).await.expect("append"), 21);
        assert_eq!(reader.read(10, u64::MAX).expect("read")[0].seq, 21);
        writer.close().expect("close");
    }
    /// Byte offsets of the frames of a segment.
    fn frame_offsets(path: &Path) -> Vec<u64> {
        let mut r = BufReader::new(File::open(path).expect("open"));
        let mut out = Vec::new();
        let mut pos = 0;
        while let Some(f) = read_frame(&mut r).expect("read") {
            out.push(pos);
            pos += f.frame_bytes;
        }
        out
    }

    fn flip_byte(path: &Path, offset: u64) {
        let mut bytes = fs::read(path).expect("read");
        bytes[offset as usize] ^= 0xff;
        fs::write(path, bytes).expect("write");
    }

    #[tokio::test]
    async fn a_corrupt_frame_is_quarantined_and_the_frames_after_it_survive_a_restart() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let (spool, writer, _) = Spool::open(&cfg(dir.path(), 150)).expect("open");
            for i in 0..10 {
                spool.append(vec![rec(i)]).await.expect("append");
            }
            writer.close().expect("close");
        }
        let segments = list_segments(dir.path()).expect("list");
        assert!(segments.len() >= 3, "{segments:?}");
        // damage the second frame of the first segment and the second of the newest one
        let (_, first) = &segments[0];
        let (newest_first, newest) = segments.last().expect("newest").clone();
        let offsets = frame_offsets(first);
        flip_byte(first, offsets[1] + 20);
        let newest_offsets = frame_offsets(&newest);
        assert!(newest_offsets.len() >= 2, "{newest_offsets:?}");
        flip_byte(&newest, newest_offsets[0] + 30);
        let newest_len = fs::metadata(&newest).expect("meta").len();

        // reopening does not cut the newest segment at the damage
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 150)).expect("reopen");
        assert_eq!(fs::metadata(&newest).expect("meta").len(), newest_len);
        let got: Vec<u64> = reader
            .read(100, u64::MAX)
            .expect("read")
            .iter()
            .map(|f| f.seq)
            .collect();
        let lost = [2, newest_first];
        let want: Vec<u64> = (1..=10).filter(|s| !lost.contains(s)).collect();
        assert_eq!(got, want);
        let state = spool.state();
        assert_eq!(state.quarantined.load(Ordering::SeqCst), 2);
        assert_eq!(state.lost_records.load(Ordering::SeqCst), 2);
        let quarantined = fs::read_dir(dir.path().join("quarantine"))
            .expect("quarantine dir")
            .count();
        assert_eq!(quarantined, 2);
        // appends go on after the damage and are read in order
        assert_eq!(spool.append(vec![rec(10)]).await.expect("append"), 11);
        let next = reader.read(10, u64::MAX).expect("read");
        assert_eq!(next.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![11]);
        // a rewind over the damage neither fails nor quarantines it again
        reader.seek(1).expect("seek");
        assert_eq!(reader.read(100, u64::MAX).expect("read").len(), 9);
        assert_eq!(state.quarantined.load(Ordering::SeqCst), 2);
        writer.close().expect("close");
    }

    #[tokio::test]
    async fn damage_up_to_the_end_of_the_newest_segment_waits_for_the_next_frame() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (spool, writer, mut reader) = Spool::open(&cfg(dir.path(), 1 << 20)).expect("open");
        spool
            .append((0..3).map(rec).collect())
            .await
            .expect("append");
        let (_, path) = list_segments(dir.path()).expect("list").pop().expect("one");
        let offsets = frame_offsets(&path);
        flip_byte(&path, offsets[2] + 12);
        assert_eq!(reader.read(10, u64::MAX).expect("read").len(), 2);
        assert!(reader.read(10, 3).expect("read").is_empty());
        assert_eq!(spool.state().quarantined.load(Ordering::SeqCst), 1);
        spool.append(vec![rec(3)]).await.expect("append");
        let next = reader.read(10, u64::MAX).expect("read");
        assert_eq!(next.iter().map(|f| f.seq).collect::<Vec<_>>(), vec![4]);
        writer.close().expect("close");
    }
}
