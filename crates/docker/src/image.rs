//! Agent images without a registry: `FROM scratch` with the `clawfleet` binary and exactly the
//! shared libraries it links (as `ldd` lists them), built by the local Docker Engine from a tar
//! context made in memory. Nothing is pulled.
//!
//! The image runs `clawfleet agent` (configured by the environment the backend gives it), keeps
//! its workspace in `/workspace` (a volume per slot), and declares the agent's health check.

use std::path::{Path, PathBuf};

use serde_json::Value;

use crate::engine::{Engine, EngineError, query_escape};

/// Where the agent keeps its workspace inside the container.
pub const WORKSPACE: &str = "/workspace";
/// The binary's path inside the image.
pub const BINARY: &str = "/clawfleet";

/// The image a fleet uses when it names none.
pub fn default_tag() -> String {
    format!("clawfleet-agent:{}", env!("CARGO_PKG_VERSION"))
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("cannot read {path}: {error}")]
    Read { path: PathBuf, error: std::io::Error },
    #[error("cannot list the libraries {0} links: {1}")]
    Ldd(PathBuf, String),
    #[error("{0}")]
    Engine(#[from] EngineError),
    #[error("the image build failed: {0}")]
    Build(String),
    #[error("the build ended without an image id")]
    NoId,
}

/// The files of the image: the binary and its libraries, at the paths they will have inside.
pub fn contents(binary: &Path) -> Result<Vec<(PathBuf, PathBuf)>, ImageError> {
    let mut files = vec![(binary.to_path_buf(), PathBuf::from(BINARY))];
    for lib in linked_libraries(binary)? {
        files.push((lib.clone(), lib));
    }
    for extra in ["/etc/ssl/certs/ca-certificates.crt"] {
        if Path::new(extra).exists() {
            files.push((extra.into(), extra.into()));
        }
    }
    Ok(files)
}

/// The shared libraries of a dynamically linked program, the dynamic loader included.
pub fn linked_libraries(binary: &Path) -> Result<Vec<PathBuf>, ImageError> {
    let out =
        std::process::Command::new("ldd").arg(binary).output().map_err(|e| ImageError::Ldd(binary.into(), format!("running ldd: {e}")))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // A static binary: "not a dynamic executable".
        if String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable") || text.contains("statically linked") {
            return Ok(Vec::new());
        }
        return Err(ImageError::Ldd(binary.into(), String::from_utf8_lossy(&out.stderr).trim().to_owned()));
    }
    Ok(parse_ldd(&text))
}

/// `libm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x…)` and `/lib64/ld-linux-x86-64.so.2 (0x…)`.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut libs: Vec<PathBuf> = text
        .lines()
        .filter_map(|line| {
            let line = line.trim();
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    libs.sort();
    libs.dedup();
    libs
}

/// The build context: a Dockerfile and `rootfs/`.
pub fn context(files: &[(PathBuf, PathBuf)], version: &str) -> Result<Vec<u8>, ImageError> {
    let mut tar = tar::Builder::new(Vec::new());
    let dockerfile = dockerfile(version);
    let mut header = tar::Header::new_gnu();
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    tar.append_data(&mut header, "Dockerfile", dockerfile.as_bytes()).map_err(|e| ImageError::Build(e.to_string()))?;
    for (from, to) in files {
        let data = std::fs::read(from).map_err(|error| ImageError::Read { path: from.clone(), error })?;
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        let inside = Path::new("rootfs").join(to.strip_prefix("/").unwrap_or(to));
        tar.append_data(&mut header, inside, data.as_slice()).map_err(|e| ImageError::Build(e.to_string()))?;
    }
    // An empty /tmp, world-writable, for brains that need one.
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Directory);
    header.set_size(0);
    header.set_mode(0o1777);
    header.set_cksum();
    tar.append_data(&mut header, "rootfs/tmp/", std::io::empty()).map_err(|e| ImageError::Build(e.to_string()))?;
    tar.into_inner().map_err(|e| ImageError::Build(e.to_string()))
}

fn dockerfile(version: &str) -> String {
    format!(
        "FROM scratch\n\
         COPY rootfs/ /\n\
         ENV CLAWFLEET_WORKSPACE={WORKSPACE}\n\
         WORKDIR {WORKSPACE}\n\
         LABEL org.clawfleet.agent=\"{version}\"\n\
         HEALTHCHECK --interval=2s --timeout=5s --start-period=10s --retries=3 CMD [\"{BINARY}\", \"agent\", \"--health\"]\n\
         ENTRYPOINT [\"{BINARY}\", \"agent\"]\n"
    )
}

/// Builds the agent image from `binary` and tags it; `progress` gets each line of the build.
/// Returns the image id.
pub async fn build(engine: &Engine, tag: &str, binary: &Path, mut progress: impl FnMut(&str)) -> Result<String, ImageError> {
    let files = contents(binary)?;
    let body = context(&files, env!("CARGO_PKG_VERSION"))?;
    let mut id = None;
    let mut error = None;
    let path = format!("/build?t={}&rm=1&forcerm=1", query_escape(tag));
    engine
        .post_stream(&path, "application/x-tar", body, |line: Value| {
            if let Some(s) = line["stream"].as_str() {
                for l in s.lines().filter(|l| !l.trim().is_empty()) {
                    progress(l.trim_end());
                }
            }
            if let Some(i) = line["aux"]["ID"].as_str() {
                id = Some(i.to_owned());
            }
            if let Some(e) = line["error"].as_str() {
                error = Some(e.to_owned());
            }
        })
        .await?;
    if let Some(e) = error {
        return Err(ImageError::Build(e));
    }
    id.ok_or(ImageError::NoId)
}

/// Whether the engine has the image, by tag or id.
pub async fn exists(engine: &Engine, image: &str) -> Result<bool, EngineError> {
    match engine.get::<Value>(&format!("/images/{}/json", query_escape(image))).await {
        Ok(_) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ldd_output_is_parsed() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f)\n\
                    \tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x00007f)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
    }

    #[test]
    fn the_context_holds_the_dockerfile_and_the_files() {
        let dir = tempfile::tempdir().unwrap();
        let bin = dir.path().join("clawfleet");
        std::fs::write(&bin, b"binary").unwrap();
        let ctx = context(&[(bin, PathBuf::from(BINARY))], "9.9.9").unwrap();
        let mut archive = tar::Archive::new(ctx.as_slice());
        let names: Vec<String> = archive.entries().unwrap().map(|e| e.unwrap().path().unwrap().display().to_string()).collect();
        assert_eq!(names, vec!["Dockerfile", "rootfs/clawfleet", "rootfs/tmp/"]);
    }
}
