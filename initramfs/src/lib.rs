//! Builds the rescue initramfs (and, in [`iso`], bootable rescue media from it): a gzip-compressed
//! newc cpio holding `/init` (the static agent), the kernel modules the agent config and the
//! hardware classes need (with dependencies and `modules.dep`/`modules.alias`), the controller's
//! PUBLIC key and the agent config, and nothing else: the base image is public, and nothing in it
//! lets anyone command an agent or speak for one.
//!
//! The secret comes apart, in a node's or a repair's *part* ([`agent_part`]): a small uncompressed
//! cpio holding the agent key, loaded after the base (the kernel reads concatenated archives, the
//! later one adding files).
//!
//! Reproducible: sorted entries, mtime 0, owner 0:0, gzip without a timestamp; building twice
//! gives the same bytes. No root needed.

pub mod cli;
pub mod cpio;
pub mod elf;
pub mod iso;
pub mod kconfig;
pub mod modules;

use std::io::Write;
use std::path::{Path, PathBuf};

use lazarus_node::agent_config::{
    AgentConfig, ConfigError, CONFIG_PATH, KEY_PATH, PUBLIC_KEY_PATH,
};
use lazarus_proto::AgentKey;

use cpio::{Archive, Node};
use modules::ModuleIndex;

/// The needs every kernel is checked against.
pub const AGENT_NEEDS: &str = include_str!("../../kernel-config/agent-needs.config");

/// Inputs of a build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// An unpacked kernel package: `boot/config-<release>` and `lib/modules/<release>/`.
    pub kernel_dir: PathBuf,
    pub agent: PathBuf,
    /// The controller's public key file (`lazarus keygen --controller`).
    pub controller_pub: PathBuf,
    pub config: Option<PathBuf>,
    pub output: PathBuf,
}

/// What a build produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    pub release: String,
    pub modules: Vec<String>,
    /// Hardware-class drivers this kernel does not have (skipped).
    pub skipped_hardware: Vec<String>,
    pub cpio_bytes: u64,
    pub compressed_bytes: u64,
}

/// Everything that stops a build, each naming what is wrong.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error("reading {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("writing {0}: {1}")]
    Write(PathBuf, std::io::Error),
    #[error("{0} is not a static executable: /init must need no loader or libraries")]
    NotStatic(PathBuf),
    #[error("{0}: {1}")]
    Elf(PathBuf, elf::ElfError),
    #[error("{0}")]
    Kernel(#[from] modules::ReleaseError),
    #[error("kernel {release} lacks what the agent needs: {missing}")]
    KernelConfig { release: String, missing: String },
    #[error("modules the agent config asks for are not in kernel {release}: {missing}")]
    MissingModules { release: String, missing: String },
    #[error("agent config {0}: {1}")]
    Config(PathBuf, ConfigError),
    #[error("agent config {0} is not UTF-8")]
    ConfigEncoding(PathBuf),
    #[error("key: {0}")]
    Key(#[from] lazarus_node::keyfile::KeyFileError),
}

fn read(path: &Path) -> Result<Vec<u8>, BuildError> {
    std::fs::read(path).map_err(|e| BuildError::Read(path.to_owned(), e))
}

/// Builds the archive in memory (for tests and the writer below).
pub fn assemble(opts: &BuildOptions) -> Result<(Archive, BuildReport), BuildError> {
    let agent = read(&opts.agent)?;
    if !elf::is_static_executable(&agent).map_err(|e| BuildError::Elf(opts.agent.clone(), e))? {
        return Err(BuildError::NotStatic(opts.agent.clone()));
    }
    let public = lazarus_node::keyfile::load_public(&opts.controller_pub)?;
    let (config, config_text) = match &opts.config {
        Some(path) => {
            let text = String::from_utf8(read(path)?)
                .map_err(|_| BuildError::ConfigEncoding(path.clone()))?;
            (
                AgentConfig::parse(&text).map_err(|e| BuildError::Config(path.clone(), e))?,
                Some(text),
            )
        }
        None => (AgentConfig::default(), None),
    };
    let (release, modules_dir) = modules::find_release(&opts.kernel_dir)?;
    let kconfig_path = opts
        .kernel_dir
        .join("boot")
        .join(format!("config-{release}"));
    let kconfig = kconfig::parse(&String::from_utf8_lossy(&read(&kconfig_path)?));
    let missing = kconfig::missing(AGENT_NEEDS, &kconfig);
    if !missing.is_empty() {
        return Err(BuildError::KernelConfig {
            release,
            missing: missing.join(", "),
        });
    }
    let index =
        ModuleIndex::read(&modules_dir).map_err(|e| BuildError::Read(modules_dir.clone(), e))?;
    let (_, missing_always) = index.closure(&config.modules.always);
    if !missing_always.is_empty() {
        return Err(BuildError::MissingModules {
            release,
            missing: missing_always.join(", "),
        });
    }
    let wanted: Vec<String> = config
        .modules
        .always
        .iter()
        .chain(&config.modules.hardware)
        .cloned()
        .collect();
    let (chosen, skipped_hardware) = index.closure(&wanted);

    let mut archive = Archive::default();
    for dir in ["dev", "proc", "sys", "run", "tmp", "mnt"] {
        archive.add(dir, Node::Dir, 0o755);
    }
    archive.add("dev/console", Node::CharDevice(5, 1), 0o600);
    archive.add(
        "init",
        Node::File {
            data: agent,
            executable: true,
        },
        0o755,
    );
    archive.add(
        PUBLIC_KEY_PATH,
        Node::File {
            data: public.to_text().into_bytes(),
            executable: false,
        },
        0o644,
    );
    if let Some(text) = config_text {
        archive.add(
            CONFIG_PATH,
            Node::File {
                data: text.into_bytes(),
                executable: false,
            },
            0o644,
        );
    }
    let lib = format!("lib/modules/{release}");
    for m in &chosen {
        let data = read(&modules_dir.join(&m.rel_path))?;
        archive.add(
            &format!("{lib}/{}", m.rel_path),
            Node::File {
                data,
                executable: false,
            },
            0o644,
        );
    }
    let dep = modules::modules_dep(&index, &chosen);
    archive.add(
        &format!("{lib}/modules.dep"),
        Node::File {
            data: dep.into_bytes(),
            executable: false,
        },
        0o644,
    );
    let alias = modules::modules_alias(&chosen);
    archive.add(
        &format!("{lib}/modules.alias"),
        Node::File {
            data: alias.into_bytes(),
            executable: false,
        },
        0o644,
    );
    let report = BuildReport {
        release,
        modules: chosen.iter().map(|m| m.name.clone()).collect(),
        skipped_hardware,
        cpio_bytes: 0,
        compressed_bytes: 0,
    };
    Ok((archive, report))
}

/// Builds and writes the compressed archive to `opts.output` (atomically: temp file, rename).
pub fn build(opts: &BuildOptions) -> Result<BuildReport, BuildError> {
    let (archive, mut report) = assemble(opts)?;
    let mut cpio = Vec::new();
    report.cpio_bytes = archive
        .write(&mut cpio)
        .map_err(|e| BuildError::Write(opts.output.clone(), e))?;
    let mut gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    gz.write_all(&cpio)
        .map_err(|e| BuildError::Write(opts.output.clone(), e))?;
    let compressed = gz
        .finish()
        .map_err(|e| BuildError::Write(opts.output.clone(), e))?;
    report.compressed_bytes = compressed.len() as u64;
    let tmp = opts.output.with_extension("tmp");
    std::fs::write(&tmp, &compressed)
        .and_then(|()| std::fs::rename(&tmp, &opts.output))
        .map_err(|e| BuildError::Write(opts.output.clone(), e))?;
    Ok(report)
}

/// A node's or a repair's part: an uncompressed newc cpio holding the agent key (mode 0600), to
/// be loaded after the base image. Reproducible, like the base.
pub fn agent_part(key: &AgentKey) -> Vec<u8> {
    let mut archive = Archive::default();
    archive.add("etc", Node::Dir, 0o755);
    archive.add("etc/lazarus", Node::Dir, 0o755);
    archive.add(
        KEY_PATH,
        Node::File {
            data: key.to_hex().into_bytes(),
            executable: false,
        },
        0o600,
    );
    let mut out = Vec::new();
    // Writing to a Vec cannot fail.
    let _ = archive.write(&mut out);
    out
}

/// One image of the base and a part, as a boot loader that takes a single initrd needs: the
/// base, zeros up to a multiple of 4 bytes (the kernel looks for the next archive's header only
/// at 4-byte offsets, and skips the zeros), then the part.
pub fn with_part(base: &[u8], part: &[u8]) -> Vec<u8> {
    let mut out = base.to_vec();
    out.resize(base.len().next_multiple_of(4), 0);
    out.extend_from_slice(part);
    out
}

/// Writes the part of the agent key in `key_file` to `output` (mode 0600: it holds a secret).
pub fn write_agent_part(key_file: &Path, output: &Path) -> Result<(), BuildError> {
    use std::os::unix::fs::OpenOptionsExt;
    let key = lazarus_node::keyfile::load(key_file)?;
    let tmp = output.with_extension("tmp");
    let _ = std::fs::remove_file(&tmp);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .and_then(|mut f| f.write_all(&agent_part(&key)))
        .and_then(|()| std::fs::rename(&tmp, output))
        .map_err(|e| BuildError::Write(output.to_owned(), e))
}
