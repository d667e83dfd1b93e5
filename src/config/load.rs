//! Layering: defaults < TOML file < `sip-profiles/<name>.toml` < `DIALERD__*`
//! environment, then per-account profile defaults, then validation.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};

use config::{Config, Environment, File, FileFormat};

use super::secret::Secret;
use super::settings::{AccountDefaults, DEFAULT_EXPIRES_SECS, DEFAULT_KEEPALIVE_SECS, Settings};
use super::types::Transport;
use super::validate::validate;

/// Prefix of environment variables that override settings.
pub const ENV_PREFIX: &str = "DIALERD";
/// Separator between the prefix, sections and keys: `DIALERD__SIP__T1_MS`.
pub const ENV_SEPARATOR: &str = "__";
/// Settings that take a comma-separated list when given in the environment.
const ENV_LIST_KEYS: [&str; 4] = [
    "sip.udp_listen",
    "sip.tcp_listen",
    "sip.tls_listen",
    "sip.allowed_peers",
];

/// Where the settings come from.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// The main TOML file, if any.
    pub config_file: Option<PathBuf>,
    /// Name of a profile in `profile_dirs`, or a path to a profile file.
    pub profile: Option<String>,
    /// Directories a profile name is looked up in, in order; the first that
    /// holds `<name>.toml` wins.
    pub profile_dirs: Vec<PathBuf>,
    /// The environment to read `DIALERD__*` overrides and `env` sources from.
    pub env: HashMap<String, String>,
}

impl Sources {
    /// Sources with the environment of this process. Without an explicit
    /// `profile_dir`, profile names are looked up in [`profile_search_dirs`]
    /// of the config file and this executable.
    pub fn with_process_env(
        config_file: Option<PathBuf>,
        profile: Option<String>,
        profile_dir: Option<PathBuf>,
    ) -> Self {
        let profile_dirs = match profile_dir {
            Some(dir) => vec![dir],
            None => profile_search_dirs(
                config_file.as_deref(),
                std::env::current_exe().ok().as_deref(),
            ),
        };
        Self {
            config_file,
            profile,
            profile_dirs,
            env: std::env::vars().collect(),
        }
    }
}

/// Where an installed dialerd keeps its sip-profiles.
pub const INSTALLED_PROFILE_DIR: &str = "/usr/share/dialerd/sip-profiles";

/// The directories a profile name is looked up in when no profile directory
/// is given, in order: `<config file's directory>/sip-profiles`,
/// [`INSTALLED_PROFILE_DIR`], `<executable's directory>/../share/dialerd/sip-profiles`,
/// then `./sip-profiles`. Duplicates are dropped; nothing is read.
pub fn profile_search_dirs(config_file: Option<&Path>, exe: Option<&Path>) -> Vec<PathBuf> {
    let mut dirs = Vec::new();
    if let Some(dir) = config_file.and_then(Path::parent) {
        // A bare file name's parent is "": the working directory.
        let dir = if dir.as_os_str().is_empty() {
            Path::new(".")
        } else {
            dir
        };
        dirs.push(dir.join("sip-profiles"));
    }
    dirs.push(PathBuf::from(INSTALLED_PROFILE_DIR));
    if let Some(prefix) = exe.and_then(Path::parent).and_then(Path::parent) {
        dirs.push(prefix.join("share/dialerd/sip-profiles"));
    }
    dirs.push(PathBuf::from("./sip-profiles"));
    let mut unique: Vec<PathBuf> = Vec::with_capacity(dirs.len());
    for dir in dirs {
        if !unique.contains(&dir) {
            unique.push(dir);
        }
    }
    unique
}

/// One thing wrong with the configuration, named by its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// Dotted key path, e.g. `media.rtp_port_range` or `accounts[0].registrar`.
    pub key: String,
    /// What is wrong with it.
    pub message: String,
}

impl Problem {
    /// A problem with `key`.
    pub fn new(key: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            key: key.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.key, self.message)
    }
}

/// Why the configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read or is not valid TOML.
    #[error("{origin}: {message}")]
    Source {
        /// The file (or "environment").
        origin: String,
        /// What went wrong.
        message: String,
    },
    /// The merged settings do not fit the schema (unknown key, wrong type).
    #[error("{0}")]
    Schema(Problem),
    /// The settings fit the schema but some values are wrong.
    #[error("{}", list(.0))]
    Invalid(Vec<Problem>),
}

impl ConfigError {
    /// Every problem, each naming its key (sources yield one without a key).
    pub fn problems(&self) -> Vec<String> {
        match self {
            ConfigError::Invalid(ps) => ps.iter().map(ToString::to_string).collect(),
            other => vec![other.to_string()],
        }
    }
}

fn list(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

/// Loads, layers, resolves and validates the settings.
pub fn load(sources: &Sources) -> Result<Settings, ConfigError> {
    let mut builder = Config::builder();
    if let Some(path) = &sources.config_file {
        builder = builder.add_source(toml_source(path)?);
    }
    if let Some(name) = &sources.profile {
        let path =
            profile_path(&sources.profile_dirs, name).map_err(|message| ConfigError::Source {
                origin: format!("profile {name:?}"),
                message,
            })?;
        builder = builder.add_source(toml_source(&path)?);
    }
    builder = builder.add_source(env_source(&sources.env));
    let merged = builder.build().map_err(|e| ConfigError::Source {
        origin: "configuration".into(),
        message: e.to_string(),
    })?;
    let mut settings: Settings =
        serde_path_to_error::deserialize(merged).map_err(|e| schema_problem(&e))?;

    let mut problems = resolve_accounts(&mut settings, sources);
    problems.extend(resolve_redis_password(&mut settings));
    problems.extend(resolve_http_token(&mut settings));
    problems.extend(validate(&settings, &sources.env));
    if problems.is_empty() {
        Ok(settings)
    } else {
        Err(ConfigError::Invalid(problems))
    }
}

fn toml_source(path: &Path) -> Result<File<config::FileSourceString, FileFormat>, ConfigError> {
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Source {
        origin: origin.clone(),
        message: format!("cannot read: {e}"),
    })?;
    // Parse once here so a syntax error names its file.
    text.parse::<toml::Table>()
        .map_err(|e| ConfigError::Source {
            origin,
            message: format!("invalid TOML: {}", e.to_string().trim_end()),
        })?;
    Ok(File::from_str(&text, FileFormat::Toml))
}

fn env_source(env: &HashMap<String, String>) -> Environment {
    let vars: config::Map<String, String> = env
        .iter()
        .filter(|(k, _)| k.starts_with(&format!("{ENV_PREFIX}{ENV_SEPARATOR}")))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let mut source = Environment::with_prefix(ENV_PREFIX)
        .prefix_separator(ENV_SEPARATOR)
        .separator(ENV_SEPARATOR)
        .try_parsing(true)
        .list_separator(",")
        .source(Some(vars));
    for key in ENV_LIST_KEYS {
        source = source.with_list_parse_key(key);
    }
    source
}

fn schema_problem(err: &serde_path_to_error::Error<config::ConfigError>) -> ConfigError {
    let key = err.path().to_string();
    let key = if key == "." || key.is_empty() {
        "configuration".to_owned()
    } else {
        key
    };
    let mut message = match err.inner() {
        config::ConfigError::Message(m) => m.clone(),
        other => other.to_string(),
    };
    // The config crate appends its own, sometimes garbled, key; ours is exact.
    if let Some(at) = message.find(" for key `") {
        message.truncate(at);
    }
    ConfigError::Schema(Problem::new(key, message))
}

/// Path of a profile: `NAME` means `<dir>/NAME.toml` in the first of `dirs`
/// that holds it; a value with a `/` or a `.toml` ending is taken as a path.
/// An unknown name's error lists every directory searched.
pub fn profile_path(dirs: &[PathBuf], name: &str) -> Result<PathBuf, String> {
    if name.contains('/') || name.ends_with(".toml") {
        return Ok(PathBuf::from(name));
    }
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        return Err("a profile name has only letters, digits, '-' and '_'".into());
    }
    let file = format!("{name}.toml");
    if let Some(path) = dirs.iter().map(|d| d.join(&file)).find(|p| p.is_file()) {
        return Ok(path);
    }
    let searched: Vec<String> = dirs.iter().map(|d| d.display().to_string()).collect();
    Err(format!(
        "no profile file {file} in {}",
        if searched.is_empty() {
            "any directory (none given)".to_owned()
        } else {
            searched.join(", ")
        }
    ))
}

/// The `account_defaults` of a profile file.
fn profile_defaults(dirs: &[PathBuf], name: &str) -> Result<AccountDefaults, String> {
    let path = profile_path(dirs, name)?;
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e| format!("{}: invalid TOML: {e}", path.display()))?;
    match table.get("account_defaults") {
        None => Ok(AccountDefaults::default()),
        Some(v) => v
            .clone()
            .try_into()
            .map_err(|e| format!("{}: account_defaults: {e}", path.display())),
    }
}

/// Applies per-account profiles, global defaults and built-in defaults, and
/// reads password files.
fn resolve_accounts(settings: &mut Settings, sources: &Sources) -> Vec<Problem> {
    let mut problems = Vec::new();
    let global = settings.account_defaults.clone();
    for (i, account) in settings.accounts.iter_mut().enumerate() {
        if let Some(name) = account.profile.clone() {
            match profile_defaults(&sources.profile_dirs, &name) {
                Ok(defaults) => account.inherit(&defaults),
                Err(e) => problems.push(Problem::new(format!("accounts[{i}].profile"), e)),
            }
        }
        account.inherit(&global);
        let secure = account.registrar.trim_start().starts_with("sips:");
        account.transport.get_or_insert(if secure {
            Transport::Tls
        } else {
            Transport::Udp
        });
        account.expires_secs.get_or_insert(DEFAULT_EXPIRES_SECS);
        account.keepalive_secs.get_or_insert(DEFAULT_KEEPALIVE_SECS);
        account.outbound.get_or_insert(false);
        account.required.get_or_insert(true);
        if let Some(path) = &account.password_file {
            let key = format!("accounts[{i}].password_file");
            if account.password.is_some() {
                problems.push(Problem::new(
                    key,
                    "set either password or password_file, not both",
                ));
            } else {
                match read_secret_file(path) {
                    Ok(secret) => account.password = Some(secret),
                    Err(e) => problems.push(Problem::new(key, e)),
                }
            }
        }
    }
    problems
}

fn resolve_redis_password(settings: &mut Settings) -> Option<Problem> {
    let redis = &mut settings.redis;
    secret_from_file(
        &mut redis.password,
        redis.password_file.as_deref(),
        "redis.password_file",
        "set either password or password_file, not both",
    )
}

fn resolve_http_token(settings: &mut Settings) -> Option<Problem> {
    let http = &mut settings.http;
    secret_from_file(
        &mut http.token,
        http.token_file.as_deref(),
        "http.token_file",
        "set either token or token_file, not both",
    )
}

/// Fills `value` from `file` when one is given; `key` names the file
/// setting in a problem, `both` is the problem when both are set.
fn secret_from_file(
    value: &mut Option<Secret>,
    file: Option<&Path>,
    key: &str,
    both: &str,
) -> Option<Problem> {
    let path = file?;
    if value.is_some() {
        return Some(Problem::new(key, both));
    }
    match read_secret_file(path) {
        Ok(secret) => {
            *value = Some(secret);
            None
        }
        Err(e) => Some(Problem::new(key, e)),
    }
}

/// Reads a secret from a file, without its trailing line break. The error
/// names the file, never its content.
fn read_secret_file(path: &Path) -> Result<Secret, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let value = text.trim_end_matches(['\r', '\n']);
    if value.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(Secret::new(value))
}

#[cfg(test)]
#[path = "load_tests.rs"]
mod tests;
