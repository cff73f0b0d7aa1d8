//! Snapshot archives (`clawfleet restore FILE`; the CLI checks every snapshot it saves):
//! clawfleet_snapshot::read on any bytes refuses or returns a snapshot whose every file is the
//! manifest's, under a plain relative path, within the size limit. And Letta Agent Files
//! (`restore FILE.af`): clawfleet_snapshot::af::from_agent_file refuses, or gives a bounded name
//! and a conversation of user and assistant messages, which make a snapshot that reads back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(imported) = clawfleet_snapshot::af::from_agent_file(data) {
        assert!(imported.name.chars().count() <= 64);
        assert!(imported.conversation.iter().all(|m| m.role == "user" || m.role == "assistant"));
        let files = clawfleet_snapshot::af::files_of(&imported);
        let origin = clawfleet_proto::snapshot::Origin {
            clawfleet_version: "0".into(),
            created_at: "t".into(),
            source: "fuzz".into(),
            fleet: imported.name.clone(),
            slot: 0,
            brain: imported.brain.clone().unwrap_or_default(),
            system_prompt: imported.system_prompt.clone(),
            fleet_version: String::new(),
        };
        let mut out = Vec::new();
        clawfleet_snapshot::write_files(&files, vec![], None, origin, &mut out).unwrap();
        let back = clawfleet_snapshot::read(out.as_slice()).unwrap();
        assert_eq!(clawfleet_snapshot::af::conversation(&back.files), imported.conversation);
    }
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
