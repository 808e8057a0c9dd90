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
//! Records after `acked` are sent again after a restart: a crash between a delivery and the
//! next `acked` checkpoint (at most `checkpoint_interval`) can duplicate those records in
//! Kafka, which is why `event_id` is the dedup key downstream.

use std::fs::{self, File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Seek, SeekFrom, Write};
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
    #[error("spool writer stopped after an earlier error")]
    Stopped,
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
    if !(FIXED..=256 * 1024 * 1024).contains(&len) {
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
    /// Set when the writer hit an IO error; intake stops.
    pub failed: AtomicBool,
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
        let reader = SpoolReader::open_at(&dir, acked + 1)?;
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
            file: BufWriter::with_capacity(1 << 20, file),
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
        self.state
            .depth_records
            .fetch_sub(records, Ordering::SeqCst);
        self.state.depth_bytes.fetch_sub(bytes, Ordering::SeqCst);
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

/// Returns the last valid sequence number in a segment and the length of its valid prefix.
fn scan_segment(path: &Path) -> Result<(Option<u64>, u64), SpoolError> {
    let f = File::open(path).map_err(io_err(path))?;
    let mut r = BufReader::new(f);
    let mut last = None;
    let mut len = 0u64;
    while let Some(frame) = read_frame(&mut r).map_err(io_err(path))? {
        last = Some(frame.seq);
        len += frame.frame_bytes;
    }
    Ok((last, len))
}

struct Writer {
    /// the spool's lock file, held while the writer runs
    _lock: fs::File,
    dir: PathBuf,
    policy: FsyncPolicy,
    fsync_interval: Duration,
    segment_bytes: u64,
    file: BufWriter<File>,
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

impl Writer {
    fn run(&mut self, rx: mpsc::Receiver<Command>) -> Result<(), SpoolError> {
        let result = self.run_inner(rx);
        if let Err(e) = &result {
            tracing::error!(error = %e, "spool writer stopped");
            self.state.failed.store(true, Ordering::SeqCst);
        }
        result
    }

    fn run_inner(&mut self, rx: mpsc::Receiver<Command>) -> Result<(), SpoolError> {
        let tick = CHECKPOINT_INTERVAL.min(self.fsync_interval);
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
                self.write_group(group)?;
            }
            self.maintain(close)?;
            if close {
                return Ok(());
            }
        }
    }

    fn write_group(&mut self, group: Vec<AppendRequest>) -> Result<(), SpoolError> {
        let mut buf = Vec::new();
        let mut replies = Vec::with_capacity(group.len());
        let written_ms = now_ms();
        for req in group {
            let mut last = self.next_seq - 1;
            for r in &req.records {
                encode(self.next_seq, written_ms, r, &mut buf);
                last = self.next_seq;
                self.next_seq += 1;
            }
            self.state
                .depth_records
                .fetch_add(req.records.len() as u64, Ordering::SeqCst);
            self.state
                .depth_bytes
                .fetch_add(req.bytes, Ordering::SeqCst);
            replies.push((req.reply, last));
        }
        // A group is written whole to the current segment (a frame never spans two files);
        // the segment is rolled after it once it reaches `segment_bytes`.
        let path = self.current_path.clone();
        let result = self
            .file
            .write_all(&buf)
            .and_then(|_| self.file.flush())
            .and_then(|_| {
                if self.policy == FsyncPolicy::Always {
                    self.file.get_ref().sync_data()
                } else {
                    Ok(())
                }
            });
        if let Err(source) = result {
            let err = SpoolError::Io {
                path: path.clone(),
                source,
            };
            for (reply, _) in replies {
                let _ = reply.send(Err(SpoolError::Stopped));
            }
            return Err(err);
        }
        self.current_len += buf.len() as u64;
        self.dirty = self.policy != FsyncPolicy::Always;
        let durable = self.next_seq - 1;
        self.durable.send_replace(durable);
        for (reply, last) in replies {
            let _ = reply.send(Ok(last));
        }
        if self.current_len >= self.segment_bytes {
            self.roll()?;
        }
        Ok(())
    }

    /// Starts a new segment at `next_seq`.
    fn roll(&mut self) -> Result<(), SpoolError> {
        self.file
            .flush()
            .and_then(|_| self.file.get_ref().sync_data())
            .map_err(io_err(&self.current_path))?;
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
        self.file = BufWriter::with_capacity(1 << 20, file);
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
            self.file
                .get_ref()
                .sync_data()
                .map_err(io_err(&self.current_path))?;
            self.dirty = false;
            self.last_sync = Instant::now();
        }
        let acked = self.state.acked_seq.load(Ordering::SeqCst);
        if acked != self.checkpointed
            && (closing || self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
        {
            write_checkpoint(&self.dir, acked, self.policy != FsyncPolicy::Never)?;
            self.checkpointed = acked;
            self.last_checkpoint = Instant::now();
            // A closed segment is done when the next one starts at or below acked + 1.
            let mut i = 0;
            while i < self.closed.len() {
                let next_first = self
                    .closed
                    .get(i + 1)
                    .map_or(self.current_first, |(f, _)| *f);
                if next_first <= acked + 1 {
                    let (_, path) = self.closed.remove(i);
                    fs::remove_file(&path).map_err(io_err(&path))?;
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
}

impl SpoolReader {
    /// A reader whose next record is `seq` (or the first one after it that exists).
    pub fn open_at(dir: &Path, seq: u64) -> Result<SpoolReader, SpoolError> {
        let mut reader = SpoolReader {
            dir: dir.to_path_buf(),
            file: None,
            next_seq: seq,
        };
        reader.seek(seq)?;
        Ok(reader)
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
                _ => {
                    r.seek(SeekFrom::Start(here)).map_err(io_err(&path))?;
                    break;
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
            let path = self.dir.join(segment_name(*first));
            let here = r.stream_position().map_err(io_err(&path))?;
            match read_frame(r).map_err(io_err(&path))? {
                Some(frame) => {
                    if frame.seq != self.next_seq {
                        return Err(SpoolError::Corrupt {
                            path,
                            offset: here,
                            reason: format!(
                                "expected sequence {}, found {}",
                                self.next_seq, frame.seq
                            ),
                        });
                    }
                    self.next_seq += 1;
                    out.push(frame);
                }
                None => {
                    // End of this segment (for now). Move on only if the next one exists.
                    r.seek(SeekFrom::Start(here)).map_err(io_err(&path))?;
                    let next = self.dir.join(segment_name(self.next_seq));
                    if self.next_seq != *first && next.exists() {
                        self.file = None;
                    } else {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }

    /// Records and bytes from the current position to the end.
    fn count_remaining(mut self) -> Result<(u64, u64), SpoolError> {
        let mut records = 0;
        let mut bytes = 0;
        loop {
            let batch = self.read(4096, u64::MAX)?;
            if batch.is_empty() {
                return Ok((records, bytes));
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
}
