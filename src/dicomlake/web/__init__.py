"""Web: DICOMweb, REST, UI pages, auth, access log."""
