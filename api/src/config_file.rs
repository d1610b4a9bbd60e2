//! What the daemons' configuration files share: reading TOML with errors
//! that name the file, line and column, the error type every setting
//! reports through, and the `HOST:PORT` check addresses go through.

use std::path::Path;

use serde::de::DeserializeOwned;
use thiserror::Error;

/// A configuration that cannot be used, with where the problem is.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {message}")]
    Read {
        /// The file.
        file: String,
        /// The OS error.
        message: String,
    },
    /// The file is not valid TOML for the settings it should hold.
    #[error("{file}:{line}:{column}: {message}")]
    Parse {
        /// The file.
        file: String,
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What is wrong.
        message: String,
    },
    /// A setting is missing or wrong.
    #[error("setting `{field}`: {message}")]
    Invalid {
        /// The setting (file key; the flag is the same with dashes).
        field: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// Reads settings from a TOML file, naming file, line and column on errors.
pub fn read_toml<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError::Read {
        file: file.clone(),
        message: e.to_string(),
    })?;
    parse_toml(&text, &file)
}

/// Parses settings from TOML text; `file` names it in errors.
pub fn parse_toml<T: DeserializeOwned>(text: &str, file: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e: toml::de::Error| {
        let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
        ConfigError::Parse {
            file: file.to_string(),
            line,
            column,
            message: e.message().to_string(),
        }
    })
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, column)
}

/// Checks that `addr` is `HOST:PORT` with a non-zero port.
pub fn check_host_port(addr: &str) -> Result<(), String> {
    match addr.rsplit_once(':') {
        Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p != 0) => {
            Ok(())
        }
        _ => Err(format!("address {addr:?} is not HOST:PORT")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize, Debug)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Settings {
        name: String,
    }

    #[test]
    fn errors_name_file_line_and_column() {
        let err = parse_toml::<Settings>("name = \"a\"\n  bogus = 1\n", "x.toml").unwrap_err();
        assert!(err.to_string().starts_with("x.toml:2:3:"), "{err}");
        let err = read_toml::<Settings>(Path::new("/nonexistent/x.toml")).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("/nonexistent/x.toml: cannot read"),
            "{err}"
        );
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(check_host_port("10.0.0.1:7100").is_ok());
        for bad in ["", "host", ":7100", "host:0", "host:x", "host:70000"] {
            assert!(check_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
