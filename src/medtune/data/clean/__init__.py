"""Cleaning: quality rules, exact and near dedup, benchmark decontamination, PII."""
