//! `/volumes`: named volumes.

use warren_api::Volume;

use super::respond::{ApiResult, ok, written};
use super::{Api, ApiError};
use crate::command::Op;

impl Api {
    pub(super) async fn list_volumes(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        ok(&state.volumes.values().cloned().collect::<Vec<_>>())
    }

    pub(super) async fn put_volume(&self, name: &str, volume: Volume) -> ApiResult {
        if volume.name != name {
            return Err(ApiError::Invalid(format!(
                "name: body says {}, path says {name}",
                volume.name
            )));
        }
        written(self.control.propose(Op::PutVolume(volume)).await?)
    }

    pub(super) async fn remove_volume(&self, name: &str) -> ApiResult {
        written(
            self.control
                .propose(Op::RemoveVolume(name.to_owned()))
                .await?,
        )
    }
}
