//! Which partitions of `PARLEY_IN` this replica writes.
//!
//! Every replica announces itself on `{p}.ctl.persist.replicas` each second and listens for
//! the others. From the same set of live replicas each works out the same assignment
//! ([`assign`]): every partition to one replica, each replica `floor(P/R)` or `ceil(P/R)` of
//! them. A replica pulls only the partitions assigned to it. The assignment decides who should
//! write; JetStream decides who may: each partition's consumer pins one pulling client at a time
//! (priority groups, pinned client), so two replicas whose views briefly differ never write the
//! same partition at once.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// How often a replica says it is alive.
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(1);

/// A replica not heard from for this long is taken for dead and its partitions move.
pub const DEAD_AFTER: Duration = Duration::from_secs(4);

/// A replica's heartbeat.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Heartbeat {
    pub replica: String,
    /// Sent once at shutdown, after the replica released its partitions.
    #[serde(default)]
    pub leaving: bool,
}

/// The replicas a replica knows of, itself included.
#[derive(Debug)]
pub struct Membership {
    me: String,
    seen: HashMap<String, Instant>,
}

impl Membership {
    pub fn new(me: &str) -> Self {
        Self {
            me: me.to_owned(),
            seen: HashMap::new(),
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    /// Notes a heartbeat heard at `now`. True when it changes who is live (a new replica, or
    /// one leaving), so the assignment should be worked out again at once.
    pub fn observe(&mut self, beat: &Heartbeat, now: Instant) -> bool {
        if beat.replica == self.me {
            return false;
        }
        if beat.leaving {
            self.seen.remove(&beat.replica).is_some()
        } else {
            self.seen.insert(beat.replica.clone(), now).is_none()
        }
    }

    /// The live replicas at `now`, sorted, this one included; forgets the dead.
    pub fn live(&mut self, now: Instant) -> Vec<String> {
        self.seen
            .retain(|_, at| now.saturating_duration_since(*at) < DEAD_AFTER);
        let mut live: Vec<String> = self.seen.keys().cloned().collect();
        live.push(self.me.clone());
        live.sort_unstable();
        live.dedup();
        live
    }
}

/// The owner of each partition, as an index into `replicas` (sorted, unique, not empty).
/// Replica `i` gets `floor(P/R)` partitions, one more for the first `P mod R`; each partition
/// goes to the replica that ranks it highest (a stable hash of both) among those with room, so
/// a change of membership moves few partitions besides those it must.
pub fn assign(partitions: u16, replicas: &[String]) -> Vec<usize> {
    assert!(!replicas.is_empty(), "at least this replica is live");
    let r = replicas.len();
    let p = usize::from(partitions);
    let mut room: Vec<usize> = (0..r).map(|i| p / r + usize::from(i < p % r)).collect();
    (0..partitions)
        .map(|partition| {
            let owner = (0..r)
                .filter(|&i| room[i] > 0)
                .max_by_key(|&i| (weight(partition, &replicas[i]), std::cmp::Reverse(i)))
                .expect("the rooms add up to the partitions");
            room[owner] -= 1;
            owner
        })
        .collect()
}

/// The partitions `me` owns among `replicas`.
pub fn owned_by(partitions: u16, replicas: &[String], me: &str) -> BTreeSet<u16> {
    let Some(mine) = replicas.iter().position(|r| r == me) else {
        return BTreeSet::new();
    };
    assign(partitions, replicas)
        .into_iter()
        .zip(0..partitions)
        .filter(|(owner, _)| *owner == mine)
        .map(|(_, partition)| partition)
        .collect()
}

/// FNV-1a over the partition and the replica id: the same on every replica and every build.
fn weight(partition: u16, replica: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in partition
        .to_be_bytes()
        .iter()
        .chain(b":")
        .chain(replica.as_bytes())
    {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        let mut ids: Vec<String> = (0..n)
            .map(|i| format!("replica-{i:x}{}", i * 7919))
            .collect();
        ids.sort();
        ids
    }

    fn counts(partitions: u16, replicas: &[String]) -> Vec<usize> {
        replicas
            .iter()
            .map(|r| owned_by(partitions, replicas, r).len())
            .collect()
    }

    #[test]
    fn every_partition_has_exactly_one_owner_and_shares_are_even() {
        for partitions in [1u16, 2, 7, 16, 64, 1024] {
            for r in 1..=9 {
                let replicas = ids(r);
                let total: usize = counts(partitions, &replicas).iter().sum();
                assert_eq!(total, usize::from(partitions));
                let (lo, hi) = (
                    usize::from(partitions) / r,
                    usize::from(partitions).div_ceil(r),
                );
                for c in counts(partitions, &replicas) {
                    assert!(c == lo || c == hi, "{partitions}/{r}: {c}");
                }
            }
        }
        assert_eq!(counts(16, &ids(3)), [6, 5, 5]);
    }

    #[test]
    fn every_replica_works_out_the_same_assignment() {
        let replicas = ids(4);
        let a = assign(16, &replicas);
        assert_eq!(a, assign(16, &replicas.clone()));
        for (i, r) in replicas.iter().enumerate() {
            let mine: BTreeSet<u16> = (0..16).filter(|p| a[usize::from(*p)] == i).collect();
            assert_eq!(owned_by(16, &replicas, r), mine);
        }
    }

    #[test]
    fn a_replica_that_is_not_live_owns_nothing() {
        assert!(owned_by(16, &ids(2), "someone-else").is_empty());
    }

    #[test]
    fn a_dead_replica_loses_its_partitions_and_the_others_keep_most_of_theirs() {
        let replicas = ids(4);
        let before = assign(64, &replicas);
        let survivors = replicas[1..].to_vec();
        let after = assign(64, &survivors);
        let kept = (0..64)
            .filter(|&p| before[p] != 0 && survivors[after[p]] == replicas[before[p]])
            .count();
        // 48 partitions were on survivors; a stable assignment keeps most where they were.
        assert!(kept >= 32, "only {kept} of 48 stayed put");
    }

    #[test]
    fn membership_follows_heartbeats_and_forgets_the_silent() {
        let start = Instant::now();
        let mut m = Membership::new("b");
        let beat = |r: &str, leaving| Heartbeat {
            replica: r.into(),
            leaving,
        };
        assert!(m.observe(&beat("a", false), start));
        assert!(!m.observe(&beat("a", false), start + Duration::from_millis(500)));
        assert!(
            !m.observe(&beat("b", false), start),
            "itself is always live"
        );
        assert!(m.observe(&beat("c", false), start));
        assert_eq!(m.live(start + Duration::from_secs(1)), ["a", "b", "c"]);
        assert!(m.observe(&beat("c", true), start + Duration::from_secs(2)));
        assert_eq!(m.live(start + Duration::from_secs(2)), ["a", "b"]);
        assert_eq!(m.live(start + DEAD_AFTER + Duration::from_secs(1)), ["b"]);
        assert!(
            !m.observe(&beat("z", true), start),
            "an unknown replica leaving changes nothing"
        );
    }

    #[test]
    fn heartbeats_are_camel_case_json() {
        let beat: Heartbeat = serde_json::from_str(r#"{"replica":"x"}"#).unwrap();
        assert!(!beat.leaving);
        assert_eq!(
            serde_json::to_string(&Heartbeat {
                replica: "x".into(),
                leaving: true
            })
            .unwrap(),
            r#"{"replica":"x","leaving":true}"#
        );
    }
}
