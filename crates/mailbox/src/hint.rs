//! inotify as a hint, never as the mechanism: it wakes a follower the moment a worker writes to a
//! mailbox on a local disk, so polling can be slow without adding latency. On NFS or Lustre a
//! write made on another node fires nothing here, and the follower's poll finds it anyway.

use std::path::PathBuf;

use inotify::{EventMask, Inotify, WatchMask};

/// Calls `wake` whenever a file in one of `dirs` is written, created or moved in, from a thread of
/// its own that ends when every directory is gone. An error means no hint: poll alone.
pub fn watch(dirs: &[PathBuf], wake: impl Fn() + Send + 'static) -> std::io::Result<()> {
    let inotify = Inotify::init()?;
    for dir in dirs {
        inotify.watches().add(dir, WatchMask::MODIFY | WatchMask::CREATE | WatchMask::MOVED_TO | WatchMask::CLOSE_WRITE)?;
    }
    let mut watching = dirs.len();
    std::thread::Builder::new().name("mailbox-hint".into()).spawn(move || {
        let mut inotify = inotify;
        let mut buf = [0u8; 4096];
        while watching > 0 {
            let Ok(events) = inotify.read_events_blocking(&mut buf) else { return };
            for e in events {
                if e.mask.contains(EventMask::IGNORED) {
                    watching -= 1;
                }
            }
            wake();
        }
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_write_wakes_and_the_thread_ends_with_its_directory() {
        let dir = tempfile::tempdir().unwrap();
        let watched = dir.path().join("outbox");
        std::fs::create_dir(&watched).unwrap();
        let (tx, rx) = mpsc::channel();
        watch(std::slice::from_ref(&watched), move || {
            let _ = tx.send(());
        })
        .unwrap();
        std::fs::write(watched.join("1_00.jsonl"), "{}\n").unwrap();
        rx.recv_timeout(Duration::from_secs(10)).expect("woken by the write");
        std::fs::remove_dir_all(&watched).unwrap();
        // The thread ends (dropping the sender) once the directory is gone.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
                _ if std::time::Instant::now() > deadline => panic!("the hint thread outlived its directory"),
                _ => {}
            }
        }
    }
}
