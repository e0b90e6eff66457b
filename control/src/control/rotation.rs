//! Rotating the cluster key: the leader makes the next generation, hands it to the control
//! members, and — once a majority of voters keeps it — proposes the entry that re-seals what the
//! key protects ([`crate::rekey::rotation`]). A member that missed the hand-out (down, cut off)
//! fetches the generation in force from another member when its state moves to it; a key is
//! only taken as that generation when it opens the CA key the state sealed with it.

use std::time::Instant;

use tracing::{info, warn};
use warren_transport::ClusterCa;
use warren_transport::seal::SealKey;

use super::Control;
use crate::command::Outcome;
use crate::keys::ClusterKeys;
use crate::rpc::{ControlRpc, ControlRpcReply, ProposeError};
use crate::state::ClusterState;

impl Control {
    /// Rotates the cluster key (forwarding to the leader if needed) and returns the new
    /// generation; `reason` goes to the log.
    ///
    /// # Errors
    /// [`ProposeError`]: no leader or quorum, too few members kept the new key, or another
    /// membership change held the gate past the write timeout.
    pub async fn rotate_cluster_key(&self, reason: &str) -> Result<u32, ProposeError> {
        match self.rotate_cluster_key_local(reason).await {
            Err(ProposeError::NotLeader { leader }) => {
                let deadline = Instant::now() + self.timeouts.write;
                let rpc = ControlRpc::RotateClusterKey {
                    reason: reason.to_owned(),
                };
                match self.to_leader(&rpc, leader, deadline).await? {
                    ControlRpcReply::ClusterKeyRotated(reply) => reply,
                    _ => Err(ProposeError::NoQuorum(
                        "leader answered with something else".into(),
                    )),
                }
            }
            other => other,
        }
    }

    pub(super) async fn rotate_cluster_key_local(&self, reason: &str) -> Result<u32, ProposeError> {
        self.check_leading()?;
        let doing = format!("rotating the cluster key ({reason})");
        let _held = self.membership.enter(doing, self.timeouts.write).await?;
        let result = self.rotate_holding_gate().await;
        let label = if result.is_ok() { "ok" } else { "failed" };
        self.metrics
            .cluster_key_rotations_total
            .with_label_values(&[label])
            .inc();
        match &result {
            Ok(generation) => info!(generation, reason, "cluster key rotated"),
            Err(error) => warn!(error = %error, reason, "cluster key rotation failed"),
        }
        result
    }

    async fn rotate_holding_gate(&self) -> Result<u32, ProposeError> {
        let generation = self.read_linearizable().await?.key_generation() + 1;
        let key = self.new_generation_key(generation)?;
        self.hand_out(generation, &key).await?;
        let op = {
            let state = self.read_stale().await;
            let keys = self.cluster_keys().ok_or_else(no_keys)?;
            crate::rekey::rotation(&state, &keys, generation).map_err(ProposeError::Membership)?
        };
        match self.propose(op).await? {
            Outcome { result: Ok(_), .. } => Ok(generation),
            Outcome {
                result: Err(rejection),
                ..
            } => Err(ProposeError::Membership(rejection.message)),
        }
    }

    /// The key for `generation` (not in force yet): the one this node kept from an attempt
    /// that never committed, else a fresh one, kept on disk before anyone else gets it.
    fn new_generation_key(&self, generation: u32) -> Result<SealKey, ProposeError> {
        let mut chosen = None;
        self.update_cluster_keys(|held| {
            let mut keys = held.ok_or("this node has no cluster key")?;
            if let Some(key) = keys.get(generation) {
                chosen = Some(key.clone());
                return Ok(None);
            }
            let key = SealKey::generate();
            keys.set(generation, key.clone());
            chosen = Some(key);
            Ok(Some(keys))
        })
        .map_err(ProposeError::Membership)?;
        chosen.ok_or_else(no_keys)
    }

    /// Gives `key` to every other control member; `Ok` once a majority of voters (this node
    /// included) keeps it.
    async fn hand_out(&self, generation: u32, key: &SealKey) -> Result<(), ProposeError> {
        let membership = self.current_membership();
        let voters: Vec<u64> = membership.voter_ids().collect();
        let key_hex = key.to_hex();
        let wait = self.timeouts.write;
        let mut calls = tokio::task::JoinSet::new();
        for (id, member) in membership.nodes().filter(|(id, _)| **id != self.id) {
            let (peers, id, addr) = (self.peers.clone(), *id, member.quic_addr.clone());
            let rpc = ControlRpc::InstallClusterKey {
                generation,
                key_hex: key_hex.clone(),
            };
            calls.spawn(async move { (id, peers.call(id, &addr, &rpc, wait).await) });
        }
        let mut kept_by_voters = usize::from(voters.contains(&self.id));
        while let Some(joined) = calls.join_next().await {
            let Ok((id, reply)) = joined else { continue };
            match reply {
                Ok(ControlRpcReply::ClusterKeyInstalled(Ok(()))) => {
                    kept_by_voters += usize::from(voters.contains(&id));
                }
                Ok(ControlRpcReply::ClusterKeyInstalled(Err(why))) => {
                    warn!(peer = %format_args!("{id:016x}"), why = %why, "member refused the new cluster key");
                }
                Ok(_) => {
                    warn!(peer = %format_args!("{id:016x}"), "member answered the new cluster key with something else")
                }
                Err(error) => {
                    warn!(peer = %format_args!("{id:016x}"), error = %error, "member did not take the new cluster key; it fetches it later");
                }
            }
        }
        if kept_by_voters * 2 <= voters.len() {
            return Err(ProposeError::NoQuorum(format!(
                "only {kept_by_voters} of {} voters kept cluster key generation {generation}",
                voters.len()
            )));
        }
        Ok(())
    }

    /// Keeps generation `generation` handed out by the leader. A generation in force must be
    /// the one held (a different key is refused); one not in force yet replaces whatever an
    /// attempt that never committed left.
    pub(super) async fn install_cluster_key(
        &self,
        generation: u32,
        key_hex: &str,
    ) -> Result<(), String> {
        let key = SealKey::from_hex(key_hex).map_err(|e| format!("bad key: {e}"))?;
        let in_force = self.read_stale().await.key_generation();
        self.update_cluster_keys(|held| {
            let mut keys = held.ok_or("this node has no cluster key yet")?;
            match keys.get(generation) {
                Some(current) if *current == key => Ok(None),
                Some(_) if generation <= in_force => Err(format!(
                    "cluster key generation {generation} is in force here with another key"
                )),
                _ => {
                    keys.set(generation, key);
                    Ok(Some(keys))
                }
            }
        })
    }

    /// Whether this node holds the key that opens what the state sealed with the generation in
    /// force (the CA key).
    pub(crate) fn holds_key_in_force(&self, state: &ClusterState) -> bool {
        let (Some(info), Some(keys)) = (state.cluster.as_ref(), self.cluster_keys()) else {
            return false;
        };
        keys.get(state.key_generation()).is_some_and(|key| {
            ClusterCa::from_sealed(&info.ca_cert_der, &info.ca_key_sealed, key).is_ok()
        })
    }

    /// Fetches the generation in force from the other control members, one after another,
    /// until one gives a key that opens the state's CA key. Returns whether this node holds it
    /// now.
    pub(crate) async fn fetch_key_in_force(&self) -> bool {
        let members: Vec<(u64, String)> = self
            .current_membership()
            .nodes()
            .filter(|(id, _)| **id != self.id)
            .map(|(id, member)| (*id, member.quic_addr.clone()))
            .collect();
        for (id, addr) in members {
            let reply = self
                .peers
                .call(
                    id,
                    &addr,
                    &ControlRpc::FetchClusterKeys,
                    self.timeouts.write,
                )
                .await;
            let text = match reply {
                Ok(ControlRpcReply::ClusterKeys(Ok(secrets))) => secrets.cluster_keys_text,
                Ok(other) => {
                    warn!(peer = %format_args!("{id:016x}"), reply = ?other, "member gave no cluster keys");
                    continue;
                }
                Err(error) => {
                    warn!(peer = %format_args!("{id:016x}"), error = %error, "cannot fetch cluster keys");
                    continue;
                }
            };
            match ClusterKeys::from_text(&text) {
                Ok(theirs) if self.take_key_in_force(&theirs).await => return true,
                Ok(_) => {}
                Err(error) => {
                    warn!(peer = %format_args!("{id:016x}"), error = %error, "member sent unreadable cluster keys")
                }
            }
        }
        false
    }

    /// Takes from `theirs` the generations this node lacks and the one in force if it opens
    /// the state's CA key. Returns whether this node holds the one in force now.
    async fn take_key_in_force(&self, theirs: &ClusterKeys) -> bool {
        let state = self.read_stale().await;
        let in_force = state.key_generation();
        let Some(info) = state.cluster.as_ref() else {
            return false;
        };
        let opens = |key: &SealKey| {
            ClusterCa::from_sealed(&info.ca_cert_der, &info.ca_key_sealed, key).is_ok()
        };
        let updated = self.update_cluster_keys(|held| {
            let mut keys = held.unwrap_or_else(|| theirs.clone());
            for (generation, key) in theirs.iter() {
                let fits = generation != in_force || opens(key);
                if fits && (keys.get(generation).is_none() || generation == in_force) {
                    keys.set(generation, key.clone());
                }
            }
            Ok(Some(keys))
        });
        if let Err(error) = updated {
            warn!(error = %error, "cannot keep the fetched cluster keys");
        }
        self.holds_key_in_force(&state)
    }
}

fn no_keys() -> ProposeError {
    ProposeError::Membership("this node has no cluster key".into())
}
