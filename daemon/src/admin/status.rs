//! `Status`: daemon health, per-peer delivery, counts and warnings.

use tonic::Status;
use tvaers_proto::v1;

use super::AdminState;
use crate::{Millis, now_ms};

/// A certificate expiring sooner than this is warned about.
pub const CERTIFICATE_WARNING_DAYS: i64 = 30;

const DAY_MS: Millis = 86_400_000;

pub async fn status(state: &AdminState) -> Result<v1::AdminStatusResponse, Status> {
    let now = now_ms();
    let counts = state
        .store
        .counts()
        .await
        .map_err(|e| crate::api::internal("status", e))?;
    let open = state
        .store
        .outbox_open()
        .await
        .map_err(|e| crate::api::internal("status", e))?;
    let leases = state
        .store
        .lease_view(now)
        .await
        .map_err(|e| crate::api::internal("status", e))?;
    let drivers = state.peers.drivers().await;
    let mut warnings = Vec::new();
    if let Some(warning) = certificate_warning(state.certificate_not_after_ms, now) {
        warnings.push(warning);
    }
    if counts.outbox_failed > 0 {
        warnings.push(format!(
            "{} outbox item(s) failed: see `tvaers outbox list --state failed`",
            counts.outbox_failed
        ));
    }

    let mut peers = Vec::new();
    for peer in state.peers.configured().await {
        let health = drivers.get(&peer.org_id).map(|d| d.health());
        let open_row = open.iter().find(|row| row.recipient == peer.org_id);
        if let Some(previous) = peer.previous_fingerprint
            && previous.valid_until_ms > now
        {
            warnings.push(format!(
                "peer {} still may use its previous certificate until {}",
                peer.org_id,
                crate::config::format_time(previous.valid_until_ms)
            ));
        }
        if let Some(health) = &health
            && !health.connected
            && open_row.is_some()
            && let Some(error) = &health.last_error
        {
            warnings.push(format!("peer {} unreachable: {error}", peer.org_id));
        }
        peers.push(v1::PeerStatus {
            org_id: peer.org_id.clone(),
            name: peer.name.clone(),
            sector: peer
                .sector
                .map(|s| s.as_str().to_owned())
                .unwrap_or_default(),
            addresses: peer.addresses.iter().map(ToString::to_string).collect(),
            fingerprint: peer.fingerprint.to_string(),
            revoked: peer.is_revoked(),
            connected: health.as_ref().is_some_and(|h| h.connected),
            last_contact_ms: health.as_ref().and_then(|h| h.last_contact_ms).unwrap_or(0),
            rtt_us: health
                .as_ref()
                .and_then(|h| h.rtt)
                .map_or(0, |rtt| u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
            outbox_depth: open_row.map_or(0, |row| row.notices),
            oldest_pending_age_ms: open_row
                .map_or(0, |row| (now - row.oldest_created_at_ms).max(0)),
            in_flight: health.as_ref().map_or(0, |h| h.in_flight as u64),
            last_error: health.and_then(|h| h.last_error).unwrap_or_default(),
        });
    }

    Ok(v1::AdminStatusResponse {
        org_id: state.site.org_id.clone(),
        name: state.site.name.clone(),
        sector: state.site.sector.as_str().to_owned(),
        version: env!("CARGO_PKG_VERSION").to_owned(),
        started_at_ms: u64::try_from(state.started_at_ms).unwrap_or(0),
        listen: state.listen.to_string(),
        tls_fingerprint: state.fingerprint.to_string(),
        certificate_not_after_ms: state.certificate_not_after_ms.unwrap_or(0),
        store: state.store_description.clone(),
        peers,
        outbox_pending: counts.outbox_pending,
        outbox_delivered: counts.outbox_delivered,
        outbox_failed: counts.outbox_failed,
        inbox_total: counts.inbox_total,
        inbox_unacked: counts.inbox_unacked,
        warnings,
        instance_id: state.instance_id.clone(),
        instances: instances(&leases, now),
    })
}

/// The live instances and the shards each holds unexpired, by instance id;
/// an instance holding shards is listed even if its heartbeat lapsed.
fn instances(view: &crate::lease::LeaseView, now: Millis) -> Vec<v1::InstanceStatus> {
    let mut held: std::collections::BTreeMap<&str, Vec<u32>> = view
        .live
        .iter()
        .map(|id| (id.as_str(), Vec::new()))
        .collect();
    for lease in view.leases.iter().filter(|l| l.expires_at_ms > now) {
        held.entry(lease.owner.as_str())
            .or_default()
            .push(u32::from(lease.shard));
    }
    held.into_iter()
        .map(|(id, mut shards)| {
            shards.sort_unstable();
            v1::InstanceStatus {
                instance_id: id.to_owned(),
                shards,
            }
        })
        .collect()
}

/// A warning when the certificate expires within
/// [`CERTIFICATE_WARNING_DAYS`] (or has expired).
pub fn certificate_warning(not_after_ms: Option<Millis>, now: Millis) -> Option<String> {
    let not_after = not_after_ms?;
    let days_left = (not_after - now).div_euclid(DAY_MS);
    if not_after <= now {
        Some(format!(
            "the TLS certificate expired on {}: run `tvaers keys rotate-tls` and send peers the new card",
            crate::config::format_time(not_after)
        ))
    } else if days_left < CERTIFICATE_WARNING_DAYS {
        Some(format!(
            "the TLS certificate expires in {days_left} day(s), on {}: run `tvaers keys rotate-tls`",
            crate::config::format_time(not_after)
        ))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{Lease, LeaseView};

    #[test]
    fn instances_list_live_ones_and_their_unexpired_shards() {
        let lease = |shard, owner: &str, expires_at_ms| Lease {
            shard,
            owner: owner.to_owned(),
            expires_at_ms,
        };
        let view = LeaseView {
            leases: vec![
                lease(3, "b", 2_000),
                lease(1, "b", 2_000),
                lease(2, "a", 500),
                lease(4, "c", 2_000),
            ],
            live: vec!["a".into(), "b".into()],
        };
        let shown: Vec<(String, Vec<u32>)> = instances(&view, 1_000)
            .into_iter()
            .map(|i| (i.instance_id, i.shards))
            .collect();
        assert_eq!(
            shown,
            [
                ("a".to_owned(), vec![]),
                ("b".to_owned(), vec![1, 3]),
                ("c".to_owned(), vec![4]),
            ],
            "a's lease expired; c holds one though its heartbeat lapsed"
        );
    }

    #[test]
    fn warns_about_certificates_expiring_within_30_days() {
        let now = 1_000 * DAY_MS;
        assert_eq!(certificate_warning(None, now), None);
        assert_eq!(certificate_warning(Some(now + 31 * DAY_MS), now), None);
        let soon = certificate_warning(Some(now + 29 * DAY_MS), now);
        assert!(
            soon.as_deref().is_some_and(|w| w.contains("29 day")),
            "{soon:?}"
        );
        let gone = certificate_warning(Some(now - DAY_MS), now);
        assert!(
            gone.as_deref().is_some_and(|w| w.contains("expired")),
            "{gone:?}"
        );
    }
}
