//! TOML configuration files.

use std::{
    fs,
    path::{Path, PathBuf},
};

use serde::de::DeserializeOwned;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration file {0} does not exist")]
    NotFound(PathBuf),
    #[error("reading configuration file {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("configuration file {path} is invalid: {message}")]
    Parse { path: PathBuf, message: String },
}

/// A configuration and the file it came from, if any.
#[derive(Debug)]
pub struct Loaded<T> {
    pub config: T,
    pub source: Option<PathBuf>,
}

/// Reads `explicit` if given (it must exist), else `default_path` if it exists,
/// else returns `T::default()`.
pub fn load<T: DeserializeOwned + Default>(
    explicit: Option<&Path>,
    default_path: &Path,
) -> Result<Loaded<T>, ConfigError> {
    let path = match explicit {
        Some(path) if !path.exists() => return Err(ConfigError::NotFound(path.to_path_buf())),
        Some(path) => path,
        None if default_path.exists() => default_path,
        None => {
            return Ok(Loaded { config: T::default(), source: None });
        }
    };
    let text =
        fs::read_to_string(path).map_err(|source| ConfigError::Read { path: path.to_path_buf(), source })?;
    let config = parse(&text).map_err(|message| ConfigError::Parse { path: path.to_path_buf(), message })?;
    Ok(Loaded { config, source: Some(path.to_path_buf()) })
}

/// Parses TOML text; the error names the line and the offending key.
pub fn parse<T: DeserializeOwned>(text: &str) -> Result<T, String> {
    toml::from_str(text).map_err(|e| e.to_string().trim_end().to_string())
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;

    use super::*;

    #[derive(Debug, Default, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Sample {
        port: Option<u16>,
    }

    #[test]
    fn missing_default_file_gives_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let loaded: Loaded<Sample> = load(None, &dir.path().join("none.toml")).unwrap();
        assert_eq!(loaded.config, Sample::default());
        assert!(loaded.source.is_none());
    }

    #[test]
    fn missing_explicit_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("none.toml");
        let err = load::<Sample>(Some(&path), &path).unwrap_err();
        assert!(matches!(err, ConfigError::NotFound(p) if p == path));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        fs::write(&path, "prot = 5\n").unwrap();
        let err = load::<Sample>(Some(&path), &path).unwrap_err().to_string();
        assert!(err.contains("prot"), "{err}");
        fs::write(&path, "port = 70000\n").unwrap();
        let err = load::<Sample>(Some(&path), &path).unwrap_err().to_string();
        assert!(err.contains("port") && err.contains("line 1"), "{err}");
    }

    #[test]
    fn explicit_file_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        fs::write(&path, "port = 51820\n").unwrap();
        let loaded: Loaded<Sample> = load(Some(&path), Path::new("/nonexistent")).unwrap();
        assert_eq!(loaded.config.port, Some(51820));
        assert_eq!(loaded.source.as_deref(), Some(path.as_path()));
    }
}
