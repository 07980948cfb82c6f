DROP TABLE pending_counts;
DROP TABLE contact_counts;
