//! The executor's nodes: launched for the node sets the scaler asks for, ready after the cold start,
//! and the jobs placed on them.

use super::*;

/// One node of the executor's fleet.
#[derive(Debug, Clone)]
pub(super) struct LocalNode {
    pub(super) name: String,
    pub(super) set: NodeSet,
    pub(super) free_cpus: u32,
    pub(super) free_mib: u64,
    pub(super) launched_at: DateTime<Utc>,
    pub(super) ready_at: DateTime<Utc>,
    pub(super) ready: bool,
    /// Jobs placed on it.
    pub(super) jobs: Vec<u64>,
    /// When each job on it reaches its time limit (`None`: it has none).
    pub(super) ends: Vec<(u64, Option<DateTime<Utc>>)>,
}

#[derive(Debug, Default)]
pub(super) struct Fleet {
    pub(super) nodes: Vec<LocalNode>,
    /// Node names are `<set>-<owner>.<pid>-<n>`, n counting up for the process's life.
    pub(super) launched: u64,
    /// This executor's id (`<state dir>/executor-id`).
    pub(super) owner: String,
}

impl Fleet {
    /// `wants.nodes` ready nodes with room for a job that would run until `end` (`None`: no
    /// limit), or None. The simulator's rule (`domain::simulate`): a node of another size of its
    /// family only when the job ends, by the time limits, before the node's own jobs — the
    /// soonest-ending such node first — so it never keeps a node up longer (a job without a
    /// limit never does); else nodes of its own set, busy ones first; oldest first.
    pub(super) fn find(&self, wants: &Wants, end: Option<DateTime<Utc>>) -> Option<Vec<usize>> {
        let (demand, set) = (wants.demand, wants.set);
        let mut ranked: Vec<((u8, i64), usize)> = Vec::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if !n.ready
                || n.set.family != set.family
                || n.free_cpus < demand.cpus
                || n.free_mib < demand.memory_mib
            {
                continue;
            }
            // When its jobs' limits are all up (any without one: never).
            let ends_by = n
                .ends
                .iter()
                .try_fold(DateTime::<Utc>::MIN_UTC, |m, (_, e)| e.map(|e| m.max(e)))
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            let ends_first = end.filter(|e| !n.jobs.is_empty() && ends_by >= *e);
            let rank = if let Some(e) = ends_first {
                (0, (ends_by - e).num_seconds())
            } else if n.set != set {
                continue;
            } else if !n.jobs.is_empty() {
                (1, 0)
            } else {
                (2, 0)
            };
            ranked.push((rank, i));
        }
        let count = wants.nodes.max(1) as usize;
        if ranked.len() < count {
            return None;
        }
        ranked.sort_unstable();
        Some(ranked.into_iter().take(count).map(|r| r.1).collect())
    }

    pub(super) fn take(
        &mut self,
        at: &[usize],
        job_id: u64,
        demand: Demand,
        end: Option<DateTime<Utc>>,
    ) -> Vec<String> {
        at.iter()
            .map(|&i| {
                let n = &mut self.nodes[i];
                n.free_cpus -= demand.cpus;
                n.free_mib -= demand.memory_mib;
                n.ends.push((job_id, end));
                n.jobs.push(job_id);
                n.name.clone()
            })
            .collect()
    }

    pub(super) fn release(&mut self, job_id: u64, demand: Demand) {
        for n in self.nodes.iter_mut().filter(|n| n.jobs.contains(&job_id)) {
            n.jobs.retain(|j| *j != job_id);
            n.ends.retain(|(j, _)| *j != job_id);
            n.free_cpus += demand.cpus;
            n.free_mib += demand.memory_mib;
        }
    }

    pub(super) fn reconcile(
        &mut self,
        settings: &NodeSettings,
        desired: &BTreeMap<NodeSet, u32>,
        now: DateTime<Utc>,
    ) -> Vec<NodeChange> {
        let mut changes = Vec::new();
        let ms = |d: chrono::Duration| u64::try_from(d.num_milliseconds()).unwrap_or(0);
        for n in self
            .nodes
            .iter_mut()
            .filter(|n| !n.ready && n.ready_at <= now)
        {
            n.ready = true;
            changes.push(NodeChange::Ready {
                node: n.name.clone(),
                set: n.set,
                cold_start_ms: ms(now - n.launched_at),
            });
        }
        let sets: std::collections::BTreeSet<NodeSet> = desired
            .keys()
            .copied()
            .chain(self.nodes.iter().map(|n| n.set))
            .collect();
        let cold =
            chrono::Duration::from_std(settings.cold_start).unwrap_or(chrono::Duration::zero());
        let mut budget = settings.max_launch_per_step as usize;
        for set in sets {
            let want = desired.get(&set).copied().unwrap_or(0) as usize;
            let have = self.nodes.iter().filter(|n| n.set == set).count();
            if have < want {
                let Some(shape) = settings.catalog.shape(set) else {
                    continue;
                };
                let launch = (want - have).min(budget);
                budget -= launch;
                for _ in 0..launch {
                    self.launched += 1;
                    // `<set>-<executor id>.<pid>-<n>`: the executor id (stable for its state
                    // directory) tells this executor's nodes from other processes' in a shared
                    // log, the pid keeps a restarted executor's names new.
                    let name = format!(
                        "{set}-{}.{}-{}",
                        self.owner,
                        std::process::id(),
                        self.launched
                    );
                    let ready = cold.is_zero();
                    self.nodes.push(LocalNode {
                        name: name.clone(),
                        set,
                        free_cpus: shape.vcpus,
                        free_mib: shape.allocatable_mib,
                        launched_at: now,
                        ready_at: now + cold,
                        ready,
                        jobs: Vec::new(),
                        ends: Vec::new(),
                    });
                    changes.push(NodeChange::Launched {
                        node: name.clone(),
                        set,
                        instance_type: shape.instance_type.clone(),
                        launched_at: now,
                        ready_expected_at: now + cold,
                    });
                    if ready {
                        changes.push(NodeChange::Ready {
                            node: name,
                            set,
                            cold_start_ms: 0,
                        });
                    }
                }
            } else if have > want {
                // Idle nodes only: the ones still starting first, then the newest.
                let mut idle: Vec<usize> = (0..self.nodes.len())
                    .filter(|&i| self.nodes[i].set == set && self.nodes[i].jobs.is_empty())
                    .collect();
                idle.sort_by_key(|&i| {
                    (
                        self.nodes[i].ready,
                        std::cmp::Reverse(self.nodes[i].launched_at),
                    )
                });
                idle.truncate(have - want);
                idle.sort_unstable_by(|a, b| b.cmp(a));
                for i in idle {
                    let n = self.nodes.remove(i);
                    changes.push(NodeChange::Terminated {
                        node: n.name,
                        set,
                        reason: format!("{set} scaled down to {want}"),
                        up_ms: ms(now - n.launched_at),
                    });
                }
            }
        }
        changes
    }
}

#[async_trait]
impl NodeFleet for LocalExecutor {
    async fn reconcile(
        &self,
        desired: &BTreeMap<NodeSet, u32>,
        now: DateTime<Utc>,
    ) -> Vec<NodeChange> {
        let Some(settings) = &self.inner.settings.nodes else {
            return Vec::new();
        };
        let changes = match self.inner.fleet.lock() {
            Ok(mut fleet) => fleet.reconcile(settings, desired, now),
            Err(_) => Vec::new(),
        };
        if changes
            .iter()
            .any(|c| matches!(c, NodeChange::Ready { .. }))
        {
            self.dispatch().await;
        }
        changes
    }

    fn owns(&self, node: &str) -> bool {
        self.inner
            .fleet
            .lock()
            .map(|f| node.contains(&format!("-{}.", f.owner)))
            .unwrap_or(false)
    }

    async fn nodes(&self) -> Vec<String> {
        self.inner
            .fleet
            .lock()
            .map(|f| f.nodes.iter().map(|n| n.name.clone()).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(set: NodeSet, free_cpus: u32, ends: &[Option<i64>]) -> LocalNode {
        let t0 = DateTime::<Utc>::UNIX_EPOCH;
        LocalNode {
            name: format!("{set}-{}", ends.len()),
            set,
            free_cpus,
            free_mib: 1 << 20,
            launched_at: t0,
            ready_at: t0,
            ready: true,
            jobs: (0..ends.len() as u64).collect(),
            ends: ends
                .iter()
                .enumerate()
                .map(|(j, e)| (j as u64, e.map(|s| t0 + chrono::Duration::seconds(s))))
                .collect(),
        }
    }

    #[test]
    fn a_job_takes_another_size_only_where_it_ends_first_else_its_own_set() {
        let xlarge = NodeSet {
            family: Family::Compute,
            size: Size::Xlarge,
        };
        let medium = NodeSet {
            family: Family::Compute,
            size: Size::Medium,
        };
        let fleet = Fleet {
            nodes: vec![
                node(xlarge, 7, &[Some(3600)]),            // 0: ends at 3600
                node(xlarge, 7, &[Some(1800), Some(900)]), // 1: ends at 1800
                node(medium, 4, &[]),                      // 2: its own set, idle
                node(xlarge, 7, &[None]),                  // 3: a job without a limit
            ],
            ..Fleet::default()
        };
        let wants = Wants {
            demand: Demand {
                cpus: 3,
                memory_mib: 1024,
            },
            nodes: 1,
            set: medium,
            limit: None,
        };
        let at = |s: i64| Some(DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::seconds(s));
        // Ends at 600: every busy xlarge outlives it; the one ending soonest after it wins.
        assert_eq!(fleet.find(&wants, at(600)), Some(vec![1]));
        // Ends at 2000: only node 0 (3600) and node 3 (no limit) outlive it; 0 is sooner.
        assert_eq!(fleet.find(&wants, at(2000)), Some(vec![0]));
        // Ends at 4000: only the node without a limit outlives it, sooner than nothing.
        assert_eq!(fleet.find(&wants, at(4000)), Some(vec![3]));
        // No limit of its own: it never ends first, so only its own set.
        assert_eq!(fleet.find(&wants, None), Some(vec![2]));
        // Two nodes of its own set wanted, one there: none.
        let two = Wants { nodes: 2, ..wants };
        assert_eq!(fleet.find(&two, None), None);
    }
}
