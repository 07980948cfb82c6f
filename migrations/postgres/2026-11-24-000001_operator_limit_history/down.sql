ALTER TABLE operators DROP COLUMN deactivated_at;
ALTER TABLE operators DROP COLUMN max_load_lowered_at;
