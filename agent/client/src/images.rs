//! `bottle images ls|import|build`: the agent's image cache, and building the provider images
//! (or a bottle's `agent_provider.dockerfile`) with `buildah` or `podman` on this machine.
//!
//! A build runs the builder here, writes an oci-archive into a private temporary directory and
//! asks the agent to import it. Importing reads a path with the agent's privileges, so it is
//! root's (`sudo bottle images build claude`); the check comes before the build, not after.

use std::path::{Path, PathBuf};
use std::process::Command;

use ::http::Method;
use bottle_api::images::{ImageInfo, ImportImage};
use bottle_manifest::{ProviderKind, ResolvedBottle};

use crate::http::{Client, ClientError};

/// The Dockerfiles of the default provider images (built with an empty context).
const CLAUDE_DOCKERFILE: &str = include_str!("../images/claude.Dockerfile");
const CODEX_DOCKERFILE: &str = include_str!("../images/codex.Dockerfile");

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error(
        "no image builder found: install buildah or podman (Debian: `apt-get install buildah`), \
         or import an image you built elsewhere with `bottle images import PATH --name NAME`"
    )]
    NoBuilder,
    #[error(
        "importing into the agent's image cache needs root: run `sudo bottle images build {0}`, \
         or ask whoever runs bottle-agent to"
    )]
    NotRoot(String),
    #[error(
        "image {name:?} is not in the agent's image cache; build it with `sudo bottle images \
         build {how}` (needs buildah or podman), or pass --image with one that is (`bottle \
         images ls`)"
    )]
    Missing { name: String, how: String },
    #[error("{}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{step} failed ({status}); its output is above")]
    Step {
        step: String,
        status: std::process::ExitStatus,
    },
    #[error("cannot run {program}: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("temporary directory: {0}")]
    Temp(std::io::Error),
    #[error(transparent)]
    Client(#[from] ClientError),
}

/// Where an image comes from: a provider's default Dockerfile or a bottle's own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    Provider(ProviderKind),
    Dockerfile(PathBuf),
}

impl ImageSource {
    /// What to put after `bottle images build` to build this.
    pub fn build_args(&self, name: &str) -> String {
        match self {
            Self::Provider(p) => p.as_str().to_owned(),
            Self::Dockerfile(path) => format!("--dockerfile {} --name {name}", path.display()),
        }
    }
}

/// A Dockerfile's cache name: `bottle-<bottle>-<hash of its text>`, so an edited Dockerfile
/// is built again and an unchanged one is not.
fn dockerfile_image_name(bottle: &str, text: &str) -> String {
    // FNV-1a: stable across Rust versions (unlike `DefaultHasher`); naming, not security.
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        hash ^= u64::from(b);
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("bottle-{bottle}-{hash:016x}")
}

/// The image a bottle's agent runs in, and how to build it.
pub fn for_bottle(bottle: &ResolvedBottle) -> Result<(String, ImageSource), ImageError> {
    match &bottle.provider.dockerfile {
        None => {
            let p = bottle.provider.template;
            Ok((format!("bottle-{}", p.as_str()), ImageSource::Provider(p)))
        }
        Some(path) => {
            let path = resolve_dockerfile(path, &bottle.file);
            let text = std::fs::read_to_string(&path).map_err(|source| ImageError::Read {
                path: path.clone(),
                source,
            })?;
            Ok((
                dockerfile_image_name(&bottle.name, &text),
                ImageSource::Dockerfile(path),
            ))
        }
    }
}

/// `~/` is the operator's home; a relative path is taken from the bottle file's directory.
fn resolve_dockerfile(path: &str, bottle_file: &Path) -> PathBuf {
    if let Some(rest) = path.strip_prefix("~/") {
        if let Some(home) = std::env::var_os("HOME") {
            return PathBuf::from(home).join(rest);
        }
    }
    let p = Path::new(path);
    if p.is_absolute() {
        return p.to_path_buf();
    }
    bottle_file
        .parent()
        .map_or_else(|| p.to_path_buf(), |dir| dir.join(p))
}

/// An image builder on this machine.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Builder {
    Buildah(PathBuf),
    Podman(PathBuf),
}

impl Builder {
    /// buildah, else podman, from `PATH`.
    pub fn find() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        let find = |name: &str| {
            std::env::split_paths(&path)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        };
        find("buildah")
            .map(Self::Buildah)
            .or_else(|| find("podman").map(Self::Podman))
    }

    /// The commands that build `dockerfile` in `context` as `tag` and write it to `archive`
    /// as an oci-archive.
    pub fn commands(
        &self,
        dockerfile: &Path,
        context: &Path,
        tag: &str,
        archive: &Path,
    ) -> Vec<(PathBuf, Vec<String>)> {
        let s = |p: &Path| p.display().to_string();
        match self {
            Self::Buildah(bin) => vec![
                (
                    bin.clone(),
                    vec![
                        "bud".into(),
                        "--format".into(),
                        "oci".into(),
                        "-f".into(),
                        s(dockerfile),
                        "-t".into(),
                        tag.into(),
                        s(context),
                    ],
                ),
                (
                    bin.clone(),
                    vec![
                        "push".into(),
                        tag.into(),
                        format!("oci-archive:{}:{tag}", s(archive)),
                    ],
                ),
            ],
            Self::Podman(bin) => vec![
                (
                    bin.clone(),
                    vec![
                        "build".into(),
                        "--format".into(),
                        "oci".into(),
                        "-f".into(),
                        s(dockerfile),
                        "-t".into(),
                        tag.into(),
                        s(context),
                    ],
                ),
                (
                    bin.clone(),
                    vec![
                        "save".into(),
                        "--format".into(),
                        "oci-archive".into(),
                        "-o".into(),
                        s(archive),
                        tag.into(),
                    ],
                ),
            ],
        }
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

pub async fn list(client: &Client) -> Result<Vec<ImageInfo>, ImageError> {
    Ok(client.get("/v1/images").await?)
}

pub async fn import(
    client: &Client,
    path: &Path,
    name: Option<&str>,
) -> Result<ImageInfo, ImageError> {
    let req = ImportImage {
        path: path.display().to_string(),
        name: name.map(str::to_owned),
    };
    Ok(client.send(Method::POST, "/v1/images", &req).await?)
}

/// Builds `source` as `name` and imports it into the agent's cache.
pub async fn build(
    client: &Client,
    source: &ImageSource,
    name: &str,
) -> Result<ImageInfo, ImageError> {
    if !is_root() {
        return Err(ImageError::NotRoot(source.build_args(name)));
    }
    let builder = Builder::find().ok_or(ImageError::NoBuilder)?;
    let tmp = tempfile::Builder::new()
        .prefix("bottle-image-build-")
        .tempdir()
        .map_err(ImageError::Temp)?;
    let (dockerfile, context) = match source {
        ImageSource::Provider(p) => {
            let path = tmp.path().join("Dockerfile");
            let text = match p {
                ProviderKind::Claude => CLAUDE_DOCKERFILE,
                ProviderKind::Codex => CODEX_DOCKERFILE,
            };
            std::fs::write(&path, text).map_err(ImageError::Temp)?;
            let context = tmp.path().join("context");
            std::fs::create_dir(&context).map_err(ImageError::Temp)?;
            (path, context)
        }
        ImageSource::Dockerfile(path) => {
            let context = path
                .parent()
                .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
            (path.clone(), context)
        }
    };
    let archive = tmp.path().join("image.tar");
    for (program, args) in builder.commands(&dockerfile, &context, name, &archive) {
        eprintln!("bottle: {} {}", program.display(), args.join(" "));
        let status = tokio::process::Command::from({
            let mut c = Command::new(&program);
            // The builder's progress goes to stderr: stdout is the workload's.
            c.args(&args)
                .stdout(std::process::Stdio::from(std::io::stderr()));
            c
        })
        .status()
        .await
        .map_err(|source| ImageError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
        if !status.success() {
            return Err(ImageError::Step {
                step: format!(
                    "{} {}",
                    program.display(),
                    args.first().map_or("", String::as_str)
                ),
                status,
            });
        }
    }
    import(client, &archive, Some(name)).await
}

/// The image `name`, built first when it is missing and this machine can build it as root.
pub async fn ensure(client: &Client, name: &str, source: &ImageSource) -> Result<(), ImageError> {
    if list(client).await?.iter().any(|i| i.answers_to(name)) {
        return Ok(());
    }
    if is_root() && Builder::find().is_some() {
        eprintln!("bottle: image {name} is not in the agent's cache; building it");
        build(client, source, name).await?;
        return Ok(());
    }
    Err(ImageError::Missing {
        name: name.to_owned(),
        how: source.build_args(name),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn dockerfile_names_follow_the_text() {
        let a = dockerfile_image_name("dev", "FROM x\n");
        assert_eq!(a, dockerfile_image_name("dev", "FROM x\n"));
        assert_ne!(a, dockerfile_image_name("dev", "FROM y\n"));
        assert!(a.starts_with("bottle-dev-") && a.len() == "bottle-dev-".len() + 16);
    }

    #[test]
    fn dockerfile_paths_resolve_from_the_bottle_file() {
        let bottle = Path::new("/h/.bot-bottle/bottles/dev.md");
        assert_eq!(
            resolve_dockerfile("images/Dockerfile", bottle),
            Path::new("/h/.bot-bottle/bottles/images/Dockerfile")
        );
        assert_eq!(resolve_dockerfile("/abs/Df", bottle), Path::new("/abs/Df"));
    }

    #[test]
    fn builder_commands_end_in_an_oci_archive() {
        let df = Path::new("/t/Dockerfile");
        let ctx = Path::new("/t/ctx");
        let out = Path::new("/t/image.tar");
        let buildah =
            Builder::Buildah("/usr/bin/buildah".into()).commands(df, ctx, "bottle-claude", out);
        assert_eq!(buildah[0].1[0], "bud");
        assert_eq!(
            buildah[1].1,
            [
                "push",
                "bottle-claude",
                "oci-archive:/t/image.tar:bottle-claude"
            ]
        );
        let podman =
            Builder::Podman("/usr/bin/podman".into()).commands(df, ctx, "bottle-claude", out);
        assert_eq!(
            podman[1].1,
            [
                "save",
                "--format",
                "oci-archive",
                "-o",
                "/t/image.tar",
                "bottle-claude"
            ]
        );
    }

    #[test]
    fn the_default_dockerfiles_install_their_tool() {
        assert!(CLAUDE_DOCKERFILE.contains("@anthropic-ai/claude-code"));
        assert!(CODEX_DOCKERFILE.contains("@openai/codex"));
    }
}
