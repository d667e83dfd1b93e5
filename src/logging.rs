//! tracing setup: readable text on a terminal or JSON lines for collectors.

use std::io::IsTerminal;

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Why logging could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum LoggingError {
    /// `RUST_LOG` or `log.level` is not a valid filter.
    #[error("invalid log filter {source_name}: {message}")]
    Filter {
        /// `RUST_LOG` or `log.level`.
        source_name: &'static str,
        /// What the filter parser said.
        message: String,
    },
    /// A global subscriber was already installed.
    #[error("logging was already initialised: {0}")]
    AlreadySet(String),
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `level`.
/// Logs go to stderr so that stdout stays clean for command output.
pub fn init(format: LogFormat, level: &str) -> Result<(), LoggingError> {
    let (source_name, directive) = match std::env::var("RUST_LOG") {
        Ok(v) if !v.trim().is_empty() => ("RUST_LOG", v),
        _ => ("log.level", level.to_owned()),
    };
    let filter = EnvFilter::try_new(&directive).map_err(|e| LoggingError::Filter {
        source_name,
        message: e.to_string(),
    })?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder
            .with_ansi(std::io::stderr().is_terminal())
            .try_init(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
    };
    result.map_err(|e| LoggingError::AlreadySet(e.to_string()))
}
