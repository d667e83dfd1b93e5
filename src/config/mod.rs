//! Typed settings: defaults < TOML file < sip-profile < `DIALERD__*` env,
//! validated with every problem named by its key, secrets redacted.

mod load;
mod secret;
mod settings;
mod types;
mod validate;

pub use load::{
    ConfigError, ENV_PREFIX, ENV_SEPARATOR, INSTALLED_PROFILE_DIR, Problem, Sources, load,
    profile_path, profile_search_dirs,
};
pub use secret::{REDACTED, Secret};
pub use settings::*;
pub use types::{IpNet, IpNetError, LogFormat, PortRange, RedisUrl, Transport, Untrusted};
pub use validate::{check_sip_uri, parse_fingerprint};

/// Renders the settings as TOML with every secret redacted.
pub fn render_effective(settings: &Settings) -> Result<String, toml::ser::Error> {
    toml::to_string_pretty(settings)
}
