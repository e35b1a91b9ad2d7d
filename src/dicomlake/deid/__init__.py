"""De-identification per DICOM PS3.15: actions, profiles, pseudonyms, UID/date maps, vault."""

from dicomlake.deid.engine import Deidentifier, DeidReport, settings_from_env
from dicomlake.deid.profile import BurnedInPolicy, DeidProfile, builtin_profiles, load_profile
from dicomlake.deid.pseudonym import ExternalMap, Keyring
from dicomlake.deid.settings import DeidSettings
from dicomlake.deid.table import Action, RetainOption, standard_tables
from dicomlake.deid.vault import Vault

__all__ = [
    "Action",
    "BurnedInPolicy",
    "DeidProfile",
    "DeidReport",
    "DeidSettings",
    "Deidentifier",
    "ExternalMap",
    "Keyring",
    "RetainOption",
    "Vault",
    "builtin_profiles",
    "load_profile",
    "settings_from_env",
    "standard_tables",
]
