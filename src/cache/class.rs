//! The parameters of a `local.stowage.io` StorageClass.
//!
//! ```yaml
//! provisioner: local.stowage.io
//! parameters:
//!   pool: fast          # default "default"
//!   placement: binpack  # spread | binpack, default spread
//!   onDelete: archive   # delete | archive | retain, default delete
//! ```
//!
//! Any other key is refused: a misspelt `ondelete: retain` must not silently delete data.
//!
//! A class with `reclaimPolicy: Retain` gets `onDelete: retain` whatever its parameter
//! says: its PVs are never released by stowage, so the only way their LocalVolume goes is
//! an admin deleting it, and that must not take the data an admin chose to keep.

use k8s_openapi::api::storage::v1::StorageClass;

use crate::api::local_volume::OnDelete;
use crate::ledger::{Placement, PoolName};

/// Name of the pool parameter.
pub const PARAM_POOL: &str = "pool";
/// Name of the placement parameter.
pub const PARAM_PLACEMENT: &str = "placement";
/// Name of the parameter saying what the agent does with a deleted volume's data.
pub const PARAM_ON_DELETE: &str = "onDelete";
/// The pool used when a class names none.
pub const DEFAULT_POOL: &str = "default";

/// What a `local.stowage.io` StorageClass asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClassParams {
    /// The pool the class's volumes go to.
    pub pool: PoolName,
    /// How the class's volumes are placed.
    pub placement: Placement,
    /// What the agent does with a volume's data once its PersistentVolume is deleted:
    /// always [`OnDelete::Retain`] for a class whose reclaim policy is Retain.
    pub on_delete: OnDelete,
}

/// A StorageClass parameter that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("StorageClass {class}: parameter {parameter:?} is invalid: {message}")]
pub struct ClassError {
    /// The StorageClass.
    pub class: String,
    /// The parameter key.
    pub parameter: String,
    /// What is wrong with it.
    pub message: String,
}

impl ClassParams {
    /// Reads a class's parameters; a missing parameter takes its default.
    pub fn from_class(class: &StorageClass) -> Result<Self, ClassError> {
        let name = class.metadata.name.clone().unwrap_or_default();
        let get = |key: &str| class.parameters.as_ref().and_then(|p| p.get(key));
        let err = |parameter: &str, message: String| ClassError {
            class: name.clone(),
            parameter: parameter.to_string(),
            message,
        };
        if let Some(unknown) = class
            .parameters
            .iter()
            .flatten()
            .map(|(k, _)| k.as_str())
            .find(|k| ![PARAM_POOL, PARAM_PLACEMENT, PARAM_ON_DELETE].contains(k))
        {
            return Err(err(
                unknown,
                format!(
                    "it is not a parameter of {} classes; use only {PARAM_POOL:?}, \
                     {PARAM_PLACEMENT:?} and {PARAM_ON_DELETE:?} (keys are case-sensitive)",
                    class.provisioner
                ),
            ));
        }
        let pool = match get(PARAM_POOL).map(|s| s.trim()) {
            None => DEFAULT_POOL.to_string(),
            Some("") => {
                return Err(err(PARAM_POOL, "the pool name is empty".to_string()));
            }
            Some(p) if is_dns_label(p) => p.to_string(),
            Some(p) => {
                return Err(err(
                    PARAM_POOL,
                    format!(
                        "{p:?} is not a pool name; pool names (the agent pool config's `name`) \
                         are 1-63 lowercase letters, digits and '-'"
                    ),
                ));
            }
        };
        let placement = match get(PARAM_PLACEMENT) {
            None => Placement::default(),
            Some(p) => p.trim().parse().map_err(|m| err(PARAM_PLACEMENT, m))?,
        };
        let on_delete = match get(PARAM_ON_DELETE).map(|s| s.trim()) {
            None | Some("delete") => OnDelete::Delete,
            Some("archive") => OnDelete::Archive,
            Some("retain") => OnDelete::Retain,
            Some(other) => {
                return Err(err(
                    PARAM_ON_DELETE,
                    format!("{other:?} is not one of \"delete\", \"archive\", \"retain\""),
                ));
            }
        };
        let retain_class = class.reclaim_policy.as_deref() == Some("Retain");
        Ok(Self {
            pool: PoolName(pool),
            placement,
            on_delete: if retain_class {
                OnDelete::Retain
            } else {
                on_delete
            },
        })
    }
}

/// 1-63 of `a-z`, `0-9` and `-`, starting and ending alphanumeric: what the agent accepts
/// as a pool name.
fn is_dns_label(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Whether the class is served by the node-local provisioner named `provisioner` (the
/// controller's `--provisioner-name`, `local.stowage.io` by default).
pub fn is_local(class: &StorageClass, provisioner: &str) -> bool {
    class.provisioner == provisioner
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::names;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn class(params: &[(&str, &str)]) -> StorageClass {
        StorageClass {
            metadata: ObjectMeta {
                name: Some("local".into()),
                ..Default::default()
            },
            provisioner: names::PROVISIONER_LOCAL.into(),
            parameters: Some(
                params
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn a_retain_class_always_retains_the_data() {
        for param in [
            &[][..],
            &[("onDelete", "delete")],
            &[("onDelete", "archive")],
        ] {
            let mut c = class(param);
            c.reclaim_policy = Some("Retain".into());
            let p = ClassParams::from_class(&c).unwrap();
            assert_eq!(p.on_delete, OnDelete::Retain, "{param:?}");
            c.reclaim_policy = Some("Delete".into());
            let p = ClassParams::from_class(&c).unwrap();
            assert_ne!(p.on_delete, OnDelete::Retain, "{param:?}");
        }
        // A bad parameter is still refused in a Retain class.
        let mut c = class(&[("onDelete", "shred")]);
        c.reclaim_policy = Some("Retain".into());
        assert!(ClassParams::from_class(&c).is_err());
    }

    #[test]
    fn on_delete_parses_its_three_values_and_rejects_others() {
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<OnDelete, ()>,
        );
        let cases: &[Case] = &[
            (&[], Ok(OnDelete::Delete)),
            (&[("onDelete", "delete")], Ok(OnDelete::Delete)),
            (&[("onDelete", " archive ")], Ok(OnDelete::Archive)),
            (&[("onDelete", "retain")], Ok(OnDelete::Retain)),
            (&[("onDelete", "shred")], Err(())),
            (&[("onDelete", "Delete")], Err(())),
            (&[("onDelete", "")], Err(())),
        ];
        for (params, want) in cases {
            match (ClassParams::from_class(&class(params)), want) {
                (Ok(p), Ok(w)) => assert_eq!(p.on_delete, *w, "{params:?}"),
                (Err(e), Err(())) => {
                    assert_eq!(e.parameter, "onDelete");
                    let msg = e.to_string();
                    assert!(msg.contains("StorageClass local"), "{msg}");
                    assert!(msg.contains("\"archive\""), "says what is allowed: {msg}");
                }
                (got, want) => panic!("{params:?}: got {got:?}, want {want:?}"),
            }
        }
    }

    #[test]
    fn parameters_parse_with_defaults_and_errors_name_the_parameter() {
        // (parameters, Ok((pool, placement)) or Err(the parameter the error names))
        type Case = (
            &'static [(&'static str, &'static str)],
            Result<(&'static str, Placement), &'static str>,
        );
        let cases: &[Case] = &[
            (&[], Ok(("default", Placement::Spread))),
            (&[("pool", "fast")], Ok(("fast", Placement::Spread))),
            (
                &[("placement", "binpack")],
                Ok(("default", Placement::Binpack)),
            ),
            (
                &[("placement", " spread ")],
                Ok(("default", Placement::Spread)),
            ),
            (&[("placement", "random")], Err("placement")),
            (&[("pool", "")], Err("pool")),
            (&[("unrelated", "x")], Err("unrelated")),
            (&[("ondelete", "retain")], Err("ondelete")),
            (&[("Pool", "fast")], Err("Pool")),
            (&[("pool", "../etc")], Err("pool")),
            (&[("pool", "Fast")], Err("pool")),
            (&[("pool", "fast\u{0}")], Err("pool")),
            (
                &[(
                    "pool",
                    "a-very-long-pool-name-that-is-longer-than-sixty-three-characters-x",
                )],
                Err("pool"),
            ),
            (&[("placement", "")], Err("placement")),
        ];
        for (params, want) in cases {
            let got = ClassParams::from_class(&class(params));
            match (got, want) {
                (Ok(p), Ok((pool, placement))) => {
                    assert_eq!(
                        (p.pool.as_str(), p.placement),
                        (*pool, *placement),
                        "{params:?}"
                    );
                }
                (Err(e), Err(param)) => {
                    assert_eq!(e.parameter, *param, "{params:?}");
                    let msg = e.to_string();
                    assert!(msg.contains(&format!("\"{param}\"")), "{msg}");
                    assert!(msg.contains("StorageClass local"), "{msg}");
                }
                (got, want) => panic!("{params:?}: got {got:?}, want {want:?}"),
            }
        }
    }
}
