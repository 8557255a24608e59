//! The serial line of an input: a tty opened raw with rustix termios, or a
//! Unix socket it connects to; reads that time out after [`READ_TIMEOUT`]
//! so a quiet line never holds the reader up.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::config::SerialSource;

/// A read returns after this long without bytes, so acks, stop requests and
/// status updates are never held up by a quiet line.
pub const READ_TIMEOUT: Duration = Duration::from_millis(50);

/// The line: a socket or a tty.
pub(super) enum Port {
    Socket(UnixStream),
    Device(std::fs::File, std::path::PathBuf),
}

impl Port {
    pub(super) fn open(source: &SerialSource) -> io::Result<Self> {
        match source {
            SerialSource::Socket { path } => {
                let s = UnixStream::connect(path)?;
                s.set_read_timeout(Some(READ_TIMEOUT))?;
                Ok(Self::Socket(s))
            }
            SerialSource::Device { path, baud } => {
                let f = std::fs::OpenOptions::new().read(true).write(true).open(path)?;
                configure_tty(&f, *baud)?;
                Ok(Self::Device(f, path.clone()))
            }
        }
    }

    /// Reads what the line has: `None` when nothing came within
    /// [`READ_TIMEOUT`], `Some(0)` when the line closed.
    pub(super) fn read(&mut self, buf: &mut [u8]) -> io::Result<Option<usize>> {
        let r = match self {
            Self::Socket(s) => s.read(buf),
            // VMIN 0: a read with nothing to give returns 0 after VTIME; a
            // device that went away (USB unplugged) may do the same, so its
            // node is looked for then.
            Self::Device(f, path) => match f.read(buf) {
                Ok(0) if path.exists() => return Ok(None),
                other => other,
            },
        };
        match r {
            Ok(n) => Ok(Some(n)),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    pub(super) fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Self::Socket(s) => s.write_all(bytes),
            Self::Device(f, _) => f.write_all(bytes),
        }
    }
}

/// Raw 8N1 at `baud`, reads returning what is there after at most a tenth
/// of a second ([`READ_TIMEOUT`] rounded up to the tty's unit).
fn configure_tty(f: &std::fs::File, baud: u32) -> io::Result<()> {
    use rustix::termios::{ControlModes, OptionalActions, SpecialCodeIndex, tcgetattr, tcsetattr};
    let mut t = tcgetattr(f)?;
    t.make_raw();
    t.control_modes |= ControlModes::CREAD | ControlModes::CLOCAL;
    t.set_speed(baud)?;
    t.special_codes[SpecialCodeIndex::VMIN] = 0;
    t.special_codes[SpecialCodeIndex::VTIME] = 1;
    tcsetattr(f, OptionalActions::Now, &t)?;
    Ok(())
}
