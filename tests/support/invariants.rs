//! The promises stowage keeps once everything has settled, checked against the API objects
//! and the pool directories of a running [`Env`]: every claim Bound exactly once, every PV
//! stowage made belonging to one live claim, no pool over allocatable, nothing without a
//! claim, deleted claims' data dealt with per class.
//!
//! Whether a deleted claim's data must be in the archive depends on whether its directory
//! was ever made, which a claim deleted while it was being provisioned leaves open: a
//! [`PathWatch`] on every pool, started before the first claim, records each volume
//! directory that ever appeared, so an archiving class must show exactly one archive of a
//! directory that existed and none of one that never did.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use k8s_openapi::api::core::v1::PersistentVolume;
use kube::api::ListParams;
use kube::{Api, ResourceExt};
use parking_lot::Mutex;
use rustix::fs::inotify;
use stowage::api::local_volume::OnDelete;
use stowage::api::names;
use stowage::api::storage_node::StorageNode;

use super::stack::Env;

/// A claim the test deleted, and what its class says happens to its data.
#[derive(Clone, Debug)]
pub struct Deleted {
    /// The claim's name.
    pub claim: String,
    /// Its volume (`pvc-<uid>`).
    pub volume: String,
    /// The node holding the data; `None` for a claim deleted while it was being
    /// provisioned (its data, if any was made, may be on any node).
    pub node: Option<String>,
    /// The class's onDelete.
    pub on_delete: OnDelete,
}

/// How many times each invariant was checked (one per object looked at).
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    /// Claims found Bound to the one PV made for their uid.
    pub bound_once: usize,
    /// PersistentVolumes, all of them made by stowage for a live claim (as many as claims).
    pub pvs: usize,
    /// Pools found within their allocatable bytes.
    pub pools_within: usize,
    /// LocalVolumes found to have their claim and PV.
    pub volumes_owned: usize,
    /// Volume directories found to belong to a LocalVolume (or a retained claim).
    pub dirs_owned: usize,
    /// Deleted claims whose data was found deleted, archived or kept per their class.
    pub deleted_dealt: usize,
}

impl fmt::Display for Counts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "claims bound exactly once: {}; PVs, each of a live claim: {}; pools within allocatable: {}; LocalVolumes with a claim: {}; directories with a LocalVolume: {}; deleted claims dealt with per class: {}",
            self.bound_once,
            self.pvs,
            self.pools_within,
            self.volumes_owned,
            self.dirs_owned,
            self.deleted_dealt
        )
    }
}

/// Checks every invariant once; `Err` names the first one broken (the caller polls until
/// `Ok` or a deadline, since the system converges asynchronously). `deleted` lists the
/// claims the test deleted; those of a retaining class keep their directory. `watch` is the
/// [`PathWatch`] on the env's pools, started before any claim was made.
pub async fn check(env: &Env, watch: &PathWatch, deleted: &[Deleted]) -> Result<Counts, String> {
    let mut counts = Counts::default();
    let lp = ListParams::default();
    let claims = env
        .claims()
        .list(&lp)
        .await
        .map_err(|e| e.to_string())?
        .items;
    let pvs = env.pvs().list(&lp).await.map_err(|e| e.to_string())?.items;
    let lvs = env.lvs().list(&lp).await.map_err(|e| e.to_string())?.items;

    // Claim uid → PVs whose claimRef names that uid. Every PV counts: only stowage makes
    // PVs in these tests, and each one it made must name the uid of the claim it was made
    // for (and be named after it); one without a claimRef uid is a leak, not an exception.
    let mut pvs_of: HashMap<String, Vec<&PersistentVolume>> = HashMap::new();
    for pv in &pvs {
        let name = pv.name_any();
        let by = pv.annotations().get(names::ANNOTATION_PROVISIONED_BY);
        if !matches!(
            by.map(String::as_str),
            Some(names::PROVISIONER_LOCAL | names::PROVISIONER_NFS)
        ) {
            return Err(format!(
                "PV {name} is provisioned by {by:?}, not by stowage"
            ));
        }
        let Some(uid) = pv
            .spec
            .as_ref()
            .and_then(|s| s.claim_ref.as_ref())
            .and_then(|r| r.uid.clone())
        else {
            return Err(format!("PV {name} has no claimRef uid"));
        };
        if name != format!("pvc-{uid}") {
            return Err(format!("PV {name} claims uid {uid}, not its own"));
        }
        pvs_of.entry(uid).or_default().push(pv);
    }
    let mut live_uids = BTreeSet::new();
    for c in &claims {
        let name = c.name_any();
        let uid = c.uid().unwrap_or_default();
        live_uids.insert(uid.clone());
        let phase = c.status.as_ref().and_then(|s| s.phase.as_deref());
        if phase != Some("Bound") {
            return Err(format!("claim {name} is {phase:?}, not Bound"));
        }
        let want = format!("pvc-{uid}");
        let bound_to = c.spec.as_ref().and_then(|s| s.volume_name.clone());
        if bound_to.as_deref() != Some(want.as_str()) {
            return Err(format!("claim {name} is bound to {bound_to:?}, not {want}"));
        }
        let mine = pvs_of.get(&uid).map(Vec::len).unwrap_or(0);
        if mine != 1 {
            return Err(format!(
                "claim {name} (uid {uid}) has {mine} PVs claiming it"
            ));
        }
        counts.bound_once += 1;
    }
    for (uid, list) in &pvs_of {
        if !live_uids.contains(uid) {
            let names: Vec<String> = list.iter().map(|p| p.name_any()).collect();
            return Err(format!(
                "PVs {names:?} claim uid {uid}, whose claim is gone"
            ));
        }
    }
    // Each claim has its one PV and each PV a live claim, so the totals agree.
    if pvs.len() != claims.len() {
        return Err(format!("{} PVs for {} claims", pvs.len(), claims.len()));
    }
    counts.pvs = pvs.len();

    // Pools: the LocalVolumes' sizes (what the ledger allocates) and the agent's own report.
    let mut allocated: BTreeMap<(String, String), u64> = BTreeMap::new();
    for lv in &lvs {
        *allocated
            .entry((lv.spec.node_name.clone(), lv.spec.pool.clone()))
            .or_default() += lv.spec.size_bytes;
    }
    let nodes = Api::<StorageNode>::all(env.client.clone())
        .list(&lp)
        .await
        .map_err(|e| e.to_string())?
        .items;
    for sn in &nodes {
        for pool in sn.status.iter().flat_map(|s| s.pools.iter()) {
            let key = (sn.name_any(), pool.name.clone());
            let sum = allocated.get(&key).copied().unwrap_or(0);
            if sum > pool.allocatable_bytes || pool.allocated_bytes > pool.allocatable_bytes {
                return Err(format!(
                    "pool {key:?}: LocalVolumes {sum} / reported {} bytes above allocatable {}",
                    pool.allocated_bytes, pool.allocatable_bytes
                ));
            }
            counts.pools_within += 1;
        }
    }

    // LocalVolumes: each belongs to a live claim and its PV, and each local PV has its
    // LocalVolume (which holds the pool's allocation and the agent's finalizer).
    let pv_names: BTreeSet<String> = pvs.iter().map(|p| p.name_any()).collect();
    let lv_names: BTreeSet<String> = lvs.iter().map(|l| l.name_any()).collect();
    for pv in &pvs {
        let local = pv
            .annotations()
            .get(names::ANNOTATION_PROVISIONED_BY)
            .is_some_and(|p| p == names::PROVISIONER_LOCAL);
        if local && !lv_names.contains(&pv.name_any()) {
            return Err(format!("local PV {} has no LocalVolume", pv.name_any()));
        }
    }
    for lv in &lvs {
        let name = lv.name_any();
        if !live_uids.contains(&lv.spec.claim.uid) {
            return Err(format!("LocalVolume {name} has no claim"));
        }
        if !pv_names.contains(&name) {
            return Err(format!("LocalVolume {name} has no PV"));
        }
        counts.volumes_owned += 1;
    }

    // Directories: every volume directory in a pool is a LocalVolume of that node, or the
    // kept data of a deleted claim whose class retains it; no staging leftovers.
    let retained: BTreeSet<&str> = deleted
        .iter()
        .filter(|d| d.on_delete == OnDelete::Retain)
        .map(|d| d.volume.as_str())
        .collect();
    for agent in &env.agents {
        let mine: BTreeSet<String> = lvs
            .iter()
            .filter(|l| l.spec.node_name == agent.name)
            .map(|l| l.name_any())
            .collect();
        for entry in entries(&agent.pool_dir) {
            if entry.starts_with(".staging-") {
                return Err(format!("staging leftover {entry} in {}", agent.name));
            }
            if entry.starts_with('.') {
                continue;
            }
            if !mine.contains(&entry) && !retained.contains(entry.as_str()) {
                return Err(format!(
                    "directory {entry} on {} has no LocalVolume",
                    agent.name
                ));
            }
            counts.dirs_owned += 1;
        }
        for lv in &mine {
            if !agent.pool_dir.join(lv).is_dir() {
                return Err(format!(
                    "LocalVolume {lv} has no directory on {}",
                    agent.name
                ));
            }
        }
    }

    // Deleted claims: no objects left, the data as the class says.
    for d in deleted {
        if claims
            .iter()
            .any(|c| c.name_any() == d.claim && c.uid() == uid_of(&d.volume))
        {
            return Err(format!("deleted claim {} still exists", d.claim));
        }
        if pv_names.contains(&d.volume) {
            return Err(format!(
                "PV {} of deleted claim {} remains",
                d.volume, d.claim
            ));
        }
        if lvs.iter().any(|l| l.name_any() == d.volume) {
            return Err(format!(
                "LocalVolume {} of deleted claim {} remains",
                d.volume, d.claim
            ));
        }
        let pools: Vec<&Path> = env
            .agents
            .iter()
            .filter(|a| d.node.as_ref().is_none_or(|n| *n == a.name))
            .map(|a| a.pool_dir.as_path())
            .collect();
        let present = pools.iter().any(|p| p.join(&d.volume).exists());
        let existed = watch.existed(&pools, &d.volume)?;
        if d.node.is_some() && !existed {
            return Err(format!(
                "deleted claim {} was bound on {:?}, but the watch never saw its directory {}",
                d.claim, d.node, d.volume
            ));
        }
        let archived: usize = pools
            .iter()
            .map(|p| {
                entries(&p.join(".archive"))
                    .iter()
                    .filter(|a| a.starts_with(&format!("{}-", d.volume)))
                    .count()
            })
            .sum();
        let ok = match d.on_delete {
            OnDelete::Delete => !present && archived == 0,
            // Exactly one archive of a directory that was made (even if the claim was
            // deleted while it was being provisioned), none of one that never was.
            OnDelete::Archive => !present && archived == usize::from(existed),
            OnDelete::Retain => present && archived == 0,
        };
        if !ok {
            return Err(format!(
                "deleted claim {} ({:?}): directory ever made {existed}, present {present}, archived {archived} times",
                d.claim, d.on_delete
            ));
        }
        counts.deleted_dealt += 1;
    }
    Ok(counts)
}

fn uid_of(volume: &str) -> Option<String> {
    volume.strip_prefix("pvc-").map(str::to_string)
}

/// Entry names of a directory; none if it does not exist.
pub fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The claim's volume name, `pvc-<uid>`.
pub async fn volume_of(env: &Env, claim: &str) -> String {
    let c = env.claims().get(claim).await.unwrap();
    format!("pvc-{}", c.uid().unwrap())
}

/// Every entry that ever appeared in the pool directories (made there, or renamed into
/// them), recorded by inotify from before the first claim: whether a volume's directory
/// existed at all, which a directory that was made and then archived or deleted no longer
/// shows. Events queue in the kernel and are read whenever the record is asked.
pub struct PathWatch {
    fd: OwnedFd,
    /// Watch descriptor → the pool directory it watches.
    dirs: HashMap<i32, PathBuf>,
    /// Names seen per pool directory.
    seen: Mutex<HashMap<PathBuf, BTreeSet<String>>>,
}

impl PathWatch {
    /// Watches every agent's pool directory of `env`. Call it before the first claim.
    pub fn start(env: &Env) -> PathWatch {
        let fd = inotify::init(inotify::CreateFlags::NONBLOCK | inotify::CreateFlags::CLOEXEC)
            .expect("inotify_init1");
        let mut dirs = HashMap::new();
        let mut seen = HashMap::new();
        for a in &env.agents {
            let wd = inotify::add_watch(
                &fd,
                &a.pool_dir,
                inotify::WatchFlags::CREATE
                    | inotify::WatchFlags::MOVED_TO
                    | inotify::WatchFlags::ONLYDIR,
            )
            .unwrap_or_else(|e| panic!("inotify watch on {}: {e}", a.pool_dir.display()));
            dirs.insert(wd, a.pool_dir.clone());
            // Whatever is there already (nothing, before the first claim).
            seen.insert(
                a.pool_dir.clone(),
                entries(&a.pool_dir).into_iter().collect(),
            );
        }
        PathWatch {
            fd,
            dirs,
            seen: Mutex::new(seen),
        }
    }

    /// Whether `name` ever existed in one of `pools` (each a watched pool directory).
    /// `Err` if the kernel's event queue overflowed, so the record has holes.
    pub fn existed(&self, pools: &[&Path], name: &str) -> Result<bool, String> {
        self.drain()?;
        let seen = self.seen.lock();
        Ok(pools.iter().any(|p| {
            p.join(name).exists()
                || seen
                    .get(*p)
                    .unwrap_or_else(|| panic!("{} is not watched", p.display()))
                    .contains(name)
        }))
    }

    /// Reads every queued event into the record.
    fn drain(&self) -> Result<(), String> {
        let mut buf = vec![MaybeUninit::<u8>::uninit(); 64 * 1024];
        let mut reader = inotify::Reader::new(&self.fd, &mut buf);
        let mut seen = self.seen.lock();
        loop {
            match reader.next() {
                Ok(event) => {
                    if event.events().contains(inotify::ReadFlags::QUEUE_OVERFLOW) {
                        return Err("the pools' inotify queue overflowed: the record of which directories existed has holes".into());
                    }
                    let (Some(dir), Some(name)) = (self.dirs.get(&event.wd()), event.file_name())
                    else {
                        continue;
                    };
                    seen.entry(dir.clone())
                        .or_default()
                        .insert(name.to_string_lossy().into_owned());
                }
                Err(rustix::io::Errno::WOULDBLOCK) => return Ok(()),
                Err(e) => return Err(format!("reading the pools' inotify events: {e}")),
            }
        }
    }
}
