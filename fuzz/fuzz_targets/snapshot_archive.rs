//! Snapshot archives (`clawfleet restore FILE`, later; the CLI checks every snapshot it saves):
//! clawfleet_snapshot::read on any bytes refuses or returns a snapshot whose every file is the
//! manifest's, under a plain relative path, within the size limit.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(snap) = clawfleet_snapshot::read(data) {
        assert_eq!(snap.manifest.version, clawfleet_proto::snapshot::VERSION);
        assert_eq!(snap.files.keys().collect::<Vec<_>>(), snap.manifest.files.keys().collect::<Vec<_>>());
        let total: usize = snap.files.values().map(Vec::len).sum();
        assert!(total as u64 <= clawfleet_snapshot::MAX_BYTES);
        for path in snap.files.keys() {
            assert!(!path.starts_with('/') && !path.split('/').any(|c| c == ".." || c.is_empty()), "{path}");
        }
    }
});
