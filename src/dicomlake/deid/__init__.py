"""De-identification per DICOM PS3.15: actions, profiles, pseudonyms, UID/date maps, vault."""
