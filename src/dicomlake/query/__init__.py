"""Filters on any attribute to SQL, cohorts, exports."""
