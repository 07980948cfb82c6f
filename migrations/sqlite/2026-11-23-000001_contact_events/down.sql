DROP TABLE event_ids;
DROP TABLE contact_events;
