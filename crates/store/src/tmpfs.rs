//! A small tmpfs for tests that need a full disk.

#![allow(clippy::unwrap_used)]

/// A tmpfs of `mib` MiB mounted at a fresh directory, unmounted when dropped; `None` when this
/// process may not mount (not root).
pub(crate) struct Tmpfs(pub(crate) std::path::PathBuf);

impl Tmpfs {
    pub(crate) fn mount(mib: u64) -> Option<Tmpfs> {
        let dir = tempfile::tempdir().unwrap().keep();
        let ok = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={mib}m"), "tmpfs"])
            .arg(&dir)
            .status()
            .is_ok_and(|s| s.success());
        ok.then_some(Tmpfs(dir))
    }

    pub(crate) fn resize(&self, mib: u64) {
        let status = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={mib}m")])
            .arg(&self.0)
            .status()
            .unwrap();
        assert!(status.success());
    }
}

impl Tmpfs {
    /// Writes a ballast file until the file system is full.
    pub(crate) fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.0.join("ballast")).unwrap();
        let block = vec![0u8; 64 * 1024];
        while f.write_all(&block).is_ok() {}
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}
