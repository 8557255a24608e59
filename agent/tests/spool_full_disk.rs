//! The spool on a full filesystem: a small tmpfs the test mounts (root
//! only; otherwise each test says why it skips). A write that fails with
//! ENOSPC in the middle of an entry is cut back, so neither a reader nor a
//! reopen meets a fragment, and the same append works once space is back;
//! acknowledgements still free space on a disk too full for `state.json`,
//! without the sequence numbers going back at a reopen; and the free-space
//! reserve refuses before anything is written.

use std::path::{Path, PathBuf};
use std::process::Command;

use weir_agent::spool::{Appended, Cursor, FullPolicy, Spool, SpoolConfig, SpoolError};

/// A tmpfs of `size` mounted on a fresh directory, unmounted when dropped
/// (also when the test fails).
struct Tmpfs {
    dir: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Tmpfs {
    /// `None` (with a message) when not root or mounting fails.
    fn mount(size: &str) -> Option<Self> {
        let tmp = tempfile::tempdir().expect("tempdir");
        // A new directory belongs to the effective user.
        if std::os::unix::fs::MetadataExt::uid(&tmp.path().metadata().expect("stat")) != 0 {
            eprintln!("skipped: mounting a tmpfs needs root");
            return None;
        }
        let dir = tmp.path().join("mnt");
        std::fs::create_dir(&dir).expect("mount point");
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&dir)
            .output()
            .expect("run mount");
        if !out.status.success() {
            eprintln!("skipped: mount -t tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
            return None;
        }
        Some(Self { dir, _tmp: tmp })
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
        }
    }
}

fn free_bytes(dir: &Path) -> u64 {
    let s = rustix::fs::statvfs(dir).expect("statvfs");
    s.f_bavail * s.f_frsize
}

/// Writes `path` until the filesystem is full, or `limit` bytes.
fn ballast(path: &Path, limit: u64) {
    use std::io::Write;
    let mut f = std::fs::File::create(path).expect("ballast");
    let block = vec![0xbau8; 4096];
    let mut written = 0;
    while written < limit {
        match f.write(&block) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(_) => break,
        }
    }
}

fn segment_bytes_on_disk(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .expect("list")
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(".spool"))
        .map(|e| e.metadata().expect("stat").len())
        .sum()
}

fn config(segment_bytes: u64, min_free_bytes: u64) -> SpoolConfig {
    SpoolConfig {
        max_bytes: 64 << 20,
        segment_bytes,
        policy: FullPolicy::Block,
        min_free_bytes: Some(min_free_bytes),
    }
}

fn meta(seq: u64) -> Vec<u8> {
    format!("{{\"seq\":{seq}}}").into_bytes()
}

/// Reads every entry from the first unacknowledged one: their sequence
/// numbers.
fn read_all(spool: &Spool) -> Vec<u64> {
    let mut cursor = Cursor::at(spool.acked_below());
    let mut seqs = Vec::new();
    while let Some(e) = spool.read(&mut cursor).expect("read") {
        assert_eq!(e.meta, meta(e.seq), "entry {} intact", e.seq);
        seqs.push(e.seq);
    }
    seqs
}

#[test]
fn an_enospc_in_the_middle_of_an_entry_is_cut_back_and_the_append_works_once_space_is_back() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let dir = fs.dir.join("spool");
    let mut spool = Spool::open(&dir, config(256 * 1024, 0)).expect("open");
    // Leave about 300 KiB: entries of 40 KiB, the last one torn.
    let room = free_bytes(&fs.dir).saturating_sub(300 * 1024);
    ballast(&fs.dir.join("ballast"), room);
    let payload = vec![7u8; 40 * 1024];
    let mut written = 0u64;
    let err = loop {
        match spool.append(1, &meta(written), &payload) {
            Ok(Appended::Written { seq, .. }) => {
                assert_eq!(seq, written);
                written += 1;
            }
            Ok(Appended::Full) => panic!("the spool's bound is far away"),
            Err(e) => break e,
        }
        assert!(written < 100, "the filesystem never filled");
    };
    assert!(err.is_disk_full(), "{err}");
    assert!(written > 0);
    let whole = |n: u64| -> u64 {
        (0..n).map(|s| 28 + meta(s).len() as u64 + payload.len() as u64).sum::<u64>()
    };
    assert_eq!(segment_bytes_on_disk(&dir), whole(written), "a fragment was left after the ENOSPC");
    // Trying again changes nothing while the disk is full.
    for _ in 0..3 {
        let e = spool.append(1, &meta(written), &payload).expect_err("still full");
        assert!(e.is_disk_full(), "{e}");
    }
    assert_eq!(segment_bytes_on_disk(&dir), whole(written));
    assert_eq!(spool.next_seq(), written);
    assert_eq!(read_all(&spool), (0..written).collect::<Vec<_>>());

    // A reopen on the full disk finds every entry and nothing to cut.
    drop(spool);
    let mut spool = Spool::open(&dir, config(256 * 1024, 0)).expect("reopen on a full disk");
    assert_eq!(spool.next_seq(), written);
    assert_eq!(segment_bytes_on_disk(&dir), whole(written));
    assert_eq!(read_all(&spool), (0..written).collect::<Vec<_>>());

    // Space comes back: the same append goes through, after the last whole
    // entry, and everything reads back in order, also after a reopen.
    std::fs::remove_file(fs.dir.join("ballast")).expect("remove ballast");
    for _ in 0..3 {
        let got = spool.append(1, &meta(written), &payload).expect("append after space is back");
        assert_eq!(got, Appended::Written { seq: written, dropped_records: 0 });
        written += 1;
    }
    assert_eq!(segment_bytes_on_disk(&dir), whole(written));
    assert_eq!(whole(written), spool.stats().bytes);
    drop(spool);
    let spool = Spool::open(&dir, config(256 * 1024, 0)).expect("reopen");
    assert_eq!(read_all(&spool), (0..written).collect::<Vec<_>>());
}

#[test]
fn acknowledgements_free_space_on_a_disk_too_full_for_the_state_file() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let dir = fs.dir.join("spool");
    // Small segments, so several hold the entries.
    let mut spool = Spool::open(&dir, config(64 * 1024, 0)).expect("open");
    let payload = vec![3u8; 20 * 1024];
    let mut written = 0u64;
    while written < 20 {
        spool.append(1, &meta(written), &payload).expect("append");
        written += 1;
    }
    // Nothing is free at all now, not even a block for `state.json.tmp`.
    ballast(&fs.dir.join("ballast"), u64::MAX);
    ballast(&fs.dir.join("ballast-2"), u64::MAX);
    assert!(free_bytes(&fs.dir) < 4096, "{} bytes free", free_bytes(&fs.dir));
    let e = spool.append(1, &meta(written), &payload).expect_err("the disk is full");
    assert!(e.is_disk_full(), "{e}");
    // Everything is acknowledged: the segments go, if need be in two steps
    // (the older ones first, freeing room for the state file).
    let e = spool.ack(written).expect_err("no room for state.json");
    assert!(e.is_disk_full(), "{e}");
    // The older segments went anyway; the retry has room.
    assert!(segment_bytes_on_disk(&dir) <= 64 * 1024 + 21 * 1024, "older segments left");
    spool.ack(written).expect("the acknowledgement again");
    assert_eq!(spool.stats().entries, 0);
    assert_eq!(segment_bytes_on_disk(&dir), 0, "acknowledged segments left on disk");
    // The sequence numbers never go back, also across a reopen.
    drop(spool);
    let mut spool = Spool::open(&dir, config(64 * 1024, 0)).expect("reopen");
    assert_eq!(spool.next_seq(), written, "a reopen would reuse sequence numbers");
    assert_eq!(spool.last_meta(), Some(meta(written - 1).as_slice()));
    std::fs::remove_file(fs.dir.join("ballast")).expect("remove ballast");
    let got = spool.append(1, &meta(written), &payload).expect("append");
    assert_eq!(got, Appended::Written { seq: written, dropped_records: 0 });
}

#[test]
fn the_reserve_refuses_before_anything_is_written() {
    let Some(fs) = Tmpfs::mount("2m") else { return };
    let dir = fs.dir.join("spool");
    let free = free_bytes(&fs.dir);
    // A reserve just below the free space: the first small entry fits, a
    // large one does not.
    let mut spool = Spool::open(&dir, config(256 * 1024, free - 200 * 1024)).expect("open");
    assert_eq!(
        spool.append(1, &meta(0), b"small").expect("append"),
        Appended::Written { seq: 0, dropped_records: 0 }
    );
    let before = segment_bytes_on_disk(&dir);
    let e = spool.append(1, &meta(1), &vec![1u8; 300 * 1024]).expect_err("below the reserve");
    match &e {
        SpoolError::DiskFull { needed, reserve, free: f, .. } => {
            assert!(*f < *reserve + *needed, "{e}");
            assert!(e.to_string().contains("spool.min_free_bytes"), "{e}");
        }
        other => panic!("expected DiskFull, got {other}"),
    }
    assert!(e.is_disk_full());
    assert_eq!(segment_bytes_on_disk(&dir), before, "something was written");
    assert_eq!(spool.next_seq(), 1);
    let stats = spool.stats();
    assert_eq!(stats.min_free_bytes, free - 200 * 1024);
    assert!(stats.free_bytes.is_some_and(|f| f > 0));
}
