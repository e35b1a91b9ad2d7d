"""DICOM knowledge with no policy: dictionary, the header reader, DICOM JSON, UIDs."""
