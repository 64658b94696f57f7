//! The function library in Redis: which one this build runs, loading it,
//! and removing the libraries no running build needs any more.
//!
//! Every build loads its own library, named after its version
//! (`savestream_<version>`, the version a digest of `library.lua`), and
//! every function in it carries that version too
//! (`savestream_create_<version>`). So the libraries of two builds sit side
//! by side in one Redis: during a rolling upgrade the old processes call
//! theirs and the new ones call theirs, and neither unloads the other.
//! (Builds before this scheme loaded one library named `savestream` with
//! `REPLACE`, so two builds kept unloading each other's.)
//!
//! A library is kept while a process of its build is alive: every process
//! stamps its build's version into [`LIBRARIES_IN_USE`] with each registry
//! heartbeat, and a process that loads its library deletes every other
//! savestream library whose version has no stamp within
//! [`LIBRARY_HORIZON`]. Deleting one too early costs nothing but time: a
//! process that finds its functions gone loads its library again and
//! repeats the call (`Store::call`).

use std::time::Duration;

use fred::prelude::*;
use fred::types::Value;

use super::{now_ms, Store, StoreError};
use crate::task::Millis;

/// The library's source, with `__LIBRARY_VERSION__` where the version goes.
const SOURCE: &str = include_str!("library.lua");

/// This build's library version: the first 16 hex digits of the SHA-256 of
/// its source.
static VERSION: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| super::hex_digest(SOURCE)[..16].to_owned());

/// Every library savestream loads is named this, `_` and its version.
/// Builds before versioned libraries used the bare name.
const NAME: &str = "savestream";

/// The sorted set of library versions in use: member the version, score the
/// last heartbeat (Unix ms) of a process running it. Functions belong to
/// the whole Redis, not to one `[redis] prefix`, so this key is shared by
/// every deployment on the Redis and is the one key outside the prefix.
pub const LIBRARIES_IN_USE: &str = "savestream:libraries";

/// How long after the last heartbeat of its build a library stays loaded.
/// Generous on purpose: a library is small, and deployments on one Redis
/// may run with different lease (and so heartbeat) settings.
pub const LIBRARY_HORIZON: Duration = Duration::from_secs(60 * 60);

impl Store {
    /// The version of the library this build carries: a digest of its text.
    pub fn library_version() -> String {
        VERSION.clone()
    }

    /// The name of this build's library in Redis: `savestream_<version>`.
    pub fn library_name() -> String {
        format!("{NAME}_{}", *VERSION)
    }

    /// The name `function` has in this build's library: its own and the
    /// library's version, so that a call never runs in another build's
    /// library, whose functions may take other arguments.
    pub(super) fn versioned(function: &str) -> String {
        format!("{function}_{}", *VERSION)
    }

    /// Loads this build's library unless Redis has it already, then deletes
    /// the libraries of builds no live process runs.
    pub async fn load_library(&self) -> Result<(), StoreError> {
        let source = SOURCE.replace("__LIBRARY_VERSION__", &VERSION);
        let loaded: Result<String, _> = self.client.function_load(false, source).await;
        match loaded {
            Ok(_) => {}
            Err(error) if error.details().contains("already exists") => {}
            Err(error) => return Err(error.into()),
        }
        // Housekeeping: a library left behind costs a little memory, while
        // a process that cannot start costs its fleet.
        if let Err(error) = self.prune_libraries().await {
            tracing::warn!(
                %error,
                "could not delete the function libraries of builds no process runs: they stay \
                 loaded (allow the redis user FUNCTION and the sorted-set commands on {LIBRARIES_IN_USE})"
            );
        }
        Ok(())
    }

    /// Stamps this build's version in [`LIBRARIES_IN_USE`] at `now`, with
    /// each registry heartbeat. Best effort: unstamped, the library may be
    /// deleted by another build's process, and this one's next call then
    /// loads it again.
    pub(super) async fn stamp_library(&self, now: Millis) {
        let stamped: Result<i64, _> = self
            .client
            .zadd(
                LIBRARIES_IN_USE,
                None,
                None,
                false,
                false,
                (now as f64, VERSION.as_str()),
            )
            .await;
        // Said once a process: the heartbeat repeats every few seconds.
        static WARNED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
        if let Err(error) = stamped {
            if !WARNED.swap(true, std::sync::atomic::Ordering::Relaxed) {
                tracing::warn!(
                    %error,
                    "could not stamp this build's function library as in use in {LIBRARIES_IN_USE}: \
                     a process of another build may delete it, and this process then loads it again \
                     (allow the redis user ZADD on {LIBRARIES_IN_USE} to keep it loaded)"
                );
            }
        }
    }

    /// Deletes every savestream library but this build's whose version has
    /// had no heartbeat within [`LIBRARY_HORIZON`], and forgets the stamps
    /// that old.
    async fn prune_libraries(&self) -> Result<(), StoreError> {
        let horizon = now_ms() - LIBRARY_HORIZON.as_millis() as Millis;
        let _: i64 = self
            .client
            .zremrangebyscore(LIBRARIES_IN_USE, f64::NEG_INFINITY, horizon as f64)
            .await?;
        let in_use: Vec<String> = self
            .client
            .zrange(LIBRARIES_IN_USE, 0, -1, None, false, None, false)
            .await?;
        let listed: Value = self.client.function_list(Some(format!("{NAME}*")), false).await?;
        let ours = Store::library_name();
        for name in library_names(listed) {
            let stale = match library_version(&name) {
                Some(version) => name != ours && !in_use.iter().any(|used| used == version),
                None => name == NAME, // a build from before versioned libraries
            };
            if stale {
                // Another process may have deleted it a moment ago.
                let deleted: Result<Value, _> = self.client.function_delete(name.as_str()).await;
                match deleted {
                    Ok(_) => {
                        tracing::info!(library = %name, "deleted the function library of a build no process runs")
                    }
                    Err(error) if error.details().contains("does not exist") => {}
                    Err(error) => return Err(error.into()),
                }
            }
        }
        Ok(())
    }
}

/// The version in a savestream library's name (`savestream_<version>`), or
/// `None` for another name.
fn library_version(name: &str) -> Option<&str> {
    let version = name.strip_prefix(NAME)?.strip_prefix('_')?;
    let well_formed = version.len() == 16 && version.bytes().all(|byte| byte.is_ascii_hexdigit());
    well_formed.then_some(version)
}

/// The library names in a `FUNCTION LIST` reply: one entry per library,
/// its fields (`library_name`, `engine`, `functions`) a flat list of names
/// and values under RESP2, a map under RESP3; `into_map` reads either.
fn library_names(listed: Value) -> Vec<String> {
    listed
        .into_array()
        .into_iter()
        .filter_map(|library| {
            let mut fields = library.into_map().ok()?.inner();
            fields
                .remove(&fred::types::Key::from("library_name"))?
                .into_string()
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_savestream_names_with_a_well_formed_version_have_one() {
        assert_eq!(
            library_version("savestream_0123456789abcdef"),
            Some("0123456789abcdef")
        );
        assert_eq!(library_version("savestream"), None);
        assert_eq!(library_version("savestream_0123"), None);
        assert_eq!(library_version("savestream_0123456789abcdeg"), None);
        assert_eq!(library_version("savestreamx_0123456789abcdef"), None);
        assert_eq!(library_version("other"), None);
    }

    #[test]
    fn this_builds_library_and_functions_carry_its_version() {
        let version = Store::library_version();
        assert_eq!(library_version(&Store::library_name()), Some(version.as_str()));
        assert_eq!(
            Store::versioned("savestream_create"),
            format!("savestream_create_{version}")
        );
    }
}
