//! Waking a file input when its files change, with inotify, instead of
//! looking every `poll_ms`.
//!
//! A [`FileWatch`] watches directories (the ones the followed files are in,
//! and the fixed directory part of each glob) for writes, creations,
//! deletions, renames and truncations. A small thread per watch blocks in
//! `poll(2)` on the inotify descriptor and on a pipe; each batch of events
//! notifies the input's wake-up [`Signal`], and closing the pipe (dropping
//! the watch) ends the thread. The input still wakes on its own at least
//! every rescan interval (new directories, idle timers), and where inotify
//! is unavailable (no kernel support, `max_user_instances` or
//! `max_user_watches` reached) it falls back to polling every `poll_ms`:
//! [`FileWatch::complete`] says whether every wanted directory is watched.

use std::collections::HashMap;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustix::event::{PollFd, PollFlags};
use rustix::fs::inotify::{self, CreateFlags, WatchFlags};

use crate::stats::Signal;

/// Bytes of inotify events read at once.
const EVENT_BUFFER_BYTES: usize = 4096;

/// Inotify watches on a set of directories, waking a [`Signal`].
#[derive(Debug)]
pub struct FileWatch {
    fd: Arc<OwnedFd>,
    /// Watched directories and their watch descriptors.
    dirs: HashMap<PathBuf, i32>,
    /// Directories wanted but not watched (the watch failed).
    missing: usize,
    /// Dropped to stop the reader thread.
    _stop: OwnedFd,
}

impl FileWatch {
    /// An inotify instance whose events notify `wake`, read by a thread named
    /// `name`.
    ///
    /// # Errors
    /// inotify is not available, or the thread could not start.
    pub fn start(wake: Arc<Signal>, name: String) -> std::io::Result<Self> {
        let fd = Arc::new(inotify::init(CreateFlags::CLOEXEC | CreateFlags::NONBLOCK)?);
        let (stop_rx, stop_tx) = rustix::pipe::pipe()?;
        let reader = fd.clone();
        std::thread::Builder::new()
            .name(name)
            .spawn(move || read_events(&reader, &stop_rx, &wake))?;
        Ok(Self { fd, dirs: HashMap::new(), missing: 0, _stop: stop_tx })
    }

    /// Watches exactly `wanted` (adding new directories, removing ones no
    /// longer wanted).
    pub fn set_dirs(&mut self, wanted: &[PathBuf]) {
        self.dirs.retain(|dir, wd| {
            let keep = wanted.contains(dir);
            if !keep {
                let _ = inotify::remove_watch(&*self.fd, *wd);
            }
            keep
        });
        self.missing = 0;
        for dir in wanted {
            if self.dirs.contains_key(dir) {
                continue;
            }
            let flags = WatchFlags::MODIFY
                | WatchFlags::CREATE
                | WatchFlags::DELETE
                | WatchFlags::MOVED_FROM
                | WatchFlags::MOVED_TO
                | WatchFlags::CLOSE_WRITE
                | WatchFlags::ATTRIB
                | WatchFlags::ONLYDIR;
            match inotify::add_watch(&*self.fd, dir.as_path(), flags) {
                Ok(wd) => {
                    self.dirs.insert(dir.clone(), wd);
                }
                Err(e) => {
                    self.missing += 1;
                    tracing::debug!(dir = %dir.display(), error = %e, "inotify watch failed; polling");
                }
            }
        }
    }

    /// Whether every wanted directory is watched (else the input polls).
    pub fn complete(&self) -> bool {
        self.missing == 0
    }
}

/// The reader thread: wakes `wake` after each batch of events, ends when the
/// stop pipe closes.
fn read_events(fd: &OwnedFd, stop: &OwnedFd, wake: &Signal) {
    let mut buf = [MaybeUninit::<u8>::uninit(); EVENT_BUFFER_BYTES];
    loop {
        let mut fds = [PollFd::new(fd, PollFlags::IN), PollFd::new(stop, PollFlags::IN)];
        match rustix::event::poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => {
                tracing::warn!(error = %e, "inotify poll failed; the input polls its files");
                return;
            }
        }
        if !fds[1].revents().is_empty() {
            return;
        }
        let mut events = inotify::Reader::new(fd, &mut buf);
        let mut any = false;
        loop {
            match events.next() {
                Ok(_) => any = true,
                Err(rustix::io::Errno::WOULDBLOCK | rustix::io::Errno::INTR) => break,
                Err(e) => {
                    tracing::warn!(error = %e, "reading inotify events failed; the input polls its files");
                    return;
                }
            }
        }
        if any {
            wake.notify();
        }
    }
}

/// The directory to watch for a glob: its longest leading part without a
/// wildcard (`/var/log/app` for `/var/log/app/*.log`, `/var/log` for
/// `/var/log/*/x.log`).
pub fn glob_dir(glob: &str) -> Option<PathBuf> {
    let mut dir = PathBuf::new();
    for part in Path::new(glob).components() {
        let text = part.as_os_str().to_string_lossy();
        if text.contains(['*', '?', '[', '{']) {
            return Some(dir);
        }
        dir.push(part);
    }
    dir.parent().map(Path::to_path_buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn glob_dirs_stop_at_the_first_wildcard() {
        assert_eq!(glob_dir("/var/log/app/*.log"), Some("/var/log/app".into()));
        assert_eq!(glob_dir("/var/log/*/x.log"), Some("/var/log".into()));
        assert_eq!(glob_dir("/var/log/syslog"), Some("/var/log".into()));
    }

    #[test]
    fn a_write_in_a_watched_directory_wakes_and_dropping_the_watch_ends_its_thread() {
        let dir = tempfile::tempdir().expect("tempdir");
        let wake = Arc::new(Signal::default());
        let mut watch = FileWatch::start(wake.clone(), "test-watch".into()).expect("inotify");
        watch.set_dirs(&[dir.path().to_path_buf()]);
        assert!(watch.complete());
        let seen = wake.count();
        std::fs::write(dir.path().join("a.log"), b"line\n").expect("write");
        let deadline = Instant::now() + Duration::from_secs(10);
        while wake.count() == seen {
            assert!(Instant::now() < deadline, "no wake-up for a write");
            wake.wait_timeout(Duration::from_millis(100));
        }
        watch.set_dirs(&[dir.path().join("missing")]);
        assert!(!watch.complete(), "a directory that does not exist is not watched");
        drop(watch);
    }
}
