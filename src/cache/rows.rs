//! Compact rows: what the index keeps of each claim, LocalVolume and PersistentVolume.
//!
//! A watch delivers whole objects; at 50,000 volumes a `PersistentVolume` as k8s-openapi
//! decodes it (every volume source inline, a `BTreeMap` node per map) costs kilobytes, held
//! once per store. The index instead keeps one row per object with exactly the fields
//! stowage reads, in a few hundred bytes:
//!
//! * strings that repeat across objects (namespaces, classes, nodes, pools, quantities,
//!   phases, provisioner names, finalizers) are interned once in [`Syms`] and held as a
//!   4-byte [`Sym`];
//! * uids and `pvc-<uid>` names are 16 bytes when they are canonical UUIDs ([`Id`],
//!   [`Name`]); resource versions are a `u64` when they are decimal ([`Rv`]); anything
//!   else is kept as text, so nothing is ever lost or rewritten;
//! * timestamps are whole seconds, as the API server serialises `metav1.Time`.
//!
//! A reconcile gets its object back with `to_object`: a k8s-openapi object holding exactly
//! the fields of the row ([`ClaimRow::FIELDS`] and its siblings list them). A field missing
//! there is missing for every reader, so the list is the contract, and the round-trip tests
//! in `cache::tests` check it field by field.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;

use k8s_openapi::api::core::v1::{
    NFSVolumeSource, ObjectReference, PersistentVolume, PersistentVolumeClaim,
    PersistentVolumeClaimSpec, PersistentVolumeClaimStatus, PersistentVolumeSpec,
    PersistentVolumeStatus, TypedLocalObjectReference, TypedObjectReference,
    VolumeResourceRequirements,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta, Time};
use k8s_openapi::jiff::Timestamp;

use crate::api::local_volume::{
    ClaimRef, LocalVolume, LocalVolumePhase, LocalVolumeSpec, LocalVolumeStatus, OnDelete,
};
use crate::api::names;

/// An interned string: a position in [`Syms`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Sym(NonZeroU32);

/// The intern table. Strings are never removed: only values that repeat across objects are
/// interned (see the module docs), so the table is bounded by the cluster's vocabulary, not
/// by its object count.
#[derive(Debug, Default)]
pub struct Syms {
    by_text: HashMap<Arc<str>, Sym>,
    texts: Vec<Arc<str>>,
}

impl Syms {
    /// The symbol of `text`, interning it on first sight.
    pub fn intern(&mut self, text: &str) -> Sym {
        if let Some(sym) = self.by_text.get(text) {
            return *sym;
        }
        let shared: Arc<str> = Arc::from(text);
        self.texts.push(shared.clone());
        let n = u32::try_from(self.texts.len())
            .ok()
            .and_then(NonZeroU32::new)
            .unwrap_or(NonZeroU32::MAX);
        let sym = Sym(n);
        self.by_text.insert(shared, sym);
        sym
    }

    /// [`Syms::intern`] of an optional string.
    pub fn intern_opt(&mut self, text: Option<&str>) -> Option<Sym> {
        text.map(|t| self.intern(t))
    }

    /// The symbol of `text` if it was interned.
    pub fn lookup(&self, text: &str) -> Option<Sym> {
        self.by_text.get(text).copied()
    }

    /// The text of `sym`.
    pub fn text(&self, sym: Sym) -> &str {
        let i = usize::try_from(sym.0.get()).unwrap_or(usize::MAX) - 1;
        self.texts.get(i).map_or("", |t| t)
    }

    /// The text of `sym` as an owned string.
    pub fn string(&self, sym: Sym) -> String {
        self.text(sym).to_string()
    }

    /// [`Syms::string`] of an optional symbol.
    pub fn string_opt(&self, sym: Option<Sym>) -> Option<String> {
        sym.map(|s| self.string(s))
    }

    /// How many strings are interned.
    pub fn len(&self) -> usize {
        self.texts.len()
    }

    /// Whether nothing is interned.
    pub fn is_empty(&self) -> bool {
        self.texts.is_empty()
    }
}

/// A uid: 16 bytes when it is a canonical (lower-case, hyphenated) UUID, as the API server
/// makes them; otherwise the text as given.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Id {
    /// A canonical UUID.
    Uuid([u8; 16]),
    /// Anything else, verbatim.
    Text(Box<str>),
}

impl Id {
    /// `text` as an id; its `Display` gives `text` back exactly.
    pub fn new(text: &str) -> Self {
        parse_uuid(text).map_or_else(|| Id::Text(text.into()), Id::Uuid)
    }

    /// Whether this is the id `text` stands for.
    pub fn is(&self, text: &str) -> bool {
        match self {
            Id::Uuid(bytes) => parse_uuid(text).as_ref() == Some(bytes),
            Id::Text(own) => **own == *text,
        }
    }
}

impl fmt::Display for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Id::Uuid(bytes) => write_uuid(f, bytes),
            Id::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Id {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A volume name: 16 bytes for `pvc-<canonical uuid>` (every name stowage gives), the text
/// otherwise.
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Name {
    /// `pvc-` and a canonical UUID.
    Pvc([u8; 16]),
    /// Anything else, verbatim.
    Text(Box<str>),
}

impl Name {
    /// `text` as a name; its `Display` gives `text` back exactly.
    pub fn new(text: &str) -> Self {
        text.strip_prefix(crate::cache::LOCAL_VOLUME_PREFIX)
            .and_then(parse_uuid)
            .map_or_else(|| Name::Text(text.into()), Name::Pvc)
    }

    /// `pvc-<uid>`: the name of the LocalVolume and PersistentVolume of the claim `uid`.
    pub fn for_uid(uid: &Id) -> Self {
        match uid {
            Id::Uuid(bytes) => Name::Pvc(*bytes),
            Id::Text(text) => Name::new(&format!("{}{text}", crate::cache::LOCAL_VOLUME_PREFIX)),
        }
    }
}

impl fmt::Display for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Name::Pvc(bytes) => {
                f.write_str(crate::cache::LOCAL_VOLUME_PREFIX)?;
                write_uuid(f, bytes)
            }
            Name::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Name {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

/// A resource version: a `u64` when it is a plain decimal (etcd's revisions), the text
/// otherwise (resource versions are opaque to clients).
#[derive(Clone, PartialEq, Eq, Hash)]
pub enum Rv {
    /// A decimal without leading zeros.
    Num(u64),
    /// Anything else, verbatim.
    Text(Box<str>),
}

impl Rv {
    /// `text` as a resource version; its `Display` gives `text` back exactly.
    pub fn new(text: &str) -> Self {
        match text.parse::<u64>() {
            Ok(n) if n.to_string() == text => Rv::Num(n),
            _ => Rv::Text(text.into()),
        }
    }
}

impl fmt::Display for Rv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rv::Num(n) => write!(f, "{n}"),
            Rv::Text(text) => f.write_str(text),
        }
    }
}

impl fmt::Debug for Rv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self}")
    }
}

fn parse_uuid(text: &str) -> Option<[u8; 16]> {
    let b = text.as_bytes();
    if b.len() != 36 {
        return None;
    }
    let mut out = [0u8; 16];
    let mut nibbles = 0usize;
    for (i, &c) in b.iter().enumerate() {
        if matches!(i, 8 | 13 | 18 | 23) {
            if c != b'-' {
                return None;
            }
            continue;
        }
        let v = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        let byte = out.get_mut(nibbles / 2)?;
        *byte = (*byte << 4) | v;
        nibbles += 1;
    }
    Some(out)
}

fn write_uuid(f: &mut fmt::Formatter<'_>, bytes: &[u8; 16]) -> fmt::Result {
    for (i, byte) in bytes.iter().enumerate() {
        if matches!(i, 4 | 6 | 8 | 10) {
            f.write_str("-")?;
        }
        write!(f, "{byte:02x}")?;
    }
    Ok(())
}

/// A timestamp in whole seconds since the epoch; `i64::MIN` for none.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Secs(i64);

impl Secs {
    /// No timestamp.
    pub const NONE: Secs = Secs(i64::MIN);

    fn new(time: Option<&Time>) -> Self {
        time.map_or(Self::NONE, |t| Secs(t.0.as_second()))
    }

    /// The timestamp, if any.
    pub fn get(self) -> Option<Timestamp> {
        (self != Self::NONE)
            .then(|| Timestamp::from_second(self.0).ok())
            .flatten()
    }

    fn time(self) -> Option<Time> {
        self.get().map(Time)
    }

    /// Whether there is a timestamp.
    pub fn is_some(self) -> bool {
        self != Self::NONE
    }
}

/// `i64` with `i64::MIN` for none (generations).
fn opt_i64(v: i64) -> Option<i64> {
    (v != i64::MIN).then_some(v)
}

fn quantity_of(map: Option<&BTreeMap<String, Quantity>>) -> Option<&str> {
    map?.get("storage").map(|q| q.0.as_str())
}

fn storage(syms: &Syms, sym: Option<Sym>) -> Option<BTreeMap<String, Quantity>> {
    sym.map(|s| BTreeMap::from([("storage".to_string(), Quantity(syms.string(s)))]))
}

/// A list of names (access modes, finalizers), interned whole: the same few lists repeat
/// on every object. The names cannot hold a `,` (the API server validates them as mode
/// names and qualified names), so they are joined with one; a list whose names do hold one
/// is interned name by name instead ([`Names::Each`]), so nothing is ever lost.
#[derive(Clone, Debug, PartialEq)]
pub enum Names {
    /// The whole list, `,`-joined.
    Joined(Sym),
    /// One symbol per name.
    Each(Box<[Sym]>),
}

fn intern_list(syms: &mut Syms, list: Option<&Vec<String>>) -> Option<Names> {
    let list = list?;
    if list.iter().any(|n| n.contains(',')) || list.first().is_some_and(String::is_empty) {
        return Some(Names::Each(list.iter().map(|n| syms.intern(n)).collect()));
    }
    Some(Names::Joined(syms.intern(&list.join(","))))
}

fn list(syms: &Syms, list: Option<&Names>) -> Option<Vec<String>> {
    Some(match list? {
        Names::Joined(sym) => match syms.text(*sym) {
            "" => Vec::new(),
            text => text.split(',').map(str::to_string).collect(),
        },
        Names::Each(each) => each.iter().map(|s| syms.string(*s)).collect(),
    })
}

fn annotation<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.annotations.as_ref()?.get(key).map(String::as_str)
}

fn label<'a>(meta: &'a ObjectMeta, key: &str) -> Option<&'a str> {
    meta.labels.as_ref()?.get(key).map(String::as_str)
}

/// The node a PV of ours lives on: its `stowage.io/node` annotation, or for a PV made
/// before that annotation, its `stowage.io/node` label (then always the whole name: a name
/// too long for a label never worked there).
pub fn pv_node(meta: &ObjectMeta) -> Option<&str> {
    annotation(meta, names::ANNOTATION_NODE).or_else(|| label(meta, names::LABEL_NODE))
}

fn string_map(syms: &Syms, entries: &[(&str, Option<Sym>)]) -> Option<BTreeMap<String, String>> {
    let map: BTreeMap<String, String> = entries
        .iter()
        .filter_map(|(k, v)| Some(((*k).to_string(), syms.string((*v)?))))
        .collect();
    (!map.is_empty()).then_some(map)
}

/// What a claim's row keeps that few claims have (all of it refused by the provisioner).
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRare {
    /// `spec.dataSource`.
    pub data_source: Option<TypedLocalObjectReference>,
    /// `spec.dataSourceRef`.
    pub data_source_ref: Option<TypedObjectReference>,
    /// `spec.selector`.
    pub selector: Option<LabelSelector>,
}

/// A PersistentVolumeClaim as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct ClaimRow {
    /// `metadata.uid`.
    pub uid: Id,
    /// `metadata.resourceVersion`.
    pub rv: Rv,
    /// `metadata.creationTimestamp`.
    pub created: Secs,
    /// `metadata.deletionTimestamp`.
    pub deleted: Secs,
    /// The GA `volume.kubernetes.io/storage-provisioner` annotation.
    pub provisioner: Option<Sym>,
    /// The beta `volume.beta.kubernetes.io/storage-provisioner` annotation.
    pub beta_provisioner: Option<Sym>,
    /// The `volume.kubernetes.io/selected-node` annotation.
    pub selected_node: Option<Sym>,
    /// `spec.storageClassName`.
    pub class: Option<Sym>,
    /// `spec.accessModes`.
    pub access_modes: Option<Names>,
    /// `spec.volumeMode`.
    pub volume_mode: Option<Sym>,
    /// `spec.volumeName`.
    pub volume_name: Option<Name>,
    /// `spec.resources.requests.storage`.
    pub request: Option<Sym>,
    /// Data sources and selector.
    pub rare: Option<Box<ClaimRare>>,
    /// `status.phase`.
    pub phase: Option<Sym>,
    /// `status.capacity.storage`.
    pub capacity: Option<Sym>,
}

impl ClaimRow {
    /// The fields a row keeps, for documentation and the round-trip test.
    pub const FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.namespace",
        "metadata.uid",
        "metadata.resourceVersion",
        "metadata.creationTimestamp",
        "metadata.deletionTimestamp",
        "metadata.annotations[volume.kubernetes.io/storage-provisioner]",
        "metadata.annotations[volume.beta.kubernetes.io/storage-provisioner]",
        "metadata.annotations[volume.kubernetes.io/selected-node]",
        "spec.storageClassName",
        "spec.accessModes",
        "spec.volumeMode",
        "spec.volumeName",
        "spec.resources.requests.storage",
        "spec.dataSource",
        "spec.dataSourceRef",
        "spec.selector",
        "status.phase",
        "status.capacity.storage",
    ];

    /// The row of `claim`.
    pub fn new(claim: &PersistentVolumeClaim, syms: &mut Syms) -> Self {
        let meta = &claim.metadata;
        let spec = claim.spec.as_ref();
        let status = claim.status.as_ref();
        let rare = spec.and_then(|s| {
            (s.data_source.is_some() || s.data_source_ref.is_some() || s.selector.is_some()).then(
                || {
                    Box::new(ClaimRare {
                        data_source: s.data_source.clone(),
                        data_source_ref: s.data_source_ref.clone(),
                        selector: s.selector.clone(),
                    })
                },
            )
        });
        ClaimRow {
            uid: Id::new(meta.uid.as_deref().unwrap_or_default()),
            rv: Rv::new(meta.resource_version.as_deref().unwrap_or_default()),
            created: Secs::new(meta.creation_timestamp.as_ref()),
            deleted: Secs::new(meta.deletion_timestamp.as_ref()),
            provisioner: syms.intern_opt(annotation(meta, names::ANNOTATION_STORAGE_PROVISIONER)),
            beta_provisioner: syms
                .intern_opt(annotation(meta, names::ANNOTATION_BETA_STORAGE_PROVISIONER)),
            selected_node: syms.intern_opt(annotation(meta, names::ANNOTATION_SELECTED_NODE)),
            class: syms.intern_opt(spec.and_then(|s| s.storage_class_name.as_deref())),
            access_modes: intern_list(syms, spec.and_then(|s| s.access_modes.as_ref())),
            volume_mode: syms.intern_opt(spec.and_then(|s| s.volume_mode.as_deref())),
            volume_name: spec.and_then(|s| s.volume_name.as_deref()).map(Name::new),
            request: syms.intern_opt(quantity_of(
                spec.and_then(|s| s.resources.as_ref())
                    .and_then(|r| r.requests.as_ref()),
            )),
            rare,
            phase: syms.intern_opt(status.and_then(|s| s.phase.as_deref())),
            capacity: syms.intern_opt(quantity_of(status.and_then(|s| s.capacity.as_ref()))),
        }
    }

    /// The claim `namespace/name` with the row's fields ([`ClaimRow::FIELDS`]).
    pub fn to_object(&self, namespace: &str, name: &str, syms: &Syms) -> PersistentVolumeClaim {
        let rare = self.rare.as_deref();
        let requests = storage(syms, self.request);
        let has_spec = self.class.is_some()
            || self.access_modes.is_some()
            || self.volume_mode.is_some()
            || self.volume_name.is_some()
            || requests.is_some()
            || rare.is_some();
        let has_status = self.phase.is_some() || self.capacity.is_some();
        PersistentVolumeClaim {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(namespace.to_string()),
                uid: Some(self.uid.to_string()),
                resource_version: Some(self.rv.to_string()),
                creation_timestamp: self.created.time(),
                deletion_timestamp: self.deleted.time(),
                annotations: string_map(
                    syms,
                    &[
                        (names::ANNOTATION_STORAGE_PROVISIONER, self.provisioner),
                        (
                            names::ANNOTATION_BETA_STORAGE_PROVISIONER,
                            self.beta_provisioner,
                        ),
                        (names::ANNOTATION_SELECTED_NODE, self.selected_node),
                    ],
                ),
                ..ObjectMeta::default()
            },
            spec: has_spec.then(|| PersistentVolumeClaimSpec {
                storage_class_name: syms.string_opt(self.class),
                access_modes: list(syms, self.access_modes.as_ref()),
                volume_mode: syms.string_opt(self.volume_mode),
                volume_name: self.volume_name.as_ref().map(Name::to_string),
                resources: requests.map(|r| VolumeResourceRequirements {
                    requests: Some(r),
                    ..VolumeResourceRequirements::default()
                }),
                data_source: rare.and_then(|r| r.data_source.clone()),
                data_source_ref: rare.and_then(|r| r.data_source_ref.clone()),
                selector: rare.and_then(|r| r.selector.clone()),
                ..PersistentVolumeClaimSpec::default()
            }),
            status: has_status.then(|| PersistentVolumeClaimStatus {
                phase: syms.string_opt(self.phase),
                capacity: storage(syms, self.capacity),
                ..PersistentVolumeClaimStatus::default()
            }),
        }
    }
}

/// A LocalVolume as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeRow {
    /// `metadata.uid`.
    pub uid: Id,
    /// `metadata.resourceVersion`.
    pub rv: Rv,
    /// `metadata.generation` (`i64::MIN`: none).
    pub generation: i64,
    /// `metadata.deletionTimestamp`.
    pub deleted: Secs,
    /// `metadata.finalizers`.
    pub finalizers: Option<Names>,
    /// `spec.nodeName`.
    pub node: Sym,
    /// `spec.pool`.
    pub pool: Sym,
    /// `spec.sizeBytes`.
    pub size: u64,
    /// `spec.claim.namespace`.
    pub claim_namespace: Sym,
    /// `spec.claim.name`.
    pub claim_name: Box<str>,
    /// `spec.claim.uid`; see [`ClaimUid`].
    pub claim_uid: ClaimUid,
    /// `spec.onDelete`.
    pub on_delete: OnDelete,
    /// The status, if any.
    pub status: Option<VolumeStatusRow>,
}

/// A LocalVolume's `status.path`: the agents put a volume at `<pool directory>/<its name>`,
/// so the directory is interned and the name not repeated; any other path is kept whole.
#[derive(Clone, Debug, PartialEq)]
pub enum VolumePath {
    /// `<directory>/<the LocalVolume's name>`.
    Under(Sym),
    /// Anything else, verbatim.
    Text(Box<str>),
}

impl VolumePath {
    fn new(path: &str, name: &str, syms: &mut Syms) -> Self {
        match path
            .strip_suffix(name)
            .and_then(|dir| dir.strip_suffix('/'))
            .filter(|_| !name.is_empty())
        {
            Some(dir) => VolumePath::Under(syms.intern(dir)),
            None => VolumePath::Text(path.into()),
        }
    }

    fn text(&self, name: &str, syms: &Syms) -> String {
        match self {
            VolumePath::Under(dir) => format!("{}/{name}", syms.text(*dir)),
            VolumePath::Text(path) => path.to_string(),
        }
    }
}

/// A LocalVolume's claim uid: nothing when it is the uid the volume's name `pvc-<uid>`
/// already holds (every LocalVolume stowage makes), 16 bytes of each row saved.
#[derive(Clone, Debug, PartialEq)]
pub enum ClaimUid {
    /// The uid in the volume's name.
    OfName,
    /// Any other, verbatim.
    Other(Box<Id>),
}

impl ClaimUid {
    fn new(uid: &str, name: &str) -> Self {
        let uid = Id::new(uid);
        match (&uid, Name::new(name)) {
            (Id::Uuid(u), Name::Pvc(n)) if *u == n => ClaimUid::OfName,
            _ => ClaimUid::Other(Box::new(uid)),
        }
    }

    /// The uid, given the volume's name (the row's key).
    pub fn text(&self, name: &str) -> String {
        match self {
            ClaimUid::Other(uid) => uid.to_string(),
            ClaimUid::OfName => {
                let in_name = match Name::new(name) {
                    Name::Pvc(bytes) => Some(Id::Uuid(bytes).to_string()),
                    Name::Text(_) => None,
                };
                // `new` makes `OfName` only for a `pvc-<uuid>` name, and a row is only read
                // under its own key.
                debug_assert!(in_name.is_some(), "{name} holds no uid");
                in_name.unwrap_or_default()
            }
        }
    }
}

/// A LocalVolume's status as the index keeps it (the whole status). The two optional
/// numbers are kept with a mask of which are set: two `Option`s would take 16 bytes more.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeStatusRow {
    /// `status.phase`.
    pub phase: LocalVolumePhase,
    /// Bit 0: `size` is set; bit 1: `observed_generation` is set.
    set: u8,
    size: u64,
    observed_generation: i64,
    /// `status.path`.
    pub path: Option<VolumePath>,
    /// `status.message`.
    pub message: Option<Box<str>>,
}

impl VolumeStatusRow {
    const SIZE: u8 = 1;
    const GENERATION: u8 = 2;

    /// `status.sizeBytes`.
    pub fn size(&self) -> Option<u64> {
        (self.set & Self::SIZE != 0).then_some(self.size)
    }

    /// `status.observedGeneration`.
    pub fn observed_generation(&self) -> Option<i64> {
        (self.set & Self::GENERATION != 0).then_some(self.observed_generation)
    }
}

impl VolumeRow {
    /// The fields a row keeps.
    pub const FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.uid",
        "metadata.resourceVersion",
        "metadata.generation",
        "metadata.deletionTimestamp",
        "metadata.finalizers",
        "spec (all of it)",
        "status (all of it)",
    ];

    /// The row of `volume`.
    pub fn new(volume: &LocalVolume, syms: &mut Syms) -> Self {
        let meta = &volume.metadata;
        let spec = &volume.spec;
        let name = meta.name.as_deref().unwrap_or_default();
        VolumeRow {
            uid: Id::new(meta.uid.as_deref().unwrap_or_default()),
            rv: Rv::new(meta.resource_version.as_deref().unwrap_or_default()),
            generation: meta.generation.unwrap_or(i64::MIN),
            deleted: Secs::new(meta.deletion_timestamp.as_ref()),
            finalizers: intern_list(syms, meta.finalizers.as_ref()),
            node: syms.intern(&spec.node_name),
            pool: syms.intern(&spec.pool),
            size: spec.size_bytes,
            claim_namespace: syms.intern(&spec.claim.namespace),
            claim_name: spec.claim.name.as_str().into(),
            claim_uid: ClaimUid::new(&spec.claim.uid, name),
            on_delete: spec.on_delete,
            status: volume.status.as_ref().map(|s| VolumeStatusRow {
                phase: s.phase,
                set: (if s.size_bytes.is_some() {
                    VolumeStatusRow::SIZE
                } else {
                    0
                }) | (if s.observed_generation.is_some() {
                    VolumeStatusRow::GENERATION
                } else {
                    0
                }),
                size: s.size_bytes.unwrap_or_default(),
                observed_generation: s.observed_generation.unwrap_or_default(),
                path: s.path.as_deref().map(|p| VolumePath::new(p, name, syms)),
                message: s.message.as_deref().map(Into::into),
            }),
        }
    }

    /// The LocalVolume `name` with the row's fields ([`VolumeRow::FIELDS`]).
    pub fn to_object(&self, name: &str, syms: &Syms) -> LocalVolume {
        LocalVolume {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                uid: Some(self.uid.to_string()),
                resource_version: Some(self.rv.to_string()),
                generation: opt_i64(self.generation),
                deletion_timestamp: self.deleted.time(),
                finalizers: list(syms, self.finalizers.as_ref()),
                ..ObjectMeta::default()
            },
            spec: LocalVolumeSpec {
                node_name: syms.string(self.node),
                pool: syms.string(self.pool),
                size_bytes: self.size,
                claim: ClaimRef {
                    namespace: syms.string(self.claim_namespace),
                    name: self.claim_name.to_string(),
                    uid: self.claim_uid.text(name),
                },
                on_delete: self.on_delete,
            },
            status: self.status.as_ref().map(|s| LocalVolumeStatus {
                phase: s.phase,
                path: s.path.as_ref().map(|p| p.text(name, syms)),
                size_bytes: s.size(),
                size: s.size().map(|b| crate::ledger::Bytes(b).to_string()),
                message: s.message.as_deref().map(str::to_string),
                observed_generation: s.observed_generation(),
            }),
        }
    }
}

/// A PersistentVolume of stowage's as the index keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct PvRow {
    /// `metadata.uid`.
    pub uid: Id,
    /// `metadata.resourceVersion`.
    pub rv: Rv,
    /// `metadata.deletionTimestamp`.
    pub deleted: Secs,
    /// `metadata.finalizers`.
    pub finalizers: Option<Names>,
    /// The `pv.kubernetes.io/provisioned-by` annotation.
    pub provisioned_by: Option<Sym>,
    /// The NFS delete-mode annotation.
    pub nfs_on_delete: Option<Sym>,
    /// The NFS server annotation.
    pub nfs_server: Option<Sym>,
    /// The `stowage.io/node` label.
    pub node: Option<Sym>,
    /// `spec.claimRef` (namespace, name, uid).
    pub claim: Option<PvClaim>,
    /// `spec.capacity.storage`.
    pub capacity: Option<Sym>,
    /// `spec.persistentVolumeReclaimPolicy`.
    pub reclaim_policy: Option<Sym>,
    /// `spec.storageClassName`.
    pub class: Option<Sym>,
    /// `spec.nfs`.
    pub nfs: Option<Box<PvNfs>>,
    /// `status.phase`.
    pub phase: Option<Sym>,
}

/// A PV's `spec.nfs` as its row keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct PvNfs {
    /// `server`.
    pub server: Sym,
    /// `path`.
    pub path: Box<str>,
    /// `readOnly`.
    pub read_only: Option<bool>,
}

/// A PV's `spec.claimRef` as its row keeps it.
#[derive(Clone, Debug, PartialEq)]
pub struct PvClaim {
    /// `namespace`.
    pub namespace: Option<Sym>,
    /// `name`.
    pub name: Option<Box<str>>,
    /// `uid`.
    pub uid: Option<Id>,
}

impl PvRow {
    /// The fields a row keeps.
    pub const FIELDS: &'static [&'static str] = &[
        "metadata.name",
        "metadata.uid",
        "metadata.resourceVersion",
        "metadata.deletionTimestamp",
        "metadata.finalizers",
        "metadata.annotations[pv.kubernetes.io/provisioned-by]",
        "metadata.annotations[stowage.io/nfs-on-delete]",
        "metadata.annotations[stowage.io/nfs-server]",
        "metadata.annotations[stowage.io/node]",
        "metadata.labels[stowage.io/node]",
        "spec.claimRef.{namespace,name,uid}",
        "spec.capacity.storage",
        "spec.persistentVolumeReclaimPolicy",
        "spec.storageClassName",
        "spec.nfs",
        "status.phase",
    ];

    /// The row of `pv`.
    pub fn new(pv: &PersistentVolume, syms: &mut Syms) -> Self {
        let meta = &pv.metadata;
        let spec = pv.spec.as_ref();
        PvRow {
            uid: Id::new(meta.uid.as_deref().unwrap_or_default()),
            rv: Rv::new(meta.resource_version.as_deref().unwrap_or_default()),
            deleted: Secs::new(meta.deletion_timestamp.as_ref()),
            finalizers: intern_list(syms, meta.finalizers.as_ref()),
            provisioned_by: syms.intern_opt(annotation(meta, names::ANNOTATION_PROVISIONED_BY)),
            nfs_on_delete: syms.intern_opt(annotation(meta, names::ANNOTATION_NFS_ON_DELETE)),
            nfs_server: syms.intern_opt(annotation(meta, names::ANNOTATION_NFS_SERVER)),
            node: syms.intern_opt(pv_node(meta)),
            claim: spec.and_then(|s| s.claim_ref.as_ref()).map(|r| PvClaim {
                namespace: syms.intern_opt(r.namespace.as_deref()),
                name: r.name.as_deref().map(Into::into),
                uid: r.uid.as_deref().map(Id::new),
            }),
            capacity: syms.intern_opt(quantity_of(spec.and_then(|s| s.capacity.as_ref()))),
            reclaim_policy: syms
                .intern_opt(spec.and_then(|s| s.persistent_volume_reclaim_policy.as_deref())),
            class: syms.intern_opt(spec.and_then(|s| s.storage_class_name.as_deref())),
            nfs: spec.and_then(|s| s.nfs.as_ref()).map(|n| {
                Box::new(PvNfs {
                    server: syms.intern(&n.server),
                    path: n.path.as_str().into(),
                    read_only: n.read_only,
                })
            }),
            phase: syms.intern_opt(pv.status.as_ref().and_then(|s| s.phase.as_deref())),
        }
    }

    /// The PersistentVolume `name` with the row's fields ([`PvRow::FIELDS`]).
    pub fn to_object(&self, name: &str, syms: &Syms) -> PersistentVolume {
        let node = self.node.map(|n| {
            let value = names::node_label_value(syms.string(n).as_str()).into_owned();
            (names::LABEL_NODE.to_string(), value)
        });
        PersistentVolume {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                uid: Some(self.uid.to_string()),
                resource_version: Some(self.rv.to_string()),
                deletion_timestamp: self.deleted.time(),
                finalizers: list(syms, self.finalizers.as_ref()),
                annotations: string_map(
                    syms,
                    &[
                        (names::ANNOTATION_PROVISIONED_BY, self.provisioned_by),
                        (names::ANNOTATION_NFS_ON_DELETE, self.nfs_on_delete),
                        (names::ANNOTATION_NFS_SERVER, self.nfs_server),
                        (names::ANNOTATION_NODE, self.node),
                    ],
                ),
                labels: node.map(|n| BTreeMap::from([n])),
                ..ObjectMeta::default()
            },
            spec: Some(PersistentVolumeSpec {
                claim_ref: self.claim.as_ref().map(|c| ObjectReference {
                    api_version: Some("v1".to_string()),
                    kind: Some("PersistentVolumeClaim".to_string()),
                    namespace: syms.string_opt(c.namespace),
                    name: c.name.as_deref().map(str::to_string),
                    uid: c.uid.as_ref().map(Id::to_string),
                    ..ObjectReference::default()
                }),
                capacity: storage(syms, self.capacity),
                persistent_volume_reclaim_policy: syms.string_opt(self.reclaim_policy),
                storage_class_name: syms.string_opt(self.class),
                nfs: self.nfs.as_ref().map(|n| NFSVolumeSource {
                    server: syms.string(n.server),
                    path: n.path.to_string(),
                    read_only: n.read_only,
                }),
                ..PersistentVolumeSpec::default()
            }),
            status: self.phase.map(|p| PersistentVolumeStatus {
                phase: Some(syms.string(p)),
                ..PersistentVolumeStatus::default()
            }),
        }
    }

    /// The namespace and name of the claim the PV is bound to (or meant for).
    pub fn claim_key(&self, syms: &Syms) -> Option<(String, String)> {
        let c = self.claim.as_ref()?;
        Some((syms.string(c.namespace?), c.name.as_deref()?.to_string()))
    }
}
