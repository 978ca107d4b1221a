"""The one surface rules import. Everything else in hermetic_build is internal."""

from .action import Action, File, register_action_kind
from .analysis import ConfiguredTarget, RuleContext
from .digest import Digest, DualHasher, canonical_json, digest_bytes, digest_file
from .errors import ActionFailed, AnalysisError, BuildFileError, HbError, IntegrityError, Location, RegistryPushError, RemoteError, UsageError
from .label import Label, LabelSyntaxError
from .lock import LockOutcome, LockRequest
from .publish import PublishRequest
from .redact import public_url, redact_url
from .attest import check_statement, envelope_bytes
from .boundedjson import MAX_JSON_VALUES, TooManyJsonValues, json_values_at_most, loads_bounded
from .referrers import DSSE_TYPE, artifact_manifest, canonical as canonical_oci_json, descriptor, has_referrers_api, layout_artifacts, sha256_of
from .registry import RegistryAuthError, RegistryClient, RegistryError, RegistryRef, RegistryUnavailable
from .rule import DefaultInfo, Provider, attr, rule
from .sandbox import ActionExecution, BoundedRun, HelperCommand, relative_path, run_bounded, start_helper
from .tree import MissingBlob, TreeEntry, lookup_tree, materialize_tree, small_blob, store_tree, walk_tree
from .workspace import host_platform, resolve_source

__all__ = [
    "Action", "ActionExecution", "ActionFailed", "AnalysisError", "BuildFileError", "ConfiguredTarget",
    "DefaultInfo", "Digest", "DualHasher", "File", "HbError", "IntegrityError", "Label", "LabelSyntaxError", "Location", "LockOutcome", "LockRequest",
    "Provider", "RuleContext", "attr", "relative_path", "digest_bytes", "digest_file", "materialize_tree", "small_blob",
    "host_platform", "lookup_tree", "register_action_kind", "resolve_source", "rule", "store_tree", "walk_tree",
    "MissingBlob", "PublishRequest", "RegistryAuthError", "RegistryClient", "RegistryError", "RegistryRef",
    "RegistryUnavailable", "RegistryPushError", "RemoteError", "TreeEntry", "UsageError", "canonical_json",
    "DSSE_TYPE", "artifact_manifest", "canonical_oci_json", "descriptor", "sha256_of", "check_statement", "envelope_bytes", "has_referrers_api", "layout_artifacts",
    "public_url", "redact_url", "MAX_JSON_VALUES", "TooManyJsonValues", "json_values_at_most", "loads_bounded",
    "BoundedRun", "run_bounded", "HelperCommand", "start_helper",
]
