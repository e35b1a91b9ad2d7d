"""Audits: dose (MG, CT, projection X-ray), workflow, quality, SC catalogue, HTML reports."""
