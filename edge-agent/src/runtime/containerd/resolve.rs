//! Finding a replica's image in containerd's store, or else pulling it in the background:
//! the start that finds it missing starts the pull and fails with "image unavailable"; the
//! starts after it report the pull's progress, and the first one after it is done runs and
//! leaves an `image_pulled` event (`pulled REF: 52.0 MB in 3.1 s`) for the node's events.

use std::collections::HashMap;

use super::image::{self, ImageError, normalize_reference};
use super::{Connection, ContainerdRuntime, RegistryCredentials, pull};
use warren_api::Event;

use crate::runtime::{RegistryAuthSecret, RuntimeError};

/// Most events held between two reconcile passes.
const MAX_EVENTS_HELD: usize = 64;

impl ContainerdRuntime {
    /// `reference`'s image from the store, and what a pull that just brought it in says
    /// (`pulled REF: 52.0 MB in 3.1 s`).
    pub(super) async fn resolve_image(
        &self,
        conn: &Connection,
        reference: &str,
        registry_auth: Option<&RegistryAuthSecret>,
    ) -> Result<(image::ResolvedImage, Option<String>), RuntimeError> {
        let name = normalize_reference(reference);
        let unavailable = |reason: String| RuntimeError::ImageUnavailable {
            reference: reference.to_owned(),
            reason,
        };
        match image::resolve(conn, &name).await {
            // A pull names the image before it unpacks it: until the pull has finished, the
            // image is not ready to run, and the start that runs it says it was pulled.
            Ok(_) if let Some(state) = self.pull_in_flight(&name) => Err(unavailable(state)),
            // A pull that finished since the last start put it there: say so once.
            Ok(image) => Ok((image, self.pulled(&name).await.ok().flatten())),
            Err(ImageError::Containerd(e)) if e.is_not_found() => match self.pulled(&name).await {
                Ok(Some(summary)) => image::resolve(conn, &name)
                    .await
                    .map(|image| (image, Some(summary)))
                    .map_err(|e| unavailable(e.to_string())),
                Ok(None) => Err(unavailable(self.pull_state(conn, &name, registry_auth))),
                Err(why) => Err(unavailable(why)),
            },
            Err(ImageError::Containerd(e)) => Err(e.into()),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }

    /// What a finished pull of `name` that brought it in says; `None` while none has
    /// finished; `Err` says why it did not bring it in.
    async fn pulled(&self, name: &str) -> Result<Option<String>, String> {
        let finished = {
            let mut pulls = self.lock_pulls();
            match pulls.get(name) {
                Some(job) if job.task.is_finished() => pulls.remove(name),
                _ => None,
            }
        };
        let Some(job) = finished else {
            return Ok(None);
        };
        match job.task.await {
            Ok(Ok((_, summary))) => Ok(Some(summary)),
            Ok(Err(why)) => Err(format!(
                "{name} is not in this box's containerd store and pulling it failed: {why}"
            )),
            Err(e) => Err(format!("{name}: the pull ended: {e}")),
        }
    }

    /// How far a pull of `name` that has not finished is, if one runs.
    fn pull_in_flight(&self, name: &str) -> Option<String> {
        let pulls = self.lock_pulls();
        let job = pulls.get(name).filter(|job| !job.task.is_finished())?;
        Some(format!("pulling {name}: {}", job.progress.describe()))
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

    /// Keeps `event` for the reconciler's next [`Runtime::take_events`]; at most
    /// [`MAX_EVENTS_HELD`] wait (the reconciler takes them every pass).
    pub(super) fn note(&self, event: Event) {
        let mut events = self.lock_events();
        if events.len() < MAX_EVENTS_HELD {
            events.push(event);
        }
    }

    pub(super) fn lock_events(&self) -> std::sync::MutexGuard<'_, Vec<Event>> {
        // Every update is one push or a take: a poisoned list is still whole.
        self.events
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn lock_pulls(&self) -> std::sync::MutexGuard<'_, HashMap<String, pull::PullJob>> {
        // Every update is one insert or remove: a poisoned map is still whole.
        self.pulls
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
