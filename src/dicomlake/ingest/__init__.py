"""Sources (files, zips, DICOMDIR, listener, query-retrieve, DICOMweb), spool and pipeline."""
