//! What the environment's test files share.

use std::path::PathBuf;

/// ../shared/data/apollo13 from the repository root, as CI lays it out.
pub fn apollo_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/apollo13");
    assert!(
        dir.join("mission_report.md").exists(),
        "the Apollo 13 corpus is expected at {} (shared/data/apollo13 beside the repository)",
        dir.display()
    );
    dir
}
