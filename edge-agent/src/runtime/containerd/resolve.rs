//! Finding a replica's image in containerd's store, or else pulling it in the background:
//! the start that finds it missing starts the pull and fails with "image unavailable"; the
//! starts after it report the pull's progress, and the first one after it is done runs.

use std::collections::HashMap;

use super::image::{self, ImageError, normalize_reference};
use super::{Connection, ContainerdRuntime, RegistryCredentials, pull};
use crate::runtime::{RegistryAuthSecret, RuntimeError};

impl ContainerdRuntime {
    pub(super) async fn resolve_image(
        &self,
        conn: &Connection,
        reference: &str,
        registry_auth: Option<&RegistryAuthSecret>,
    ) -> Result<image::ResolvedImage, RuntimeError> {
        let name = normalize_reference(reference);
        let unavailable = |reason: String| RuntimeError::ImageUnavailable {
            reference: reference.to_owned(),
            reason,
        };
        match image::resolve(conn, &name).await {
            Ok(image) => Ok(image),
            Err(ImageError::Containerd(e)) if e.is_not_found() => match self.pulled(&name).await {
                Ok(true) => image::resolve(conn, &name)
                    .await
                    .map_err(|e| unavailable(e.to_string())),
                Ok(false) => Err(unavailable(self.pull_state(conn, &name, registry_auth))),
                Err(why) => Err(unavailable(why)),
            },
            Err(ImageError::Containerd(e)) => Err(e.into()),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// Whether a finished pull of `name` brought it in; `Err` says why it did not.
    async fn pulled(&self, name: &str) -> Result<bool, String> {
        let finished = {
            let mut pulls = self.lock_pulls();
            match pulls.get(name) {
                Some(job) if job.task.is_finished() => pulls.remove(name),
                _ => None,
            }
        };
        let Some(job) = finished else {
            return Ok(false);
        };
        match job.task.await {
            Ok(Ok(_)) => Ok(true),
            Ok(Err(why)) => Err(format!(
                "{name} is not in this box's containerd store and pulling it failed: {why}"
            )),
            Err(e) => Err(format!("{name}: the pull ended: {e}")),
        }
    }

    /// Starts pulling `name` (with the credentials in `registry_auth` when given) unless a
    /// pull runs; says how far it is. Credentials are read only here: a box that has the
    /// image runs it whatever the secret holds.
    fn pull_state(
        &self,
        conn: &Connection,
        name: &str,
        registry_auth: Option<&RegistryAuthSecret>,
    ) -> String {
        let namespace = &self.options.namespace;
        if !self.options.pull {
            return format!(
                "{name} is not in this box's containerd store (namespace {namespace}); load it with `warren image load`"
            );
        }
        let mut pulls = self.lock_pulls();
        if let Some(job) = pulls.get(name) {
            return format!("pulling {name}: {}", job.progress.describe());
        }
        let credentials = match registry_auth.map(RegistryCredentials::parse).transpose() {
            Ok(credentials) => credentials,
            Err(reason) => {
                return format!("{name} is not in this box's containerd store; {reason}");
            }
        };
        let job = pull::PullJob::spawn(
            conn.clone(),
            self.options.snapshotter.clone(),
            name.to_owned(),
            credentials,
        );
        pulls.insert(name.to_owned(), job);
        format!("{name} is not in this box's containerd store (namespace {namespace}); pulling it")
    }

    fn lock_pulls(&self) -> std::sync::MutexGuard<'_, HashMap<String, pull::PullJob>> {
        // Every update is one insert or remove: a poisoned map is still whole.
        self.pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
