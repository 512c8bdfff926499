//! The parameters of an `nfs.stowage.io` StorageClass.
//!
//! ```yaml
//! provisioner: nfs.stowage.io
//! parameters:
//!   archiveOnDelete: "true"   # on delete, rename the directory to archived-<ns>-<claim>-<UTC stamp>
//!   deleteFile: "true"        # on delete, remove the directory (archiveOnDelete wins if both)
//!   layout: nested            # nested (<ns>/<claim>, default) | flat (<ns>-<claim>, takeover only)
//!   directoryMode: "0777"     # mode of new claim directories, quoted octal; default "0777"
//!   adoptFromRecreatedNamespace: "false"  # "true": a claim may adopt the directory of a
//!                             # deleted namespace of the same name (see super::owner)
//! ```
//!
//! With neither `archiveOnDelete` nor `deleteFile` true the data is kept. The booleans take
//! Go's `strconv.ParseBool` spellings, as the source design did, but unlike it a value that
//! is not a boolean is an error instead of silently meaning "keep". Unknown keys are refused
//! too: a misspelt `archiveOnDelete` must not quietly change what happens to data.

use std::collections::BTreeMap;

use super::config::parse_go_bool;
use super::dirs::DEFAULT_DIR_MODE;
use super::place::Layout;
use crate::fsutil::VolumeMode;
use crate::volume::OnDelete;

/// Parameter: archive the directory on delete.
pub const PARAM_ARCHIVE_ON_DELETE: &str = "archiveOnDelete";
/// Parameter: remove the directory on delete.
pub const PARAM_DELETE_FILE: &str = "deleteFile";
/// Parameter: directory layout, `nested` or `flat`.
pub const PARAM_LAYOUT: &str = "layout";
/// Parameter: mode of new claim directories.
pub const PARAM_DIRECTORY_MODE: &str = "directoryMode";
/// Parameter: a claim may adopt a directory whose marker records another uid for its
/// namespace (one deleted and re-created under the same name).
pub const PARAM_ADOPT_FROM_RECREATED_NAMESPACE: &str = "adoptFromRecreatedNamespace";

/// Every parameter an NFS class may carry.
pub const KNOWN_PARAMS: [&str; 5] = [
    PARAM_ARCHIVE_ON_DELETE,
    PARAM_DELETE_FILE,
    PARAM_LAYOUT,
    PARAM_DIRECTORY_MODE,
    PARAM_ADOPT_FROM_RECREATED_NAMESPACE,
];

/// What an `nfs.stowage.io` StorageClass asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NfsClassParams {
    /// What happens to the directory when the PV is deleted.
    pub on_delete: OnDelete,
    /// How claim directories are laid out.
    pub layout: Layout,
    /// The mode of new claim directories.
    pub directory_mode: VolumeMode,
    /// Whether a claim may adopt the retained directory of a deleted namespace of the same
    /// name (its marker records another namespace uid); off by default, since the namespace
    /// may have been re-created by someone else.
    pub adopt_from_recreated_namespace: bool,
}

impl Default for NfsClassParams {
    fn default() -> Self {
        NfsClassParams {
            on_delete: OnDelete::Retain,
            layout: Layout::Nested,
            directory_mode: DEFAULT_DIR_MODE,
            adopt_from_recreated_namespace: false,
        }
    }
}

/// A StorageClass parameter that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("StorageClass {class}: parameter {parameter:?} is invalid: {message}")]
pub struct NfsClassError {
    /// The StorageClass.
    pub class: String,
    /// The parameter key.
    pub parameter: String,
    /// What is wrong with it and how to fix it.
    pub message: String,
}

impl NfsClassError {
    /// The stable reason for Events and metric labels.
    pub fn reason(&self) -> &'static str {
        "InvalidStorageClassParameter"
    }
}

impl NfsClassParams {
    /// Reads a class's `parameters` (absent ones take their defaults).
    pub fn parse(
        class: &str,
        params: Option<&BTreeMap<String, String>>,
    ) -> Result<Self, NfsClassError> {
        let empty = BTreeMap::new();
        let params = params.unwrap_or(&empty);
        let err = |parameter: &str, message: String| NfsClassError {
            class: class.to_string(),
            parameter: parameter.to_string(),
            message,
        };
        if let Some(unknown) = params.keys().find(|k| !KNOWN_PARAMS.contains(&k.as_str())) {
            return Err(err(
                unknown,
                format!(
                    "unknown parameter; an nfs.stowage.io class takes only {}",
                    KNOWN_PARAMS.join(", ")
                ),
            ));
        }
        let boolean = |key: &'static str| -> Result<bool, NfsClassError> {
            match params.get(key) {
                None => Ok(false),
                Some(v) => parse_go_bool(v).ok_or_else(|| {
                    err(
                        key,
                        format!("{v:?} is not a boolean; use \"true\" or \"false\""),
                    )
                }),
            }
        };
        let archive = boolean(PARAM_ARCHIVE_ON_DELETE)?;
        let delete = boolean(PARAM_DELETE_FILE)?;
        // Both set: the source design copied the data aside and then removed it, which is
        // an archive; a rename does the same without doubling the space.
        let on_delete = match (archive, delete) {
            (true, _) => OnDelete::Archive,
            (false, true) => OnDelete::Delete,
            (false, false) => OnDelete::Retain,
        };
        let layout = match params.get(PARAM_LAYOUT).map(|s| s.trim()) {
            None | Some("nested") => Layout::Nested,
            Some("flat") => Layout::Flat,
            Some(other) => {
                return Err(err(
                    PARAM_LAYOUT,
                    format!(
                        "{other:?} is not a layout; use \"nested\" (the default) or \"flat\" (only to take over data of the source design)"
                    ),
                ));
            }
        };
        let directory_mode = match params.get(PARAM_DIRECTORY_MODE) {
            None => DEFAULT_DIR_MODE,
            Some(v) => {
                let mode = VolumeMode::parse_octal(v).map_err(|m| err(PARAM_DIRECTORY_MODE, m))?;
                if mode.bits() & 0o700 != 0o700 {
                    return Err(err(
                        PARAM_DIRECTORY_MODE,
                        format!(
                            "{v:?} does not let the directory's owner read, write and enter it; include 0700"
                        ),
                    ));
                }
                mode
            }
        };
        Ok(NfsClassParams {
            on_delete,
            layout,
            directory_mode,
            adopt_from_recreated_namespace: boolean(PARAM_ADOPT_FROM_RECREATED_NAMESPACE)?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn parse(pairs: &[(&str, &str)]) -> Result<NfsClassParams, NfsClassError> {
        NfsClassParams::parse("nfs", Some(&params(pairs)))
    }

    #[test]
    fn delete_modes_follow_the_source_designs_parameters() {
        for (pairs, want) in [
            (&[][..], OnDelete::Retain),
            (&[("archiveOnDelete", "true")][..], OnDelete::Archive),
            (&[("deleteFile", "true")][..], OnDelete::Delete),
            (
                &[("archiveOnDelete", "true"), ("deleteFile", "true")][..],
                OnDelete::Archive,
            ),
            (
                &[("archiveOnDelete", "false"), ("deleteFile", "True")][..],
                OnDelete::Delete,
            ),
            (
                &[("archiveOnDelete", "0"), ("deleteFile", "f")][..],
                OnDelete::Retain,
            ),
        ] {
            assert_eq!(parse(pairs).unwrap().on_delete, want, "{pairs:?}");
        }
        assert_eq!(
            NfsClassParams::parse("nfs", None).unwrap(),
            NfsClassParams::default()
        );
    }

    #[test]
    fn layout_and_mode_are_read_with_defaults() {
        let d = parse(&[]).unwrap();
        assert_eq!(d.layout, Layout::Nested);
        assert_eq!(d.directory_mode, VolumeMode(0o777));
        let p = parse(&[("layout", "flat"), ("directoryMode", "0770")]).unwrap();
        assert_eq!(p.layout, Layout::Flat);
        assert_eq!(p.directory_mode, VolumeMode(0o770));
        assert_eq!(
            parse(&[("layout", "nested")]).unwrap().layout,
            Layout::Nested
        );
    }

    #[test]
    fn adopting_a_recreated_namespaces_directories_is_off_unless_a_boolean_says_so() {
        assert!(!parse(&[]).unwrap().adopt_from_recreated_namespace);
        for (value, want) in [
            ("true", true),
            ("True", true),
            ("false", false),
            ("0", false),
        ] {
            let p = parse(&[("adoptFromRecreatedNamespace", value)]).unwrap();
            assert_eq!(p.adopt_from_recreated_namespace, want, "{value}");
        }
        for value in ["yes", "", "on"] {
            let e = parse(&[("adoptFromRecreatedNamespace", value)]).unwrap_err();
            assert!(
                e.to_string()
                    .contains("parameter \"adoptFromRecreatedNamespace\" is invalid")
                    && e.to_string().contains("not a boolean"),
                "{value:?}: {e}"
            );
        }
    }

    #[test]
    fn bad_values_and_unknown_keys_are_refused_with_the_fix() {
        for (pairs, want) in [
            (
                &[("archiveOnDelete", "yes")][..],
                "parameter \"archiveOnDelete\" is invalid: \"yes\" is not a boolean",
            ),
            (&[("deleteFile", "")][..], "\"deleteFile\""),
            (&[("layout", "deep")][..], "use \"nested\""),
            (&[("directoryMode", "777x")][..], "not an octal mode"),
            (&[("directoryMode", "0077")][..], "include 0700"),
            (
                &[("archiveOnDelte", "true")][..],
                "\"archiveOnDelte\" is invalid: unknown parameter; an nfs.stowage.io class takes only archiveOnDelete",
            ),
        ] {
            let e = parse(pairs).unwrap_err();
            assert!(e.to_string().contains(want), "{pairs:?}: {e}");
            assert!(e.to_string().starts_with("StorageClass nfs:"), "{e}");
        }
    }
}
