"""Batch ingestion: read and validate photos and metadata, embed, write per-photo and per-user vectors."""
