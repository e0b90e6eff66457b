//! `/tokens` and `/admins`: who may join the cluster (join tokens), who may operate it (admin
//! certificates).

use std::sync::Arc;

use hyper::StatusCode;
use warren_api::clock::unix_now_ms;
use warren_api::rest::{
    AdminCreate, AdminInfo, AdminIssued, AdminRenew, MAX_TOKEN_TTL_MS, TokenInfo, TokenRequest,
    TokenResponse,
};
use warren_transport::ca::NODE_CERT_LIFETIME;
use warren_transport::token::{TokenId, mint};
use warren_transport::{MintOptions, PeerIdentity};

use super::respond::{ApiResult, json, ok, written};
use super::{Api, ApiError};
use crate::command::{MintedToken, Op};
use crate::state::AdminCert;

impl Api {
    pub(super) async fn revoke_token(&self, id: &str) -> ApiResult {
        let id = id.parse::<TokenId>().map_err(|_| {
            ApiError::Invalid(format!(
                "token id {id:?} is not a token id (16 hex digits, from `warren token ls`)"
            ))
        })?;
        written(self.control.propose(Op::RevokeToken(id)).await?)
    }

    pub(super) async fn list_admins(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let admins: Vec<AdminInfo> = state.admins.values().map(admin_info).collect();
        ok(&admins)
    }

    /// Signs the CSR's key as admin `name` and records the certificate; the private key
    /// stays with the caller.
    pub(super) async fn create_admin(&self, request: AdminCreate) -> ApiResult {
        warren_api::validate_node_name(&request.name)
            .map_err(|e| ApiError::Invalid(format!("name: {}", e.message)))?;
        let in_use = self
            .control
            .read_stale()
            .await
            .admins
            .values()
            .any(|a| a.name == request.name && !a.revoked);
        if in_use {
            return Err(ApiError::Conflict(format!(
                "an admin named {} already has a certificate; revoke it first (`warren admin revoke {}`) or choose another name",
                request.name, request.name
            )));
        }
        let (cert, record) = self
            .sign_admin(&request.name, &request.csr_der_base64)
            .await?;
        self.control
            .propose(Op::AddAdmin(record.clone()))
            .await?
            .result?;
        admin_issued(&cert, &record)
    }

    /// Issues a new certificate to the admin whose certificate authenticated the request (over
    /// TLS), for the CSR's key, and revokes the old one.
    pub(super) async fn renew_admin(
        &self,
        caller: Option<Arc<PeerIdentity>>,
        request: AdminRenew,
    ) -> ApiResult {
        let caller = caller.ok_or_else(|| {
            ApiError::Invalid(
                "renew over TLS with the admin certificate to renew, not the Unix socket".into(),
            )
        })?;
        let name = caller.admin_name.clone().ok_or_else(|| {
            ApiError::Forbidden("only an admin certificate is renewed here".into())
        })?;
        if !self
            .control
            .read_stale()
            .await
            .admins
            .contains_key(&caller.serial)
        {
            return Err(ApiError::Conflict(format!(
                "admin certificate {} is not recorded (made by an earlier release); ask for a new one with `warren admin create`",
                caller.serial
            )));
        }
        let (cert, record) = self.sign_admin(&name, &request.csr_der_base64).await?;
        let op = Op::RenewAdmin {
            previous: caller.serial.clone(),
            cert: record.clone(),
        };
        self.control.propose(op).await?.result?;
        admin_issued(&cert, &record)
    }

    /// Signs the key of a CSR (DER, base64) as admin `name`: the certificate, and its record
    /// for the state.
    async fn sign_admin(
        &self,
        name: &str,
        csr_der_base64: &str,
    ) -> Result<(Vec<u8>, AdminCert), ApiError> {
        let csr = data_encoding::BASE64
            .decode(csr_der_base64.as_bytes())
            .map_err(|_| ApiError::Invalid("csr_der_base64: not base64".into()))?;
        let cert = self
            .control
            .sign_admin_csr(name, &csr, NODE_CERT_LIFETIME)
            .await
            .map_err(ApiError::Invalid)?;
        let identity = warren_transport::identity::parse_identity(&cert)
            .map_err(|e| ApiError::Internal(format!("issued certificate: {e}")))?;
        let record = AdminCert::issued_now(&identity, name, unix_now_ms());
        Ok((cert, record))
    }

    /// Revokes the admin certificate `key` names (its serial, or the name of an admin with
    /// one unrevoked certificate).
    pub(super) async fn revoke_admin(&self, key: &str) -> ApiResult {
        let serial = {
            let state = self.control.read_stale().await;
            let by_serial = state.admins.get(key).map(|a| a.serial.clone());
            let by_name = || {
                state
                    .admins
                    .values()
                    .find(|a| a.name == key && !a.revoked)
                    .map(|a| a.serial.clone())
            };
            by_serial.or_else(by_name).ok_or_else(|| {
                ApiError::NotFound(format!(
                    "admin {key} not found (give its name or serial, from `warren admin ls`)"
                ))
            })?
        };
        written(self.control.propose(Op::RevokeAdmin { serial }).await?)
    }

    pub(super) async fn list_tokens(&self, stale: bool) -> ApiResult {
        let state = self.read(stale).await?;
        let tokens: Vec<TokenInfo> = state
            .tokens
            .records()
            .map(|r| TokenInfo {
                id: r.id.to_string(),
                role: r.role,
                created_at_ms: r.created_at_ms,
                expires_at_ms: r.expires_at_ms,
                single_use: r.single_use,
                used_at_ms: r.used_at_ms,
                revoked: r.revoked,
                created_by: state.token_creators.get(&r.id).cloned(),
            })
            .collect();
        ok(&tokens)
    }

    /// Mints a token; `caller` (the admin certificate the request came with; none on the
    /// control socket) is recorded as who created it.
    pub(super) async fn create_token(
        &self,
        caller: Option<Arc<PeerIdentity>>,
        request: TokenRequest,
    ) -> ApiResult {
        match request.ttl_ms {
            None => {
                return Err(ApiError::Invalid(format!(
                    "ttl_ms: a token needs a lifetime (at most {})",
                    warren_api::format_duration_ms(MAX_TOKEN_TTL_MS)
                )));
            }
            Some(0) => return Err(ApiError::Invalid("ttl_ms: must be more than 0".into())),
            Some(ttl) if ttl > MAX_TOKEN_TTL_MS => {
                return Err(ApiError::Invalid(format!(
                    "ttl_ms: {} is longer than the longest a token may live ({})",
                    warren_api::format_duration_ms(ttl),
                    warren_api::format_duration_ms(MAX_TOKEN_TTL_MS)
                )));
            }
            Some(_) => {}
        }
        let (fingerprint, here) = {
            let state = self.control.read_stale().await;
            let cluster = state
                .cluster
                .as_ref()
                .ok_or_else(|| ApiError::Conflict("cluster is not initialised".into()))?;
            let here = state
                .nodes
                .get(&warren_api::NodeId(self.control.id()))
                .map_or_else(|| "this node".to_owned(), |n| n.name.clone());
            (
                warren_transport::identity::fingerprint(&cluster.ca_cert_der),
                here,
            )
        };
        let options = MintOptions {
            role: request.role,
            ttl: request.ttl_ms.map(std::time::Duration::from_millis),
            single_use: request.single_use,
        };
        let (token, record) = mint(fingerprint, options, unix_now_ms());
        let expires_at_ms = record.expires_at_ms;
        let created_by = match caller.as_ref().and_then(|c| c.admin_name.as_deref()) {
            Some(admin) => format!("admin {admin}"),
            None => format!("the control socket on {here}"),
        };
        self.control
            .propose(Op::AddTokenBy(MintedToken { record, created_by }))
            .await?
            .result?;
        Ok(json(
            StatusCode::CREATED,
            &TokenResponse {
                token: token.to_string(),
                id: token.id.to_string(),
                role: request.role,
                expires_at_ms,
            },
        ))
    }
}

fn admin_info(cert: &AdminCert) -> AdminInfo {
    AdminInfo {
        name: cert.name.clone(),
        serial: cert.serial.clone(),
        issued_at_ms: cert.issued_at_ms,
        expires_at_ms: cert.expires_at_ms,
        revoked: cert.revoked,
    }
}

/// The answer to a signed admin CSR: the certificate and what the cluster recorded.
fn admin_issued(cert: &[u8], record: &AdminCert) -> ApiResult {
    Ok(json(
        StatusCode::CREATED,
        &AdminIssued {
            cert_der_base64: data_encoding::BASE64.encode(cert),
            admin: admin_info(record),
        },
    ))
}
