"""Tables generated from the DICOM standard by the scripts in util/ (do not edit by hand)."""
