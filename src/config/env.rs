//! Parsing the command line and the environment together: old variable
//! names of renamed flags, and errors that name the variable a bad value
//! came from (clap names only the flag).

use super::Args;

/// Environment names of flags renamed when durations took units: (old
/// variable, new variable, flag, whether the flag is `health`'s). Still
/// read (a bare number is seconds, as before), with a note on stderr.
const RENAMED_ENV: [(&str, &str, &str, bool); 8] = [
    ("GRU_MODEL_POLL_SECS", "GRU_MODEL_POLL", "model-poll", false),
    (
        "GRU_SESSION_TTL_SECS",
        "GRU_SESSION_TTL",
        "session-ttl",
        false,
    ),
    (
        "GRU_STREAM_IDLE_TIMEOUT_SECS",
        "GRU_STREAM_IDLE_TIMEOUT",
        "stream-idle-timeout",
        false,
    ),
    (
        "GRU_REQUEST_TIMEOUT_SECS",
        "GRU_REQUEST_TIMEOUT",
        "request-timeout",
        false,
    ),
    (
        "GRU_HTTP2_KEEPALIVE_SECS",
        "GRU_HTTP2_KEEPALIVE",
        "http2-keepalive",
        false,
    ),
    (
        "GRU_HTTP2_KEEPALIVE_TIMEOUT_SECS",
        "GRU_HTTP2_KEEPALIVE_TIMEOUT",
        "http2-keepalive-timeout",
        false,
    ),
    (
        "GRU_DRAIN_TIMEOUT_SECS",
        "GRU_DRAIN_TIMEOUT",
        "drain-timeout",
        false,
    ),
    (
        "GRU_HEALTH_TIMEOUT_SECS",
        "GRU_HEALTH_TIMEOUT",
        "timeout",
        true,
    ),
];

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

impl Args {
    /// Parses the process's arguments and environment; on an error prints
    /// it (naming the environment variable when the bad value came from
    /// one) and exits with status 2, as clap does.
    pub fn parse_or_exit() -> Args {
        let (args, notes) = Args::parse_with_notes(std::env::args_os().collect());
        for n in notes {
            eprintln!("gru-serve: {n}");
        }
        args.unwrap_or_else(|e| e.exit())
    }

    /// [`Args::parse_or_exit`] without the exit: the flags, and notes to
    /// print (renamed variables in use).
    pub fn parse_with_notes(
        mut argv: Vec<std::ffi::OsString>,
    ) -> (Result<Args, clap::Error>, Vec<String>) {
        use clap::{CommandFactory, FromArgMatches};
        let mut notes = Vec::new();
        // A renamed variable becomes a flag placed first, so a flag on the
        // command line still wins (args_override_self) and the new variable
        // wins over the old. `health`'s flag goes after the subcommand.
        let health = argv.iter().position(|a| a == "health");
        for (old, new, flag, of_health) in RENAMED_ENV {
            let at = match (of_health, health) {
                (false, None) => 1,
                (true, Some(p)) => p + 1,
                _ => continue,
            };
            if let (Some(v), None) = (env(old), env(new)) {
                notes.push(format!(
                    "{old} is read as {new}, its new name (a bare number is seconds)"
                ));
                argv.insert(at.min(argv.len()), format!("--{flag}={v}").into());
            }
        }
        let args = Args::command()
            .try_get_matches_from(argv.clone())
            .and_then(|m| Args::from_arg_matches(&m))
            .map_err(|e| name_env_in_error(e, &argv));
        (args, notes)
    }
}

/// clap names the flag of a bad value even when the value came from its
/// environment twin; say which variable held it.
fn name_env_in_error(e: clap::Error, argv: &[std::ffi::OsString]) -> clap::Error {
    use clap::error::{ContextKind, ContextValue};
    use clap::CommandFactory;
    let (Some(ContextValue::String(arg)), Some(ContextValue::String(value))) = (
        e.get(ContextKind::InvalidArg),
        e.get(ContextKind::InvalidValue),
    ) else {
        return e;
    };
    let long = arg
        .split_whitespace()
        .next()
        .unwrap_or("")
        .trim_start_matches("--");
    let given = |a: &std::ffi::OsString| {
        a.to_str()
            .and_then(|a| a.strip_prefix("--"))
            .is_some_and(|a| a == long || a.strip_prefix(long).is_some_and(|r| r.starts_with('=')))
    };
    if argv.iter().any(given) {
        return e;
    }
    let root = Args::command();
    let var = std::iter::once(&root)
        .chain(root.get_subcommands())
        .flat_map(|c| c.get_arguments())
        .filter(|a| a.get_long() == Some(long))
        .filter_map(|a| a.get_env()?.to_str().map(str::to_string))
        .find(|v| env(v).as_deref() == Some(value.as_str()));
    let Some(var) = var else { return e };
    let why = std::error::Error::source(&e)
        .map(|s| format!(": {s}"))
        .unwrap_or_default();
    Args::command().error(
        clap::error::ErrorKind::ValueValidation,
        format!("invalid value '{value}' in the environment variable {var} (for --{long}){why}"),
    )
}
