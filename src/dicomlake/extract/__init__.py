"""Header to rows: instance row, element rows, DICOM JSON, SR trees and dose events."""
