"""User profiles and segments for marketing: RFM, lifecycle, price sensitivity, affinities, activity,
CLV and churn, clusters and named segments, consent flags, and the report.

Each module computes one family of columns from the processed events (``features.schema``) with
vectorised pandas group-bys; ``features.profiles.build.build_profiles`` puts them together and
``python -m features.profile`` writes them (see ``features/profile.py``).
"""
