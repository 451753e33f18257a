//! `herd model|alias|release|backup|gc`: the model registry from the command line.
//!
//! Every command takes `--registry URL` (default `sqlite://.herd/registry.db`, env
//! `HERD_REGISTRY`) and `--artifacts URL` (default `.herd/artifacts`, env `HERD_ARTIFACTS`), prints
//! tables for people and JSON with `--json`.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context};
use clap::{Args, Subcommand};
use herd_registry::{
    backup_verify, short_id, GcOptions, ModelFilter, NewModel, PushRequest, Registry, ReleaseDiff,
    ReleaseSpec, VersionFilter, DEFAULT_ARTIFACTS_URL, DEFAULT_REGISTRY_URL,
};
use serde::Serialize;

/// `println!` that never panics: output to a closed pipe (`herd ... | head`) is dropped.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Where the registry lives and how to print; accepted by every registry command.
#[derive(Args, Debug, Clone)]
pub struct RegistryOpts {
    /// Metadata database: sqlite://PATH (created if missing) or postgres://USER@HOST/DB.
    #[arg(long, env = "HERD_REGISTRY", default_value = DEFAULT_REGISTRY_URL, global = true)]
    pub registry: String,
    /// Artifact store: a directory (created if missing) or s3://BUCKET/PREFIX (endpoint and
    /// credentials from AWS_ENDPOINT_URL, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY).
    #[arg(long, env = "HERD_ARTIFACTS", default_value = DEFAULT_ARTIFACTS_URL, global = true)]
    pub artifacts: String,
    /// Print JSON for scripts instead of tables.
    #[arg(long, global = true)]
    pub json: bool,
    /// Who is acting, recorded in histories (default: $HERD_USER or $USER).
    #[arg(long = "as", value_name = "USER", global = true)]
    pub user: Option<String>,
}

impl RegistryOpts {
    fn user(&self) -> String {
        self.user
            .clone()
            .or_else(|| std::env::var("HERD_USER").ok())
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "unknown".into())
    }

    async fn open(&self) -> anyhow::Result<Registry> {
        herd_server::serving::open_registry(&self.registry, &self.artifacts)
            .await
            .with_context(|| {
                format!(
                    "cannot open the registry (--registry {}, --artifacts {})",
                    herd_registry::db::redact_url(&self.registry),
                    self.artifacts
                )
            })
    }
}

/// The registry command groups, flattened into `herd`'s top level.
#[derive(Subcommand, Debug)]
pub enum RegistryCommand {
    /// Models and versions: create, push (with lineage), list, search, show.
    Model(ModelArgs),
    /// Named pointers to versions (production, last-good, ...) with full history.
    Alias(AliasArgs),
    /// Releases: immutable sets of model versions, identified by a content hash; channels.
    Release(ReleaseArgs),
    /// Back up, verify and restore the registry metadata.
    Backup(BackupArgs),
    /// Delete artifacts no release, alias or recent version needs (try --dry-run first).
    Gc(GcArgs),
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    #[command(flatten)]
    opts: RegistryOpts,
    #[command(subcommand)]
    cmd: ModelCmd,
}

#[derive(Subcommand, Debug)]
enum ModelCmd {
    /// Create a model (a name that versions are pushed to).
    Create {
        /// Model name: letters, digits, '.', '_' or '-'.
        name: String,
        #[command(flatten)]
        meta: ModelMeta,
    },
    /// Push an ONNX file, or a model directory as a bundle, as the model's next version.
    ///
    /// A directory is `DIR/model.onnx` with its neighbours (config.toml, tokenizer.json and the
    /// tokenizer's other files, external data), or a repository model `DIR/<n>/model.onnx` (the
    /// highest n) plus the files directly in DIR. The signature of model.onnx is read and
    /// stored; lineage references must be immutable (commit ids or content hashes, never a
    /// branch name or "latest").
    Push {
        /// Model name.
        name: String,
        /// Path to the .onnx file or the model directory.
        file: PathBuf,
        /// Data lineage: git:<sha>, dvc:<md5>, lakefs://<repo>/<commit>, dolt:<commit>, sha256:<hex>.
        #[arg(long)]
        data_ref: Option<String>,
        /// Code lineage: the git commit sha (40 or 64 hex) the model was trained with.
        #[arg(long)]
        code_ref: Option<String>,
        /// Evaluation metric NAME=VALUE (repeatable), e.g. --metric auc=0.91.
        #[arg(long = "metric", value_name = "NAME=VALUE")]
        metrics: Vec<String>,
        /// Create the model if it does not exist yet.
        #[arg(long)]
        create: bool,
        #[command(flatten)]
        meta: ModelMeta,
    },
    /// List models, filtered and paginated.
    List {
        /// Only this tenant's models.
        #[arg(long)]
        tenant: Option<String>,
        /// Only models with this tag.
        #[arg(long)]
        tag: Option<String>,
        /// Only models whose name contains this text.
        #[arg(long)]
        search: Option<String>,
        /// Page size (max 1000).
        #[arg(long, default_value_t = 50)]
        limit: u64,
        /// Skip this many models (the `next_offset` of the previous page).
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Search versions across models by lineage or digest, newest first.
    Versions {
        /// Only this model's versions.
        model: Option<String>,
        /// Versions trained on this data reference.
        #[arg(long)]
        data_ref: Option<String>,
        /// Versions built from this code reference.
        #[arg(long)]
        code_ref: Option<String>,
        /// Versions with this artifact digest (sha256:<hex>).
        #[arg(long)]
        digest: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// Push many models at once: every `DIR/<model>.onnx`, and every `DIR/<model>/<n>/` of a
    /// herd/Triton directory repository (versions in ascending order), each version as a bundle
    /// with the model's config.toml and tokenizer files. Models are created as needed. Versions
    /// that fail are reported and the rest still go in.
    Import {
        /// Directory to import.
        dir: PathBuf,
        /// Data lineage applied to every version (see `push`).
        #[arg(long)]
        data_ref: Option<String>,
        /// Code lineage applied to every version.
        #[arg(long)]
        code_ref: Option<String>,
        /// Tenant of the models created.
        #[arg(long)]
        tenant: Option<String>,
        /// Pushes in flight at once.
        #[arg(long, default_value_t = 4)]
        jobs: usize,
    },
    /// Show a model (versions and aliases), or one version in full with --version.
    Show {
        name: String,
        /// A version number, alias or `latest`: show that version with its signature.
        #[arg(long)]
        version: Option<String>,
    },
}

#[derive(Args, Debug, Default)]
struct ModelMeta {
    /// Tenant (customer) the model belongs to.
    #[arg(long)]
    tenant: Option<String>,
    /// Free-text description.
    #[arg(long, default_value = "")]
    description: String,
    /// Tag (repeatable).
    #[arg(long = "tag")]
    tags: Vec<String>,
}

#[derive(Args, Debug)]
pub struct AliasArgs {
    #[command(flatten)]
    opts: RegistryOpts,
    #[command(subcommand)]
    cmd: AliasCmd,
}

#[derive(Subcommand, Debug)]
enum AliasCmd {
    /// Point MODEL's ALIAS at VERSION (recorded in the alias history).
    Set {
        model: String,
        alias: String,
        version: i64,
    },
    /// Who moved MODEL's aliases when, from which version to which.
    History {
        model: String,
        alias: Option<String>,
    },
    /// Current aliases (of one model, or all).
    List { model: Option<String> },
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    opts: RegistryOpts,
    #[command(subcommand)]
    cmd: ReleaseCmd,
}

#[derive(Subcommand, Debug)]
enum ReleaseCmd {
    /// Create a release: from every model's ALIAS, from a file, or from a channel's current
    /// release plus changes. Its id is the SHA-256 of the canonical (RFC 8785) JSON of
    /// {model: {version, digest}}; the same set always gets the same id.
    Create {
        /// Start from every model's alias with this name (e.g. production).
        #[arg(long, conflicts_with_all = ["from_file", "from_channel"])]
        from_alias: Option<String>,
        /// Start from a file: JSON {"model": version-or-alias, ...} or lines `model=version`.
        #[arg(long, conflicts_with = "from_channel")]
        from_file: Option<PathBuf>,
        /// Start from this channel's current release (e.g. production).
        #[arg(long)]
        from_channel: Option<String>,
        /// Set MODEL=VERSION (a number, alias or `latest`); repeatable.
        #[arg(long = "set", value_name = "MODEL=VERSION")]
        set: Vec<String>,
        /// Drop MODEL from the set; repeatable.
        #[arg(long = "remove", value_name = "MODEL")]
        remove: Vec<String>,
        /// A note stored with the release.
        #[arg(long)]
        note: Option<String>,
        /// Also promote the new release to this channel.
        #[arg(long)]
        promote: Option<String>,
    },
    /// Show a release (id, short id, a prefix, or @channel).
    Show { release: String },
    /// List releases, newest first.
    List {
        #[arg(long, default_value_t = 50)]
        limit: u64,
        #[arg(long, default_value_t = 0)]
        offset: u64,
    },
    /// What changed from release FROM to release TO (added, removed, changed models).
    Diff { from: String, to: String },
    /// Point CHANNEL at a release.
    Promote {
        release: String,
        /// Channel name, e.g. production.
        #[arg(long, default_value = "production")]
        channel: String,
    },
    /// Move CHANNEL back to its previous release, or with --model roll back one model (a new
    /// release with that one entry changed, promoted to the channel).
    Rollback {
        #[arg(long, default_value = "production")]
        channel: String,
        /// Roll back only this model.
        #[arg(long)]
        model: Option<String>,
        /// With --model: the version to go back to (default: its version in the channel's
        /// previous release that had a different one).
        #[arg(long, requires = "model")]
        to_version: Option<String>,
    },
    /// Recompute release ids from their entries (one release, or all).
    Verify { release: Option<String> },
    /// Write a self-contained model repository of RELEASE into DIR (`<model>/<version>/...`,
    /// `<model>/config.toml`, `release.json` with the id, entries and lineage), for
    /// `herd serve --repo DIR` with no registry, e.g. inside an image tagged with the short id.
    Export {
        release: String,
        /// Directory to create (must not exist or be empty).
        dir: PathBuf,
    },
    /// A channel's current release and history.
    Channel {
        #[arg(default_value = "production")]
        channel: String,
    },
}

#[derive(Args, Debug)]
pub struct BackupArgs {
    #[command(flatten)]
    opts: RegistryOpts,
    #[command(subcommand)]
    cmd: BackupCmd,
}

#[derive(Subcommand, Debug)]
enum BackupCmd {
    /// Write a consistent snapshot of the metadata and the list of referenced digests to DIR.
    Create {
        dir: PathBuf,
        /// Also copy every referenced artifact into DIR/artifacts (restore puts them back).
        #[arg(long)]
        with_artifacts: bool,
    },
    /// Restore DIR into a scratch database and check it: checksums, every referenced artifact
    /// exists in --artifacts, aliases point at real versions, release ids recompute.
    Verify { dir: PathBuf },
    /// Load DIR into --registry (which must be empty unless --replace).
    Restore {
        dir: PathBuf,
        /// Delete the target registry's metadata first.
        #[arg(long)]
        replace: bool,
    },
}

#[derive(Args, Debug)]
pub struct GcArgs {
    #[command(flatten)]
    opts: RegistryOpts,
    /// Keep the artifacts of each model's newest N versions.
    #[arg(long, default_value_t = 3)]
    keep_last: u64,
    /// Never delete artifacts younger than this (e.g. 30m, 1h, 2d); protects pushes in flight.
    #[arg(long, default_value = "1h")]
    min_age: String,
    /// Only list what would be deleted.
    #[arg(long)]
    dry_run: bool,
}

/// Runs a registry command on a fresh tokio runtime.
pub fn run(cmd: RegistryCommand) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    rt.block_on(run_async(cmd))
}

pub async fn run_async(cmd: RegistryCommand) -> anyhow::Result<()> {
    match cmd {
        RegistryCommand::Model(a) => model(a).await,
        RegistryCommand::Alias(a) => alias(a).await,
        RegistryCommand::Release(a) => release(a).await,
        RegistryCommand::Backup(a) => backup(a).await,
        RegistryCommand::Gc(a) => gc(a).await,
    }
}

// ----- output helpers -------------------------------------------------------------------------

fn print_json<T: Serialize>(v: &T) -> anyhow::Result<()> {
    out!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

/// Prints an aligned table.
fn table(headers: &[&str], rows: &[Vec<String>]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            if i < widths.len() {
                widths[i] = widths[i].max(c.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut s = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{:w$}  ", c, w = widths[i]));
            }
        }
        out!("{}", s.trim_end());
    };
    line(headers.iter().map(|h| h.to_string()).collect());
    for r in rows {
        line(r.clone());
    }
}

fn short_digest(d: &str) -> String {
    let hex = d.strip_prefix("sha256:").unwrap_or(d);
    format!("sha256:{}", &hex[..hex.len().min(12)])
}

fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn opt(s: &Option<String>) -> String {
    s.clone().unwrap_or_else(|| "-".into())
}

fn parse_kv(s: &str, what: &str) -> anyhow::Result<(String, String)> {
    let (k, v) = s
        .split_once('=')
        .ok_or_else(|| anyhow!("{what} '{s}' must look like NAME=VALUE"))?;
    if k.trim().is_empty() || v.trim().is_empty() {
        bail!("{what} '{s}' must look like NAME=VALUE");
    }
    Ok((k.trim().to_string(), v.trim().to_string()))
}

/// `30s`, `15m`, `1h`, `2d`, or plain seconds.
fn parse_age(s: &str) -> anyhow::Result<std::time::Duration> {
    let s = s.trim();
    let (num, unit) = s
        .find(|c: char| !c.is_ascii_digit())
        .map(|i| s.split_at(i))
        .unwrap_or((s, "s"));
    let n: u64 = num
        .parse()
        .map_err(|_| anyhow!("--min-age '{s}' is not a duration; use e.g. 30m, 1h, 2d"))?;
    Ok(match unit {
        "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        "h" => std::time::Duration::from_secs(n * 3600),
        "d" => std::time::Duration::from_secs(n * 86400),
        _ => bail!("--min-age '{s}' has an unknown unit; use s, m, h or d"),
    })
}

// ----- model ----------------------------------------------------------------------------------

async fn model(a: ModelArgs) -> anyhow::Result<()> {
    let o = &a.opts;
    let reg = o.open().await?;
    match a.cmd {
        ModelCmd::Create { name, meta } => {
            let m = reg
                .create_model(&NewModel {
                    name,
                    tenant: meta.tenant,
                    description: meta.description,
                    tags: meta.tags,
                })
                .await?;
            if o.json {
                print_json(&m)?;
            } else {
                out!("created model {}", m.name);
            }
        }
        ModelCmd::Push {
            name,
            file,
            data_ref,
            code_ref,
            metrics,
            create,
            meta,
        } => {
            let mut parsed = BTreeMap::new();
            for m in &metrics {
                let (k, v) = parse_kv(m, "--metric")?;
                let v: f64 = v
                    .parse()
                    .map_err(|_| anyhow!("--metric '{m}': the value must be a number"))?;
                parsed.insert(k, v);
            }
            let (bytes, files) = herd_registry::import::read_push_path(&file)?;
            let total: u64 =
                bytes.len() as u64 + files.values().map(|b| b.len() as u64).sum::<u64>();
            let bar = if o.json {
                indicatif::ProgressBar::hidden()
            } else {
                let bar = indicatif::ProgressBar::new(total);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
                    .progress_chars("=> "),
                );
                bar.set_message(format!("uploading {}", file.display()));
                bar
            };
            let req = PushRequest {
                model: name.clone(),
                bytes,
                metrics: parsed,
                data_ref,
                code_ref,
                created_by: o.user(),
                create: create.then(|| NewModel {
                    name: name.clone(),
                    tenant: meta.tenant,
                    description: meta.description,
                    tags: meta.tags,
                }),
                files,
                as_tenant: None,
            };
            let progress_bar = bar.clone();
            let out = reg
                .push_with_progress(req, &move |n| progress_bar.set_position(n))
                .await;
            bar.finish_and_clear();
            let out = out.with_context(|| format!("push of {} failed", file.display()))?;
            if o.json {
                print_json(&out)?;
            } else if out.created {
                out!(
                    "pushed {}@{} {} ({}{})",
                    out.version.model,
                    out.version.version,
                    short_digest(&out.version.digest),
                    human_bytes(out.version.size),
                    if out.uploaded {
                        ""
                    } else {
                        ", artifact already stored"
                    }
                );
            } else {
                out!(
                    "{}@{} already has these bytes and lineage; nothing pushed",
                    out.version.model,
                    out.version.version
                );
            }
        }
        ModelCmd::List {
            tenant,
            tag,
            search,
            limit,
            offset,
        } => {
            let page = reg
                .list_models(&ModelFilter {
                    tenant,
                    tag,
                    name_contains: search,
                    limit: Some(limit),
                    offset: Some(offset),
                })
                .await?;
            if o.json {
                print_json(&page)?;
            } else {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|m| {
                        vec![
                            m.name.clone(),
                            opt(&m.tenant),
                            m.latest_version
                                .map(|v| v.to_string())
                                .unwrap_or("-".into()),
                            m.version_count.to_string(),
                            m.tags.join(","),
                            m.description.clone(),
                        ]
                    })
                    .collect();
                table(
                    &[
                        "MODEL",
                        "TENANT",
                        "LATEST",
                        "VERSIONS",
                        "TAGS",
                        "DESCRIPTION",
                    ],
                    &rows,
                );
                if let Some(n) = page.next_offset {
                    out!("(more: --offset {n})");
                }
            }
        }
        ModelCmd::Versions {
            model,
            data_ref,
            code_ref,
            digest,
            limit,
            offset,
        } => {
            let page = reg
                .list_versions(&VersionFilter {
                    model,
                    data_ref,
                    code_ref,
                    digest,
                    limit: Some(limit),
                    offset: Some(offset),
                })
                .await?;
            if o.json {
                print_json(&page)?;
            } else {
                print_versions(&page.items);
                if let Some(n) = page.next_offset {
                    out!("(more: --offset {n})");
                }
            }
        }
        ModelCmd::Import {
            dir,
            data_ref,
            code_ref,
            tenant,
            jobs,
        } => {
            import(&reg, o, &dir, data_ref, code_ref, tenant, jobs).await?;
        }
        ModelCmd::Show { name, version } => {
            if let Some(sel) = version {
                let v = reg.resolve(&name, &sel).await?;
                if o.json {
                    print_json(&v)?;
                } else {
                    out!("model:      {}", v.model);
                    out!("version:    {}", v.version);
                    out!("digest:     {}", v.digest);
                    out!("size:       {}", human_bytes(v.size));
                    out!("framework:  {}", v.framework);
                    out!("data ref:   {}", opt(&v.data_ref));
                    out!("code ref:   {}", opt(&v.code_ref));
                    out!("created:    {} by {}", v.created_at, v.created_by);
                    if let Some(at) = &v.artifact_deleted_at {
                        out!("artifact:   garbage-collected at {at}");
                    }
                    if !v.metrics.is_empty() {
                        let m: Vec<String> =
                            v.metrics.iter().map(|(k, x)| format!("{k}={x}")).collect();
                        out!("metrics:    {}", m.join(" "));
                    }
                    out!(
                        "signature:\n{}",
                        serde_json::to_string_pretty(&v.signature)?
                    );
                }
                return Ok(());
            }
            let m = reg.model(&name).await?;
            let versions = reg
                .list_versions(&VersionFilter {
                    model: Some(name.clone()),
                    limit: Some(1000),
                    ..Default::default()
                })
                .await?;
            let aliases = reg.aliases(Some(&name), None).await?;
            if o.json {
                print_json(&serde_json::json!({
                    "model": m, "versions": versions.items, "aliases": aliases
                }))?;
            } else {
                out!(
                    "{}  tenant={}  tags={}  created {}",
                    m.name,
                    opt(&m.tenant),
                    m.tags.join(","),
                    m.created_at
                );
                if !m.description.is_empty() {
                    out!("{}", m.description);
                }
                out!();
                print_versions(&versions.items);
                if !aliases.is_empty() {
                    out!();
                    let rows: Vec<Vec<String>> = aliases
                        .iter()
                        .map(|a| {
                            vec![
                                a.alias.clone(),
                                a.version.to_string(),
                                a.updated_at.clone(),
                                a.updated_by.clone(),
                            ]
                        })
                        .collect();
                    table(&["ALIAS", "VERSION", "UPDATED", "BY"], &rows);
                }
            }
        }
    }
    reg.close().await;
    Ok(())
}

async fn import(
    reg: &Registry,
    o: &RegistryOpts,
    dir: &std::path::Path,
    data_ref: Option<String>,
    code_ref: Option<String>,
    tenant: Option<String>,
    jobs: usize,
) -> anyhow::Result<()> {
    let files = herd_registry::import::import_plan(dir)?.len();
    let bar = if o.json {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(files as u64)
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("importing [{bar:30}] {pos}/{len} {per_sec} {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    let opts = herd_registry::import::ImportOptions {
        data_ref,
        code_ref,
        tenant,
        created_by: o.user(),
        jobs,
    };
    let tick = bar.clone();
    let r = reg
        .import_repository(dir, &opts, &move || tick.inc(1))
        .await;
    bar.finish_and_clear();
    let r = r?;
    let secs = r.seconds;
    if o.json {
        print_json(&r)?;
    } else {
        for f in &r.failed {
            out!("FAILED {} ({}): {}", f.model, f.file, f.error);
        }
        let total = r.pushed + r.unchanged + r.failed.len();
        out!(
            "imported {} files in {secs:.2}s ({:.1} ms each): {} new versions, {} unchanged, {} failed",
            total,
            secs * 1000.0 / total.max(1) as f64,
            r.pushed,
            r.unchanged,
            r.failed.len()
        );
    }
    if !r.failed.is_empty() {
        bail!(
            "{} file(s) could not be imported (listed above)",
            r.failed.len()
        );
    }
    Ok(())
}

fn print_versions(items: &[herd_registry::ModelVersion]) {
    let rows: Vec<Vec<String>> = items
        .iter()
        .map(|v| {
            vec![
                v.model.clone(),
                v.version.to_string(),
                short_digest(&v.digest),
                human_bytes(v.size),
                opt(&v.data_ref),
                opt(&v.code_ref),
                v.created_at.clone(),
                if v.artifact_deleted_at.is_some() {
                    "collected".into()
                } else {
                    "".into()
                },
            ]
        })
        .collect();
    table(
        &[
            "MODEL", "VERSION", "DIGEST", "SIZE", "DATA", "CODE", "CREATED", "",
        ],
        &rows,
    );
}

// ----- alias ----------------------------------------------------------------------------------

async fn alias(a: AliasArgs) -> anyhow::Result<()> {
    let o = &a.opts;
    let reg = o.open().await?;
    match a.cmd {
        AliasCmd::Set {
            model,
            alias,
            version,
        } => {
            let e = reg.set_alias(&model, &alias, version, &o.user()).await?;
            if o.json {
                print_json(&e)?;
            } else {
                out!(
                    "{}:{} -> {} (was {})",
                    e.model,
                    e.alias,
                    e.to_version,
                    e.from_version
                        .map(|v| v.to_string())
                        .unwrap_or("unset".into())
                );
            }
        }
        AliasCmd::History { model, alias } => {
            let h = reg.alias_history(&model, alias.as_deref()).await?;
            if o.json {
                print_json(&h)?;
            } else {
                let rows: Vec<Vec<String>> = h
                    .iter()
                    .map(|e| {
                        vec![
                            e.at.clone(),
                            e.alias.clone(),
                            e.from_version.map(|v| v.to_string()).unwrap_or("-".into()),
                            e.to_version.to_string(),
                            e.by.clone(),
                        ]
                    })
                    .collect();
                table(&["AT", "ALIAS", "FROM", "TO", "BY"], &rows);
            }
        }
        AliasCmd::List { model } => {
            let list = reg.aliases(model.as_deref(), None).await?;
            if o.json {
                print_json(&list)?;
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|a| {
                        vec![
                            a.model.clone(),
                            a.alias.clone(),
                            a.version.to_string(),
                            a.updated_at.clone(),
                            a.updated_by.clone(),
                        ]
                    })
                    .collect();
                table(&["MODEL", "ALIAS", "VERSION", "UPDATED", "BY"], &rows);
            }
        }
    }
    reg.close().await;
    Ok(())
}

// ----- release --------------------------------------------------------------------------------

/// Reads a release file: JSON `{"model": 3 | "alias" | {"version": 3}}` or `model=version` lines.
fn read_release_file(path: &PathBuf) -> anyhow::Result<BTreeMap<String, String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read release file {}", path.display()))?;
    let mut out = BTreeMap::new();
    if text.trim_start().starts_with('{') {
        let v: serde_json::Value = serde_json::from_str(&text)
            .with_context(|| format!("{} is not valid JSON", path.display()))?;
        let obj = v
            .as_object()
            .ok_or_else(|| anyhow!("{} must hold a JSON object", path.display()))?;
        for (model, sel) in obj {
            let sel = match sel {
                serde_json::Value::Number(n) => n.to_string(),
                serde_json::Value::String(s) => s.clone(),
                serde_json::Value::Object(o) => match o.get("version") {
                    Some(serde_json::Value::Number(n)) => n.to_string(),
                    Some(serde_json::Value::String(s)) => s.clone(),
                    _ => bail!("entry '{model}' in {} needs a \"version\"", path.display()),
                },
                _ => bail!(
                    "entry '{model}' in {} must be a version number, an alias or {{\"version\": N}}",
                    path.display()
                ),
            };
            out.insert(model.clone(), sel);
        }
    } else {
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (m, v) =
                parse_kv(line, "line").with_context(|| format!("{}:{}", path.display(), i + 1))?;
            out.insert(m, v);
        }
    }
    Ok(out)
}

fn print_diff(d: &ReleaseDiff) {
    out!("{} -> {}", short_id(&d.from), short_id(&d.to));
    let mut rows = Vec::new();
    for (m, e) in &d.added {
        rows.push(vec![
            "+".into(),
            m.clone(),
            "-".into(),
            e.version.to_string(),
            short_digest(&e.digest),
        ]);
    }
    for (m, e) in &d.removed {
        rows.push(vec![
            "-".into(),
            m.clone(),
            e.version.to_string(),
            "-".into(),
            short_digest(&e.digest),
        ]);
    }
    for (m, (a, b)) in &d.changed {
        rows.push(vec![
            "~".into(),
            m.clone(),
            a.version.to_string(),
            b.version.to_string(),
            short_digest(&b.digest),
        ]);
    }
    table(&["", "MODEL", "FROM", "TO", "DIGEST"], &rows);
    out!(
        "{} added, {} removed, {} changed, {} unchanged",
        d.added.len(),
        d.removed.len(),
        d.changed.len(),
        d.unchanged
    );
}

async fn release(a: ReleaseArgs) -> anyhow::Result<()> {
    let o = &a.opts;
    let reg = o.open().await?;
    match a.cmd {
        ReleaseCmd::Create {
            from_alias,
            from_file,
            from_channel,
            set,
            remove,
            note,
            promote,
        } => {
            let mut entries: BTreeMap<String, String> = if let Some(alias) = &from_alias {
                reg.spec_from_alias(alias).await?
            } else if let Some(file) = &from_file {
                read_release_file(file)?
            } else if let Some(ch) = &from_channel {
                reg.channel_release(ch)
                    .await?
                    .ok_or_else(|| {
                        anyhow!("channel '{ch}' has no release yet; create one with --set or --from-alias")
                    })?
                    .entries
                    .into_iter()
                    .map(|(m, e)| (m, e.version.to_string()))
                    .collect()
            } else {
                BTreeMap::new()
            };
            for s in &set {
                let (m, v) = parse_kv(s, "--set")?;
                entries.insert(m, v);
            }
            for m in &remove {
                if entries.remove(m).is_none() {
                    bail!("--remove {m}: the model is not in the set");
                }
            }
            let base = from_channel.as_ref().map(|c| format!("@{c}"));
            let (r, created) = reg
                .create_release(&ReleaseSpec {
                    entries,
                    note,
                    created_by: o.user(),
                })
                .await?;
            let promoted = match &promote {
                Some(ch) => Some(reg.promote(ch, &r.id, &o.user()).await?),
                None => None,
            };
            if o.json {
                print_json(&serde_json::json!({
                    "release": r, "created": created, "promoted": promoted
                }))?;
            } else {
                out!(
                    "{} release {} ({} models){}",
                    if created { "created" } else { "existing" },
                    r.short_id,
                    r.entries.len(),
                    promoted
                        .as_ref()
                        .map(|e| format!(", promoted to {}", e.channel))
                        .unwrap_or_default()
                );
                out!("id: {}", r.id);
                if let Some(b) = base {
                    if let Ok(d) = reg.diff_releases(&b, &r.id).await {
                        print_diff(&d);
                    }
                }
            }
        }
        ReleaseCmd::Show { release } => {
            let r = reg.release(&release).await?;
            if o.json {
                print_json(&r)?;
            } else {
                out!("release {}  ({})", r.short_id, r.id);
                out!("created {} by {}", r.created_at, r.created_by);
                if let Some(n) = &r.note {
                    out!("note: {n}");
                }
                let rows: Vec<Vec<String>> = r
                    .entries
                    .iter()
                    .map(|(m, e)| vec![m.clone(), e.version.to_string(), e.digest.clone()])
                    .collect();
                table(&["MODEL", "VERSION", "DIGEST"], &rows);
            }
        }
        ReleaseCmd::List { limit, offset } => {
            let page = reg.list_releases(Some(limit), Some(offset)).await?;
            if o.json {
                print_json(&page)?;
            } else {
                let rows: Vec<Vec<String>> = page
                    .items
                    .iter()
                    .map(|r| {
                        vec![
                            r.short_id.clone(),
                            r.model_count.to_string(),
                            r.channels.join(","),
                            r.created_at.clone(),
                            r.created_by.clone(),
                            opt(&r.note),
                        ]
                    })
                    .collect();
                table(
                    &["RELEASE", "MODELS", "CHANNELS", "CREATED", "BY", "NOTE"],
                    &rows,
                );
                if let Some(n) = page.next_offset {
                    out!("(more: --offset {n})");
                }
            }
        }
        ReleaseCmd::Diff { from, to } => {
            let d = reg.diff_releases(&from, &to).await?;
            if o.json {
                print_json(&d)?;
            } else {
                print_diff(&d);
            }
        }
        ReleaseCmd::Promote { release, channel } => {
            let e = reg.promote(&channel, &release, &o.user()).await?;
            if o.json {
                print_json(&e)?;
            } else if e.action == "unchanged" {
                out!("{channel} already serves {}", short_id(&e.to_release));
            } else {
                out!(
                    "{channel}: {} -> {}",
                    e.from_release.as_deref().map(short_id).unwrap_or("none"),
                    short_id(&e.to_release)
                );
            }
        }
        ReleaseCmd::Rollback {
            channel,
            model,
            to_version,
        } => match model {
            Some(m) => {
                let (r, e) = reg
                    .rollback_model(&channel, &m, to_version.as_deref(), &o.user())
                    .await?;
                if o.json {
                    print_json(&serde_json::json!({"release": r, "event": e}))?;
                } else {
                    out!(
                        "{channel}: {} -> {} ({m} now at version {})",
                        e.from_release.as_deref().map(short_id).unwrap_or("none"),
                        short_id(&e.to_release),
                        r.entries.get(&m).map(|x| x.version).unwrap_or_default()
                    );
                }
            }
            None => {
                let e = reg.rollback(&channel, &o.user()).await?;
                if o.json {
                    print_json(&e)?;
                } else {
                    out!(
                        "{channel} rolled back: {} -> {}",
                        e.from_release.as_deref().map(short_id).unwrap_or("none"),
                        short_id(&e.to_release)
                    );
                }
            }
        },
        ReleaseCmd::Export { release, dir } => {
            let r = herd_server::serving::export_release(&reg, &release, &dir).await?;
            if o.json {
                print_json(&r)?;
            } else {
                out!(
                    "exported release {} ({} models) to {}",
                    r.short_id,
                    r.entries.len(),
                    dir.display()
                );
            }
        }
        ReleaseCmd::Verify { release } => {
            let (n, problems) = reg.verify_releases(release.as_deref()).await?;
            if o.json {
                print_json(&serde_json::json!({"releases": n, "problems": problems}))?;
            } else {
                for p in &problems {
                    out!("{}: {}: {}", p.kind, p.subject, p.detail);
                }
                out!("{n} release(s) checked, {} problem(s)", problems.len());
            }
            if !problems.is_empty() {
                bail!("{} release(s) failed verification", problems.len());
            }
        }
        ReleaseCmd::Channel { channel } => {
            let c = reg.channel(&channel).await?;
            let h = reg.channel_history(&channel).await?;
            if o.json {
                print_json(&serde_json::json!({"channel": c, "history": h}))?;
            } else {
                match &c {
                    Some(c) => out!(
                        "{}: release {} (revision {}, {} by {})",
                        c.name,
                        short_id(&c.release_id),
                        c.revision,
                        c.updated_at,
                        c.updated_by
                    ),
                    None => out!("{channel}: no release yet"),
                }
                let rows: Vec<Vec<String>> = h
                    .iter()
                    .map(|e| {
                        vec![
                            e.at.clone(),
                            e.action.clone(),
                            e.from_release
                                .as_deref()
                                .map(short_id)
                                .unwrap_or("-")
                                .to_string(),
                            short_id(&e.to_release).to_string(),
                            e.by.clone(),
                        ]
                    })
                    .collect();
                table(&["AT", "ACTION", "FROM", "TO", "BY"], &rows);
            }
        }
    }
    reg.close().await;
    Ok(())
}

// ----- backup / gc ----------------------------------------------------------------------------

async fn backup(a: BackupArgs) -> anyhow::Result<()> {
    let o = &a.opts;
    match a.cmd {
        BackupCmd::Create {
            dir,
            with_artifacts,
        } => {
            let reg = o.open().await?;
            let m = reg.backup_create_with(&dir, with_artifacts).await?;
            reg.close().await;
            if o.json {
                print_json(&m)?;
            } else {
                out!(
                    "backup written to {}: {} models, {} versions, {} aliases, {} releases, {} channels, {} referenced artifacts",
                    dir.display(),
                    m.models,
                    m.versions,
                    m.aliases,
                    m.releases,
                    m.channels,
                    m.digests
                );
            }
        }
        BackupCmd::Verify { dir } => {
            let store = herd_registry::ArtifactStore::open(&o.artifacts)?;
            let report = backup_verify(&dir, &store).await?;
            if o.json {
                print_json(&report)?;
            } else {
                let c = &report.check;
                out!(
                    "restored into a scratch database: {} models, {} versions, {} aliases, {} releases, {} channels; {} artifacts checked in {}",
                    c.models, c.versions, c.aliases, c.releases, c.channels, c.artifacts_checked, store.url()
                );
                for p in &c.problems {
                    out!("PROBLEM {}: {}: {}", p.kind, p.subject, p.detail);
                }
                if report.ok() {
                    out!("backup OK");
                }
            }
            if !report.ok() {
                bail!(
                    "backup {} has {} problem(s)",
                    dir.display(),
                    report.check.problems.len()
                );
            }
        }
        BackupCmd::Restore { dir, replace } => {
            let reg = o.open().await?;
            let m = reg.backup_restore(&dir, replace).await?;
            reg.close().await;
            if o.json {
                print_json(&m)?;
            } else {
                out!(
                    "restored {}: {} models, {} versions, {} releases into {}",
                    dir.display(),
                    m.models,
                    m.versions,
                    m.releases,
                    herd_registry::db::redact_url(&o.registry)
                );
            }
        }
    }
    Ok(())
}

async fn gc(a: GcArgs) -> anyhow::Result<()> {
    let o = &a.opts;
    let reg = o.open().await?;
    let report = reg
        .gc(&GcOptions {
            keep_last: a.keep_last,
            min_age: parse_age(&a.min_age)?,
            dry_run: a.dry_run,
        })
        .await?;
    reg.close().await;
    if o.json {
        return print_json(&report);
    }
    let rows: Vec<Vec<String>> = report
        .candidates
        .iter()
        .map(|c| {
            vec![
                c.digest.clone(),
                human_bytes(c.size),
                if c.used_by.is_empty() {
                    "(no version)".into()
                } else {
                    c.used_by.join(",")
                },
            ]
        })
        .collect();
    if !rows.is_empty() {
        table(&["DIGEST", "SIZE", "USED BY"], &rows);
    }
    let total: u64 = report.candidates.iter().map(|c| c.size).sum();
    if report.dry_run {
        out!(
            "dry run: would delete {} of {} artifacts ({}); {} referenced, {} unreferenced but younger than --min-age",
            report.candidates.len(),
            report.stored,
            human_bytes(total),
            report.referenced,
            report.too_young
        );
    } else {
        out!(
            "deleted {} of {} artifacts ({}); {} referenced, {} unreferenced but younger than --min-age",
            report.deleted,
            report.stored,
            human_bytes(report.freed_bytes),
            report.referenced,
            report.too_young
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages() {
        let secs = |s: &str| parse_age(s).unwrap().as_secs();
        assert_eq!(secs("90"), 90);
        assert_eq!(secs("15m"), 900);
        assert_eq!(secs("2d"), 172_800);
        assert!(parse_age("1y").is_err());
        assert!(parse_age("h").is_err());
    }

    #[test]
    fn release_files() {
        let dir = std::env::temp_dir().join(format!("herd-rf-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let j = dir.join("r.json");
        std::fs::write(&j, r#"{"a": 3, "b": "production", "c": {"version": 2}}"#).unwrap();
        let m = read_release_file(&j).unwrap();
        assert_eq!(m["a"], "3");
        assert_eq!(m["b"], "production");
        assert_eq!(m["c"], "2");
        let t = dir.join("r.txt");
        std::fs::write(&t, "# comment\na=1\n\nb = latest\n").unwrap();
        let m = read_release_file(&t).unwrap();
        assert_eq!((m["a"].as_str(), m["b"].as_str()), ("1", "latest"));
        std::fs::write(&t, "a\n").unwrap();
        assert!(read_release_file(&t).is_err());
        std::fs::write(&j, r#"{"a": [1]}"#).unwrap();
        assert!(read_release_file(&j).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
