//! What the daemons' configurations share, so that the coordinator and the
//! node agent each keep only their own fields: reading TOML with errors
//! that name the file, line and column; the error type every setting
//! reports through; merging command-line flags over a file over defaults
//! ([`daemon_settings!`](crate::daemon_settings)); and the checks both
//! resolve settings with (required settings, the listen and advertised
//! addresses, `HOST:PORT`).

use std::net::SocketAddr;
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

/// Gives a daemon's settings struct (every field an `Option`, read from
/// TOML) the methods each daemon's configuration needs, so that only its
/// field list is written per daemon: `from_file` and `from_toml` (errors
/// name file, line and column) and `overridden_by`, which merges settings
/// over others field by field (flags over a file, a file over defaults).
///
/// Every field must be listed: a field left out is a compile error.
#[macro_export]
macro_rules! daemon_settings {
    ($settings:ident { $($field:ident),* $(,)? }) => {
        impl $settings {
            /// Reads settings from a TOML file, naming file, line and column on errors.
            pub fn from_file(
                path: &::std::path::Path,
            ) -> ::std::result::Result<Self, $crate::config_file::ConfigError> {
                $crate::config_file::read_toml(path)
            }

            /// Parses settings from TOML text; `file` names it in errors.
            pub fn from_toml(
                text: &str,
                file: &str,
            ) -> ::std::result::Result<Self, $crate::config_file::ConfigError> {
                $crate::config_file::parse_toml(text, file)
            }

            /// These settings, with every setting `overrides` provides taking precedence.
            pub fn overridden_by(self, overrides: Self) -> Self {
                Self {
                    $($field: overrides.$field.or(self.$field),)*
                }
            }
        }
    };
}

/// A setting that is wrong, named as the file key (the flag is the same
/// with dashes).
pub fn invalid(field: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.into(),
    }
}

/// `value`, or the error that `field` is required, saying what it holds.
pub fn required<T>(value: Option<T>, field: &'static str, what: &str) -> Result<T, ConfigError> {
    value.ok_or_else(|| invalid(field, format!("required ({what})")))
}

/// The address a daemon listens on (`IP:PORT`, the `listen` setting) and
/// the one it is reached at (`advertise`, by default the listen address,
/// required when that is a wildcard nobody can dial; `reached_by` says who
/// needs it).
pub fn listen_and_advertise(
    listen: &str,
    advertise: Option<String>,
    reached_by: &str,
) -> Result<(SocketAddr, String), ConfigError> {
    let addr: SocketAddr = listen
        .parse()
        .map_err(|e| invalid("listen", format!("{listen:?} is not IP:PORT: {e}")))?;
    let advertise = match advertise {
        Some(advertise) => {
            check_host_port(&advertise).map_err(|e| invalid("advertise", e))?;
            advertise
        }
        None if addr.ip().is_unspecified() => {
            return Err(invalid(
                "advertise",
                format!("required when listening on {addr}: {reached_by} need a reachable address"),
            ))
        }
        // Port 0 is resolved once the server is bound.
        None => addr.to_string(),
    };
    Ok((addr, advertise))
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

    #[derive(serde::Deserialize, Debug, Default, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Layered {
        name: Option<String>,
        port: Option<u16>,
    }
    crate::daemon_settings!(Layered { name, port });

    #[test]
    fn flags_win_over_a_file_which_wins_over_defaults() {
        let file = Layered::from_toml("name = \"f\"\nport = 1\n", "d.toml").expect("parse");
        let flags = Layered {
            port: Some(2),
            ..Default::default()
        };
        let merged = Layered::default().overridden_by(file).overridden_by(flags);
        assert_eq!(
            merged,
            Layered {
                name: Some("f".into()),
                port: Some(2)
            }
        );
        let err = Layered::from_toml("name = \"f\"\nprt = 1\n", "d.toml").unwrap_err();
        assert!(err.to_string().starts_with("d.toml:2:1:"), "{err}");
        assert!(err.to_string().contains("prt"), "{err}");
        let err = Layered::from_file(Path::new("/nonexistent/d.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Read { .. }), "{err}");
    }

    #[test]
    fn listen_and_advertise_resolve_together() {
        let (listen, advertise) =
            listen_and_advertise("127.0.0.1:7000", None, "peers").expect("valid");
        assert_eq!(
            (listen.port(), advertise.as_str()),
            (7000, "127.0.0.1:7000")
        );
        let (_, advertise) =
            listen_and_advertise("0.0.0.0:7000", Some("h:7000".into()), "peers").expect("valid");
        assert_eq!(advertise, "h:7000");
        for (listen, advertise, field) in [
            ("nope", None, "listen"),
            ("0.0.0.0:7000", None, "advertise"),
            ("127.0.0.1:7000", Some("h"), "advertise"),
        ] {
            match listen_and_advertise(listen, advertise.map(String::from), "peers") {
                Err(ConfigError::Invalid { field: got, .. }) => assert_eq!(got, field),
                other => panic!("{listen} {advertise:?}: {other:?}"),
            }
        }
        assert!(matches!(
            required::<u8>(None, "id", "a member id"),
            Err(ConfigError::Invalid { field: "id", ref message }) if message == "required (a member id)"
        ));
    }

    #[test]
    fn addresses_need_a_host_and_a_port() {
        assert!(check_host_port("10.0.0.1:7100").is_ok());
        for bad in ["", "host", ":7100", "host:0", "host:x", "host:70000"] {
            assert!(check_host_port(bad).is_err(), "{bad:?}");
        }
    }
}
