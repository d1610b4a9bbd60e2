//! Where an agent finds its first peers: the coordinators' node list while
//! they answer, and otherwise the peers it knew last, remembered on disk
//! (`<data_dir>/balance-peers.json`), so that an agent restarted while the
//! coordinators are away still finds the fleet.

use std::path::{Path, PathBuf};

use herd_api::client::{HerdClient, Repeat};
use herd_api::proto::v1 as pb;
use herd_api::proto::v1::nodes_client::NodesClient;
use herd_balance::PeerInfo;

/// The file peers are remembered in.
pub fn peers_file(data_dir: &Path) -> PathBuf {
    data_dir.join("balance-peers.json")
}

/// Most peers remembered (enough to find the fleet again).
const MAX_REMEMBERED: usize = 64;

/// The ready nodes the coordinators list, other than `me`, as seeds.
pub async fn from_coordinators(client: &HerdClient, me: &str) -> Result<Vec<PeerInfo>, String> {
    let nodes = client
        .call_as(Repeat::Safe, |ch| async move {
            NodesClient::new(ch)
                .list(pb::ListNodesRequest { stale: true })
                .await
                .map(|r| r.into_inner().nodes)
        })
        .await
        .map_err(|e| e.to_string())?;
    Ok(nodes
        .into_iter()
        .filter(|n| n.status == "ready" && n.name != me && !n.addr.is_empty())
        .map(|n| PeerInfo {
            id: n.name,
            peer_addr: n.addr,
            http_addr: (!n.http.is_empty()).then_some(n.http),
        })
        .collect())
}

/// The peers remembered in `file`; none when it is missing. A file that
/// cannot be read or parsed is reported and ignored: it only speeds up
/// finding the fleet.
pub fn load(file: &Path) -> Vec<PeerInfo> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "cannot read remembered peers");
            return Vec::new();
        }
    };
    match serde_json::from_str::<Vec<PeerInfo>>(&text) {
        Ok(mut peers) => {
            peers.truncate(MAX_REMEMBERED);
            peers
        }
        Err(e) => {
            tracing::warn!(file = %file.display(), error = %e, "ignoring unreadable remembered peers");
            Vec::new()
        }
    }
}

/// Remembers `peers` in `file`, atomically (a temporary file renamed over
/// it), so a crash leaves the old list or the new one.
pub fn save(file: &Path, peers: &[PeerInfo]) -> std::io::Result<()> {
    let kept = &peers[..peers.len().min(MAX_REMEMBERED)];
    let text = serde_json::to_vec_pretty(kept).map_err(std::io::Error::other)?;
    let tmp = file.with_extension("json.tmp");
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_peers_survive_a_round_trip_and_garbage_is_ignored() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = peers_file(dir.path());
        assert!(load(&file).is_empty());
        let peers = vec![PeerInfo::new("n2", "127.0.0.1:7201")];
        save(&file, &peers).expect("save");
        assert_eq!(load(&file), peers);
        std::fs::write(&file, "{not json").expect("write");
        assert!(load(&file).is_empty());
    }
}
